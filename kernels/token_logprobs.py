"""Fused token log-prob / entropy from hidden states in Triton (forward and backward).

Forward (``_fwd_kernel``): one program per block of ``BLOCK_N`` tokens walks the vocabulary
in tiles of ``BLOCK_V``; each logits tile ``[BLOCK_N, BLOCK_V]`` is a ``tl.dot`` loop over
``H`` in float32, folded into an online log-sum-exp (running max starts at ``-inf``, the
partial last tile is masked to ``-inf``) plus the target logit and, for the entropy, the
running ``sum exp(z - m) * (z - m)``. Nothing of size ``[N, V]`` exists at any time.

Backward, per chunk of tokens (chunk buffer ``[chunk, V]`` in the input dtype):
``_grad_logits_kernel`` recomputes each logits tile and writes
``d/dlogits = (g_lp * (onehot - p) - g_ent * p * (log p + H)) / T`` into the buffer; then
``grad_hidden[chunk] = buffer @ weight`` (cuBLAS) and ``grad_weight += buffer.T @ hidden``
(``_accumulate_at_b_kernel``, float32 accumulator). Four matmuls in all — the price of
honouring a per-token upstream gradient without storing ``[N, V]``.

Float32 inputs use IEEE float32 ``tl.dot`` (no TF32); bf16/fp16 inputs multiply in their
dtype and accumulate in float32.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Vocab-chunk buffer budget of the backward pass, bytes.
BACKWARD_CHUNK_BYTES = 256 * 1024 * 1024


@triton.jit
def _logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, H, stride_h, stride_w,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                 PRECISION: tl.constexpr):
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        hk = h0 + tl.arange(0, BLOCK_H)
        hk_ok = hk < H
        a = tl.load(h_ptr + rows[:, None] * stride_h + hk[None, :], mask=row_ok[:, None] & hk_ok[None, :], other=0.0)
        b = tl.load(w_ptr + cols[None, :] * stride_w + hk[:, None], mask=col_ok[None, :] & hk_ok[:, None], other=0.0)
        if PRECISION == "interpret":  # the interpreter cannot multiply bf16 (numpy has none)
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision="ieee" if PRECISION == "interpret" else PRECISION)
    return acc


@triton.jit
def _fwd_kernel(h_ptr, w_ptr, b_ptr, tgt_ptr, logp_ptr, lse_ptr, ent_ptr,
                N, V, H, stride_h, stride_w, inv_t,
                HAS_BIAS: tl.constexpr, WANT_ENT: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                PRECISION: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    tgt = tl.load(tgt_ptr + rows, mask=row_ok, other=0)
    run_max = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)  # sum exp(z - run_max)
    run_ez = tl.zeros((BLOCK_N,), dtype=tl.float32)  # sum exp(z - run_max) * (z - run_max)
    z_tgt = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        z = _logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, H, stride_h, stride_w,
                         BLOCK_N, BLOCK_V, BLOCK_H, PRECISION) * inv_t
        if HAS_BIAS:
            z += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :] * inv_t
        z = tl.where(col_ok[None, :], z, float("-inf"))
        z_tgt += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)
        new_max = tl.maximum(run_max, tl.max(z, axis=1))
        scale = tl.exp(run_max - new_max)  # 0 on the first tile (run_max = -inf)
        e = tl.exp(z - new_max[:, None])  # 0 in the masked columns
        if WANT_ENT:
            y = tl.where(col_ok[None, :], z - new_max[:, None], 0.0)
            # Re-centre the old sum on the new max; skipped (0) before the first tile.
            shift = (tl.where(run_sum > 0, run_max, new_max) - new_max) * run_sum
            run_ez = scale * (run_ez + shift) + tl.sum(e * y, axis=1)
        run_sum = run_sum * scale + tl.sum(e, axis=1)
        run_max = new_max
    log_sum = tl.log(run_sum)
    lse = run_max + log_sum
    tl.store(logp_ptr + rows, z_tgt - lse, mask=row_ok)
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    if WANT_ENT:
        tl.store(ent_ptr + rows, log_sum - run_ez / run_sum, mask=row_ok)


@triton.jit
def _grad_logits_kernel(h_ptr, w_ptr, b_ptr, tgt_ptr, lse_ptr, ent_ptr, g_lp_ptr, g_ent_ptr, out_ptr,
                        row0, N, V, H, stride_h, stride_w, stride_out, inv_t,
                        HAS_BIAS: tl.constexpr, USE_ENT: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                        PRECISION: tl.constexpr):
    local = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = row0 + local
    row_ok = rows < N
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    col_ok = cols < V
    z = _logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, H, stride_h, stride_w,
                     BLOCK_N, BLOCK_V, BLOCK_H, PRECISION) * inv_t
    if HAS_BIAS:
        z += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :] * inv_t
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    g_lp = tl.load(g_lp_ptr + rows, mask=row_ok, other=0.0)  # already divided by T
    tgt = tl.load(tgt_ptr + rows, mask=row_ok, other=0)
    # Columns past V hold garbage logits; zero them so nothing overflows there.
    log_p = tl.where(col_ok[None, :], z - lse[:, None], 0.0)
    p = tl.where(col_ok[None, :], tl.exp(log_p), 0.0)
    coef = g_lp[:, None]
    if USE_ENT:
        ent = tl.load(ent_ptr + rows, mask=row_ok, other=0.0)
        g_ent = tl.load(g_ent_ptr + rows, mask=row_ok, other=0.0)
        coef = coef + g_ent[:, None] * (log_p + ent[:, None])
    grad = tl.where(cols[None, :] == tgt[:, None], g_lp[:, None], 0.0) - p * coef
    ok = row_ok[:, None] & col_ok[None, :]
    tl.store(out_ptr + local[:, None] * stride_out + cols[None, :], grad.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _accumulate_at_b_kernel(a_ptr, b_ptr, c_ptr, M, K, Nc, stride_a, stride_b, stride_c,
                            BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_NC: tl.constexpr,
                            PRECISION: tl.constexpr):
    """``C[M, Nc] (float32) += A[K, M].T @ B[K, Nc]``."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_NC + tl.arange(0, BLOCK_NC)
    m_ok = offs_m < M
    n_ok = offs_n < Nc
    acc = tl.zeros((BLOCK_M, BLOCK_NC), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        a = tl.load(a_ptr + ks[None, :] * stride_a + offs_m[:, None], mask=k_ok[None, :] & m_ok[:, None], other=0.0)
        b = tl.load(b_ptr + ks[:, None] * stride_b + offs_n[None, :], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if PRECISION == "interpret":
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision="ieee" if PRECISION == "interpret" else PRECISION)
    c_ptrs = c_ptr + offs_m[:, None] * stride_c + offs_n[None, :]
    ok = m_ok[:, None] & n_ok[None, :]
    tl.store(c_ptrs, tl.load(c_ptrs, mask=ok, other=0.0) + acc, mask=ok)


def _blocks(hidden_dim: int) -> dict:
    if os.environ.get("TRITON_INTERPRET") == "1":
        # The interpreter runs tiles as numpy arrays: big vocab tiles, few programs.
        return dict(BLOCK_N=16, BLOCK_V=4096, BLOCK_H=max(16, min(64, triton.next_power_of_2(hidden_dim))))
    return dict(BLOCK_N=64, BLOCK_V=128, BLOCK_H=64)


def _precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: IEEE for float32 (no TF32); for 16-bit inputs the value is
    ignored by Triton. ``"interpret"`` makes the kernels upcast tiles to float32 first."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "interpret"
    return "ieee" if dtype == torch.float32 else "tf32"


def _accumulate_blocks() -> tuple[int, int, int]:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return 4096, 32, 64
    return 64, 32, 64


class _TritonTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, want_entropy, blocks):
        n, hdim = hidden.shape
        vocab = weight.shape[0]
        dev = hidden.device
        logp = torch.empty(n, dtype=torch.float32, device=dev)
        lse = torch.empty(n, dtype=torch.float32, device=dev)
        ent = torch.empty(n if want_entropy else 0, dtype=torch.float32, device=dev)
        precision = _precision(hidden.dtype)
        if n:
            _fwd_kernel[(triton.cdiv(n, blocks["BLOCK_N"]),)](
                hidden, weight, bias if bias is not None else hidden, targets, logp, lse,
                ent if want_entropy else lse,
                n, vocab, hdim, hidden.stride(0), weight.stride(0), 1.0 / temperature,
                HAS_BIAS=bias is not None, WANT_ENT=want_entropy, PRECISION=precision, **blocks,
            )
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ent)
        ctx.temperature, ctx.want_entropy, ctx.blocks = temperature, want_entropy, blocks
        if not want_entropy:
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp, grad_ent):
        hidden, weight, bias, targets, lse, ent = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n, hdim = hidden.shape
        vocab = weight.shape[0]
        dev = hidden.device
        inv_t = 1.0 / ctx.temperature
        blocks = ctx.blocks
        precision = _precision(hidden.dtype)
        g_lp = (grad_logp.float() if grad_logp is not None else torch.zeros(n, device=dev)) * inv_t
        use_ent = ctx.want_entropy and grad_ent is not None
        g_ent = (grad_ent.float() * inv_t).contiguous() if use_ent else g_lp
        g_lp = g_lp.contiguous()
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(vocab, hdim, dtype=torch.float32, device=dev) if need_w else None
        grad_b = torch.zeros(vocab, dtype=torch.float32, device=dev) if need_b else None
        chunk = max(blocks["BLOCK_N"], BACKWARD_CHUNK_BYTES // (vocab * hidden.element_size()))
        chunk = min(triton.cdiv(max(n, 1), blocks["BLOCK_N"]) * blocks["BLOCK_N"], chunk)
        buf = torch.empty(chunk, vocab, dtype=hidden.dtype, device=dev)
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            rows = e - s
            _grad_logits_kernel[(triton.cdiv(rows, blocks["BLOCK_N"]), triton.cdiv(vocab, blocks["BLOCK_V"]))](
                hidden, weight, bias if bias is not None else hidden, targets, lse,
                ent if use_ent else lse, g_lp, g_ent, buf,
                s, e, vocab, hdim, hidden.stride(0), weight.stride(0), buf.stride(0), inv_t,
                HAS_BIAS=bias is not None, USE_ENT=use_ent, PRECISION=precision, **blocks,
            )
            grad_z = buf[:rows]
            if need_h:
                torch.mm(grad_z, weight, out=grad_h[s:e])
            if need_w:
                bm, bk, bn = _accumulate_blocks()
                _accumulate_at_b_kernel[(triton.cdiv(vocab, bm), triton.cdiv(hdim, bn))](
                    grad_z, hidden[s:e], grad_w, vocab, rows, hdim,
                    grad_z.stride(0), hidden.stride(0), grad_w.stride(0),
                    BLOCK_M=bm, BLOCK_K=bk, BLOCK_NC=bn, PRECISION=precision,
                )
            if need_b:
                grad_b += grad_z.sum(dim=0, dtype=torch.float32)
        return (
            grad_h,
            grad_w.to(weight.dtype) if need_w else None,
            grad_b.to(bias.dtype) if need_b else None,
            None,
            None,
            None,
            None,
        )


def triton_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    temperature: float,
    return_entropy: bool,
    blocks: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton path of ``agent_lightning.ops.token_logprobs`` (already validated inputs).

    Args:
        hidden: ``[N, H]`` float32/bf16/fp16; cast to a common dtype with ``weight``.
        weight: ``[V, H]``.
        targets: ``[N]`` int64 in ``[0, V)``.
        bias: ``[V]`` or ``None``.
        temperature: > 0.
        return_entropy: Compute the (differentiable) entropy too.
        blocks: Tile sizes ``BLOCK_N``/``BLOCK_V``/``BLOCK_H`` (each a power of two >= 16);
            tests use it to force partial tiles.

    Returns:
        ``(logprobs [N] float32, entropy [N] float32 or [0])``.
    """
    dtype = torch.promote_types(hidden.dtype, weight.dtype)
    hidden = hidden.to(dtype).contiguous()
    weight = weight.to(dtype).contiguous()
    targets = targets.contiguous()
    bias = bias.contiguous() if bias is not None else None
    blocks = dict(_blocks(hidden.shape[1]), **(blocks or {}))
    return _TritonTokenLogprobs.apply(hidden, weight, bias, targets, float(temperature), return_entropy, blocks)
