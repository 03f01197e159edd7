"""Generalised advantage estimation over padded ``[B, T]`` or packed ``[total]`` streams.

Semantics (the same for every implementation path). Positions with ``mask == 0`` — padding,
and in multi-turn episodes the environment's observation tokens in the middle of a
sequence — are *skipped*: their advantage and return are 0 and their reward and value are
ignored, while the recursion carries across them. For a valid position ``t`` let ``t'`` be
the next valid position of the same sequence (none at its end)::

    delta_t   = r_t + gamma * V_{t'} - V_t          (V_{t'} = 0 when there is no t')
    A_t       = delta_t + gamma * lam * A_{t'}      (A_{t'} = 0 when there is no t')
    returns_t = A_t + V_t

Packed streams carry ``cu_seqlens`` (``[B + 1]`` offsets); the recursion resets at every
boundary. Padded input is packed input with equal lengths, so there is one implementation.

Paths: Triton (CUDA tensors), the C++ extension ``agent_lightning._C.gae_packed`` (CPU, when
built), and the torch path below, which is vectorised (no loop over time steps): the valid
tokens of every sequence are compacted to the left of a ``[B, L]`` grid, where the skipping
rule becomes the plain GAE recursion, and the discounted reverse cumulative sum is done
blockwise with small matmuls against a decay matrix (exact, no ``c**-t`` overflow).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

IMPLEMENTED = ("triton", "cpp")
_BLOCK = 64


def gae(
    rewards: "torch.Tensor",
    values: "torch.Tensor",
    mask: "torch.Tensor",
    *,
    gamma: float,
    lam: float,
    cu_seqlens: "torch.Tensor | None" = None,
    whiten: bool = False,
) -> "tuple[torch.Tensor, torch.Tensor]":
    """Advantages and returns by GAE(gamma, lam) with masked positions skipped.

    Args:
        rewards: ``[B, T]`` padded, or ``[total]`` packed when ``cu_seqlens`` is given; float.
        values: Value estimates, same shape as ``rewards``.
        mask: Same shape; bool or 0/1. 0 marks positions to skip (padding, observations).
        gamma: Discount factor.
        lam: GAE lambda.
        cu_seqlens: ``[B + 1]`` integer offsets of the packed sequences (``0 ... total``).
        whiten: Whiten the advantages over the valid positions (masked mean and unbiased
            std, ``(A - mean) * rsqrt(var + 1e-8)``); returns are computed before whitening.

    Returns:
        ``(advantages, returns)``, float32, shaped like ``rewards``; 0 where ``mask`` is 0.
    """
    import torch

    from agent_lightning.ops import dispatch

    if values.shape != rewards.shape or mask.shape != rewards.shape:
        raise ValueError(
            f"gae: rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask "
            f"{tuple(mask.shape)} must have the same shape"
        )
    shape = rewards.shape
    device = rewards.device
    if cu_seqlens is None:
        if rewards.dim() != 2:
            raise ValueError(f"gae: padded input must be [B, T], got {tuple(shape)}; pass cu_seqlens for packed input")
        batch, length = shape
        cu = torch.arange(batch + 1, device=device, dtype=torch.int32) * length
    else:
        if rewards.dim() != 1:
            raise ValueError(f"gae: packed input (with cu_seqlens) must be [total], got {tuple(shape)}")
        cu = _check_cu_seqlens(cu_seqlens, rewards.numel()).to(device=device, dtype=torch.int32)
    r = rewards.reshape(-1).to(torch.float32).contiguous()
    v = values.reshape(-1).to(torch.float32).contiguous()
    m = mask.reshape(-1).to(torch.bool).contiguous()

    path = dispatch.select("gae", device.type, IMPLEMENTED)
    if path == "triton":
        from agent_lightning.kernels.gae import gae_packed_triton

        adv, ret = gae_packed_triton(r, v, m, cu, float(gamma), float(lam))
    elif path == "cpp":
        adv, ret = dispatch.cpp_extension().gae_packed(r, v, m, cu, float(gamma), float(lam))
    else:
        adv, ret = gae_packed_torch(r, v, m, cu, float(gamma), float(lam))
    if whiten:
        adv = _masked_whiten(adv, m)
    return adv.reshape(shape), ret.reshape(shape)


def gae_packed_torch(
    rewards: "torch.Tensor",
    values: "torch.Tensor",
    mask: "torch.Tensor",
    cu_seqlens: "torch.Tensor",
    gamma: float,
    lam: float,
) -> "tuple[torch.Tensor, torch.Tensor]":
    """The torch path on packed input: ``[total]`` float32 rewards/values, bool mask,
    ``[B + 1]`` offsets. Returns float32 ``(advantages, returns)``, ``[total]`` each.

    Steps: view (equal lengths) or scatter the stream into a padded ``[B, L]`` grid; compact
    each row's valid tokens to the left (``scatter`` to their rank, skipped tokens to a dump
    column); GAE there is the plain recursion; ``gather`` the results back.
    """
    import torch

    device = rewards.device
    total = rewards.numel()
    num_seqs = cu_seqlens.numel() - 1
    if total == 0 or num_seqs == 0:
        return torch.zeros(total, device=device), torch.zeros(total, device=device)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    width = int(lengths.max())
    uniform = int(lengths.min()) == width
    if uniform:  # padded input, or packed with equal lengths: a free view
        r, v, m = (x.view(num_seqs, width) for x in (rewards, values, mask))
    else:
        seq_of = torch.repeat_interleave(torch.arange(num_seqs, device=device), lengths, output_size=total)
        slot = seq_of * width + torch.arange(total, device=device) - cu_seqlens.long().index_select(0, seq_of)
        r = torch.zeros(num_seqs * width, device=device).index_copy_(0, slot, rewards).view(num_seqs, width)
        v = torch.zeros(num_seqs * width, device=device).index_copy_(0, slot, values).view(num_seqs, width)
        m = torch.zeros(num_seqs * width, dtype=torch.bool, device=device).index_copy_(0, slot, mask)
        m = m.view(num_seqs, width)

    # Column k (1-based) of the compacted grid holds a row's k-th valid token; skipped tokens
    # are scattered to the dump column 0. Column width + 1 stays 0: it is V_{t'} = 0 after
    # the last valid token of a full row.
    col = torch.cumsum(m, dim=1).masked_fill_(~m, 0)
    r_c = torch.zeros(num_seqs, width + 2, device=device).scatter_(1, col, r)
    v_c = torch.zeros(num_seqs, width + 2, device=device).scatter_(1, col, v)
    delta = torch.add(r_c[:, 1 : width + 1], v_c[:, 2:], alpha=gamma).sub_(v_c[:, 1 : width + 1])
    a_c = torch.empty(num_seqs, width + 2, device=device)
    a_c[:, 0] = 0.0  # what skipped tokens gather
    a_c[:, width + 1] = 0.0
    discounted_reverse_cumsum(delta, gamma * lam, out=a_c[:, 1 : width + 1])
    adv = a_c.gather(1, col)
    v_c[:, 0] = 0.0
    ret = a_c.add_(v_c).gather(1, col)
    if uniform:
        return adv.view(-1), ret.view(-1)
    return adv.view(-1).index_select(0, slot), ret.view(-1).index_select(0, slot)


def discounted_reverse_cumsum(
    x: "torch.Tensor", c: float, block: int = _BLOCK, out: "torch.Tensor | None" = None
) -> "torch.Tensor":
    """``y[:, t] = sum_{j >= t} c**(j - t) * x[:, j]`` along the last dim of ``x [B, L]``.

    Blocked: inside each block of ``block`` steps a matmul with the decay matrix, then the
    block totals are combined by the same function (with factor ``c**block``) recursively.
    Every power is ``c**k`` with ``0 <= k <= block``, so nothing overflows. Written into
    ``out`` (any strides, shape of ``x``) when given.
    """
    import torch

    batch, length = x.shape
    if length == 0:
        return x.clone() if out is None else out
    k = min(block, length)
    steps = torch.arange(k, device=x.device, dtype=x.dtype)
    diff = steps[:, None] - steps[None, :]  # diff[j, i] = j - i
    decay = torch.where(diff >= 0, torch.pow(torch.tensor(c, dtype=x.dtype), diff.clamp_min(0)), 0.0)
    if length <= k:
        return torch.mm(x, decay) if out is None else out.copy_(torch.mm(x, decay))
    num_blocks = -(-length // k)
    padded = torch.nn.functional.pad(x, (0, num_blocks * k - length)).view(batch, num_blocks, k)
    local = padded @ decay  # [B, nb, k]
    heads = discounted_reverse_cumsum(local[:, :, 0], c**k, block)  # y at each block's first step
    carry = torch.zeros_like(heads)
    carry[:, :-1] = heads[:, 1:]
    tail = torch.pow(torch.tensor(c, dtype=x.dtype), k - steps)  # c**(k - i): distance to next block
    local.addcmul_(carry[:, :, None], tail)
    result = local.view(batch, num_blocks * k)[:, :length]
    return result if out is None else out.copy_(result)


def _masked_whiten(adv: "torch.Tensor", mask: "torch.Tensor", eps: float = 1e-8) -> "torch.Tensor":
    import torch

    m = mask.to(torch.float64)
    a = adv.to(torch.float64)
    count = m.sum()
    if count.item() == 0:
        return adv
    mean = (a * m).sum() / count
    var = ((a - mean).square() * m).sum() / (count - 1).clamp_min(1.0)
    out = (a - mean) * torch.rsqrt(var + eps)
    return (out * m).to(torch.float32)


def _check_cu_seqlens(cu_seqlens: "torch.Tensor", total: int) -> "torch.Tensor":
    import torch

    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"gae: cu_seqlens must be [B + 1], got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype == torch.bool:
        raise TypeError(f"gae: cu_seqlens must be an integer tensor, got {cu_seqlens.dtype}")
    cu = cu_seqlens.detach().cpu().long()
    if int(cu[0]) != 0 or int(cu[-1]) != total:
        raise ValueError(f"gae: cu_seqlens must run from 0 to total={total}, got {int(cu[0])} ... {int(cu[-1])}")
    if bool((cu[1:] < cu[:-1]).any()):
        raise ValueError("gae: cu_seqlens must be non-decreasing")
    return cu_seqlens
