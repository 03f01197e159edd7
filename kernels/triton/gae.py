"""GAE over packed sequences in Triton: one program per sequence, reverse scan in blocks.

Semantics are those of ``agent_lightning.ops.gae`` (masked positions skipped, recursion
carried across them, reset at every ``cu_seqlens`` boundary). Each program walks its
sequence from the end in blocks of ``BLOCK`` tokens, loaded in *descending* time order so
that the reverse recursion becomes a forward ``tl.associative_scan``:

* the next valid value ``V_{t'}`` is a "latest valid so far" scan over the mask and values
  loaded one step later (``t + 1``), falling back to the value carried from the blocks after;
* ``A_t = d_t + c_t * A_{t+1}`` with ``(c_t, d_t) = (gamma * lam, delta_t)`` at valid
  positions and ``(1, 0)`` at skipped ones (which pass the advantage through) is a
  first-order linear recurrence, scanned with the composition of affine maps;
* the advantage and the next valid value at the block's lowest position carry to the next
  block.

Accumulation is float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _latest_valid(has_a, val_a, has_b, val_b):
    # Scan order is descending time, so "b" is the later element of the scan = earlier in time.
    return has_a | has_b, tl.where(has_b != 0, val_b, val_a)


@triton.jit
def _compose_affine(c_a, d_a, c_b, d_b):
    # a: B_{t+1} = d_a + c_a * carry; b: B_t = d_b + c_b * B_{t+1}.
    return c_a * c_b, d_b + c_b * d_a


@triton.jit
def _gae_packed_kernel(
    rewards_ptr,
    values_ptr,
    mask_ptr,
    cu_ptr,
    adv_ptr,
    ret_ptr,
    gamma,
    gamma_lam,
    BLOCK: tl.constexpr,
):
    seq = tl.program_id(0)
    lo = tl.load(cu_ptr + seq).to(tl.int64)
    hi = tl.load(cu_ptr + seq + 1).to(tl.int64)
    k = tl.arange(0, BLOCK)
    carry_a = tl.zeros((), dtype=tl.float32)  # advantage at the next valid position after the block
    carry_v = tl.zeros((), dtype=tl.float32)  # value at that position
    num_blocks = tl.cdiv(hi - lo, BLOCK)
    for blk in range(0, num_blocks):
        top = hi - blk * BLOCK  # exclusive upper end of this block
        t = top - 1 - k  # descending time
        inside = t >= lo
        m = tl.load(mask_ptr + t, mask=inside, other=0).to(tl.int32)
        r = tl.load(rewards_ptr + t, mask=inside, other=0.0).to(tl.float32)
        v = tl.load(values_ptr + t, mask=inside, other=0.0).to(tl.float32)
        # Next valid value inside the block: latest valid among t + 1 .. top - 1.
        nxt_inside = inside & (t + 1 < top)
        m1 = tl.load(mask_ptr + t + 1, mask=nxt_inside, other=0).to(tl.int32)
        v1 = tl.load(values_ptr + t + 1, mask=nxt_inside, other=0.0).to(tl.float32)
        has_next, v_next = tl.associative_scan((m1, v1), 0, _latest_valid)
        v_next = tl.where(has_next != 0, v_next, carry_v)
        valid = m != 0
        delta = r + gamma * v_next - v
        c = tl.where(valid, gamma_lam, 1.0)
        d = tl.where(valid, delta, 0.0)
        c_acc, d_acc = tl.associative_scan((c, d), 0, _compose_affine)
        a = d_acc + c_acc * carry_a
        adv = tl.where(valid, a, 0.0)
        tl.store(adv_ptr + t, adv, mask=inside)
        tl.store(ret_ptr + t, tl.where(valid, adv + v, 0.0), mask=inside)
        # Out-of-sequence lanes pass through (c=1, d=0), so the last lane holds A at the
        # first valid position >= the block's bottom (or the old carry if none).
        carry_a = tl.sum(tl.where(k == BLOCK - 1, a, 0.0), axis=0)
        lowest = tl.max(tl.where(valid, k, -1), axis=0)
        v_lowest = tl.sum(tl.where(k == lowest, v, 0.0), axis=0)
        carry_v = tl.where(lowest >= 0, v_lowest, carry_v)


def gae_packed_triton(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    cu_seqlens: torch.Tensor,
    gamma: float,
    lam: float,
    block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE on packed input.

    Args:
        rewards: ``[total]`` float32, contiguous.
        values: ``[total]`` float32, contiguous.
        mask: ``[total]`` bool, contiguous.
        cu_seqlens: ``[B + 1]`` int32 offsets.
        gamma, lam: GAE parameters.
        block: Tokens per scan block (power of two); default from the longest sequence,
            at most 1024.

    Returns:
        ``(advantages, returns)``, ``[total]`` float32 each.
    """
    total = rewards.numel()
    adv = torch.empty(total, dtype=torch.float32, device=rewards.device)
    ret = torch.empty_like(adv)
    num_seqs = cu_seqlens.numel() - 1
    if num_seqs <= 0 or total == 0:
        return adv.zero_(), ret.zero_()
    if block is None:
        longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        block = min(1024, max(16, triton.next_power_of_2(max(longest, 1))))
    # Positions outside every sequence (none when cu_seqlens covers [0, total]) stay 0.
    adv.zero_()
    ret.zero_()
    _gae_packed_kernel[(num_seqs,)](
        rewards,
        values,
        mask.view(torch.uint8) if mask.dtype == torch.bool else mask,
        cu_seqlens,
        adv,
        ret,
        float(gamma),
        float(gamma * lam),
        BLOCK=block,
    )
    return adv, ret
