"""Fused token log-prob / entropy from hidden states in Triton (forward and backward).

Forward (``_fwd_kernel``): one program per block of ``BLOCK_N`` tokens walks the vocabulary
in tiles of ``BLOCK_V``; each logits tile ``[BLOCK_N, BLOCK_V]`` is a ``tl.dot`` loop over
``H`` in float32, folded into an online log-sum-exp (running max starts at ``-inf``, the
partial last tile is masked to ``-inf``) plus the target logit and, for the entropy, the
running ``sum exp(z - m) * (z - m)``. Nothing of size ``[N, V]`` exists at any time.

Logit scale and soft-cap (``agent_lightning.ops.logprobs`` has the maths): a tile is
``u = (hidden @ weight.T + bias) * pre``, then, when ``HAS_SOFTCAP``, ``z = tanh(u) * post``.
``tanh`` is computed from ``exp`` (``_tanh``): libdevice's is not available to the
interpreter, and one code path for both keeps the CPU tests meaningful.

Backward, vocab slab by vocab slab (``SLAB_V`` rows of the weight) and, inside a slab,
token chunk by token chunk (``CHUNK_N`` rows): ``_grad_logits_kernel`` recomputes the
logits tile and writes ``d/dy = (g_lp * (onehot - p) - g_ent * p * (log p + H)) * s / T``
(times ``1 - tanh(u)**2`` with a soft-cap) into a ``[CHUNK_N, SLAB_V]`` buffer (input
dtype); then ``grad_hidden[chunk] += buffer @ weight[slab]`` (cuBLAS) and
``grad_weight[slab] += buffer.T @ hidden[chunk]`` (``_accumulate_at_b_kernel``) into a
float32 slab accumulator, written once per slab into the gradient. Four matmuls in all —
the price of honouring a per-token upstream gradient without storing ``[N, V]`` — and extra
memory bounded by the slab and the buffer.

Float32 inputs use IEEE float32 ``tl.dot`` (no TF32); bf16/fp16 inputs multiply in their
dtype and accumulate in float32.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from agent_lightning.ops.head_transform import HeadTransform

# Backward: float32 weight-gradient slab budget (bytes) and tokens per chunk.
SLAB_BYTES = 128 * 1024 * 1024
CHUNK_N = 4096


@triton.jit
def _logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, H, stride_h, stride_w,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                 PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        hk = h0 + tl.arange(0, BLOCK_H)
        hk_ok = hk < H
        a = tl.load(h_ptr + rows[:, None] * stride_h + hk[None, :], mask=row_ok[:, None] & hk_ok[None, :], other=0.0)
        b = tl.load(w_ptr + cols[None, :] * stride_w + hk[:, None], mask=col_ok[None, :] & hk_ok[:, None], other=0.0)
        if UPCAST:  # the interpreter cannot multiply bf16 (numpy has none)
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _tanh(u):
    """``tanh(u)`` in float32 to a few ulp: an odd Taylor polynomial near 0 (where the
    exp form would cancel), ``(1 - e) / (1 + e)`` with ``e = exp(-2|u|)`` elsewhere."""
    a = tl.abs(u)
    e = tl.exp(-2.0 * a)
    far = (1.0 - e) / (1.0 + e)
    a2 = a * a
    # tanh(a) = a - a^3/3 + 2a^5/15 - 17a^7/315 + 62a^9/2835 - ...; truncation < 1e-9 relative below 0.125
    near = a * (1.0 + a2 * (-1.0 / 3.0 + a2 * (2.0 / 15.0 + a2 * (-17.0 / 315.0 + a2 * (62.0 / 2835.0)))))
    t = tl.where(a < 0.125, near, far)
    return tl.where(u < 0, -t, t)


@triton.jit
def _head_tile(h_ptr, w_ptr, b_ptr, rows, cols, row_ok, col_ok, H, stride_h, stride_w, pre, post,
               HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
               PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``(z, 1 - tanh(u)**2)`` of one tile (the second is 1 without a soft-cap)."""
    u = _logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, H, stride_h, stride_w,
                     BLOCK_N, BLOCK_V, BLOCK_H, PRECISION, UPCAST) * pre
    if HAS_BIAS:
        u += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :] * pre
    if HAS_SOFTCAP:
        t = _tanh(u)
        return t * post, 1.0 - t * t
    return u, tl.full((BLOCK_N, BLOCK_V), 1.0, dtype=tl.float32)


@triton.jit
def _fwd_kernel(h_ptr, w_ptr, b_ptr, tgt_ptr, logp_ptr, lse_ptr, ent_ptr,
                N, V, H, stride_h, stride_w, pre, post,
                HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, WANT_ENT: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                PRECISION: tl.constexpr, UPCAST: tl.constexpr):
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
        z, _ = _head_tile(h_ptr, w_ptr, b_ptr, rows, cols, row_ok, col_ok, H, stride_h, stride_w, pre, post,
                          HAS_BIAS, HAS_SOFTCAP, BLOCK_N, BLOCK_V, BLOCK_H, PRECISION, UPCAST)
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
                        row0, N, col0, V, H, stride_h, stride_w, stride_out, pre, post,
                        HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, USE_ENT: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                        PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    local = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = row0 + local
    row_ok = rows < N
    local_cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    cols = col0 + local_cols
    col_ok = cols < V  # V here is the end of this slab of the vocabulary
    z, dcap = _head_tile(h_ptr, w_ptr, b_ptr, rows, cols, row_ok, col_ok, H, stride_h, stride_w, pre, post,
                         HAS_BIAS, HAS_SOFTCAP, BLOCK_N, BLOCK_V, BLOCK_H, PRECISION, UPCAST)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    g_lp = tl.load(g_lp_ptr + rows, mask=row_ok, other=0.0)  # already times s / T
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
    if HAS_SOFTCAP:
        grad = grad * dcap
    ok = row_ok[:, None] & col_ok[None, :]
    tl.store(out_ptr + local[:, None] * stride_out + local_cols[None, :], grad.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _accumulate_at_b_kernel(a_ptr, b_ptr, c_ptr, M, K, Nc, stride_a, stride_b, stride_c,
                            BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_NC: tl.constexpr,
                            PRECISION: tl.constexpr, UPCAST: tl.constexpr):
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
        if UPCAST:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    c_ptrs = c_ptr + offs_m[:, None] * stride_c + offs_n[None, :]
    ok = m_ok[:, None] & n_ok[None, :]
    tl.store(c_ptrs, tl.load(c_ptrs, mask=ok, other=0.0) + acc, mask=ok)


def _blocks(hidden_dim: int, device: torch.device | None = None) -> dict:
    acc_m, acc_k, acc_n = _accumulate_blocks()
    launch = dict(num_warps=None, num_stages=None)
    if os.environ.get("TRITON_INTERPRET") == "1":
        # The interpreter runs tiles as numpy arrays: big vocab tiles, few programs.
        tiles = dict(BLOCK_N=16, BLOCK_V=4096, BLOCK_H=max(16, min(64, triton.next_power_of_2(hidden_dim))))
    elif device is not None and device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0):
        # Hopper (measured one by one on an H200 with benchmarks/sweep_logprob_tiles.py):
        # 256-wide vocab tiles with 8 warps cut the float32 forward + backward by 18-24%, and
        # 128 x 128 weight-gradient tiles cut the bf16 one by 12%. Larger tiles need more
        # shared memory than older GPUs have, so they stay on sm_90+, where they were measured.
        tiles = dict(BLOCK_N=64, BLOCK_V=256, BLOCK_H=64)
        launch = dict(num_warps=8, num_stages=3)
        acc_m, acc_k, acc_n = 128, 32, 128
    else:
        tiles = dict(BLOCK_N=64, BLOCK_V=128, BLOCK_H=64)
    # Backward work split: vocab slabs of SLAB_V rows (a float32 [SLAB_V, H] weight-gradient
    # accumulator for 16-bit weights) x token chunks of CHUNK_N rows ([CHUNK_N, SLAB_V] buffer).
    slab_v = max(tiles["BLOCK_V"], SLAB_BYTES // (4 * hidden_dim) // tiles["BLOCK_V"] * tiles["BLOCK_V"])
    # num_warps / num_stages: None leaves Triton's defaults. CUBLAS_DW: a float32 weight's
    # gradient slab is accumulated by cuBLAS (addmm, float32) instead of _accumulate_at_b_kernel
    # (no faster on the H200, so off by default).
    return dict(tiles, SLAB_V=slab_v, CHUNK_N=CHUNK_N, ACC_M=acc_m, ACC_K=acc_k, ACC_N=acc_n,
                CUBLAS_DW=False, **launch)


def _launch_options(blocks: dict) -> dict:
    """``num_warps`` / ``num_stages`` for a kernel launch, where ``blocks`` sets them."""
    return {k: blocks[k] for k in ("num_warps", "num_stages") if blocks.get(k)}


def _precision(dtype: torch.dtype) -> dict:
    """``tl.dot`` settings: IEEE float32 for float32 inputs (no TF32; for 16-bit inputs the
    precision argument is unused). Under the interpreter, which cannot multiply bf16, tiles
    are upcast to float32 first (``UPCAST``) — exact, since bf16 products fit in float32."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return dict(PRECISION="ieee", UPCAST=True)
    return dict(PRECISION="ieee" if dtype == torch.float32 else "tf32", UPCAST=False)


def _accumulate_blocks() -> tuple[int, int, int]:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return 4096, 32, 64
    return 64, 32, 64


class _TritonTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, head, want_entropy, blocks):
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
                n, vocab, hdim, hidden.stride(0), weight.stride(0), head.pre, head.post,
                HAS_BIAS=bias is not None, HAS_SOFTCAP=head.softcap is not None, WANT_ENT=want_entropy, **precision,
                BLOCK_N=blocks["BLOCK_N"], BLOCK_V=blocks["BLOCK_V"], BLOCK_H=blocks["BLOCK_H"],
                **_launch_options(blocks),
            )
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ent)
        ctx.head, ctx.want_entropy, ctx.blocks = head, want_entropy, blocks
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
        head = ctx.head
        blocks = ctx.blocks
        precision = _precision(hidden.dtype)
        g_lp = (grad_logp.float() if grad_logp is not None else torch.zeros(n, device=dev)) * head.grad_scale
        use_ent = ctx.want_entropy and grad_ent is not None
        g_ent = (grad_ent.float() * head.grad_scale).contiguous() if use_ent else g_lp
        g_lp = g_lp.contiguous()
        # grad_hidden accumulates over vocab slabs in hidden's dtype (cuBLAS adds in float32
        # and rounds once per slab); grad_weight of a slab accumulates over all tokens in
        # float32, then is written once into the (weight-dtype) gradient.
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.empty(vocab, hdim, dtype=weight.dtype, device=dev) if need_w else None
        grad_b = torch.zeros(vocab, dtype=torch.float32, device=dev) if need_b else None
        slab = min(vocab, blocks["SLAB_V"])
        chunk = max(1, min(n, blocks["CHUNK_N"]))
        slab_acc = None
        if need_w and weight.dtype != torch.float32:
            slab_acc = torch.empty(slab, hdim, dtype=torch.float32, device=dev)
        buf = torch.empty(max(chunk * slab, 1), dtype=hidden.dtype, device=dev)
        acc_m, acc_k, acc_n = blocks["ACC_M"], blocks["ACC_K"], blocks["ACC_N"]
        cublas_dw = bool(blocks["CUBLAS_DW"]) and slab_acc is None  # float32 weight: no separate accumulator
        for v0 in range(0, vocab, slab):
            v1 = min(v0 + slab, vocab)
            width = v1 - v0
            if need_w:
                gw = grad_w[v0:v1] if slab_acc is None else slab_acc[:width]
                gw.zero_()
            for s in range(0, n, chunk):
                e = min(s + chunk, n)
                rows = e - s
                tile = buf[: rows * width].view(rows, width)
                grid = (triton.cdiv(rows, blocks["BLOCK_N"]), triton.cdiv(width, blocks["BLOCK_V"]))
                _grad_logits_kernel[grid](
                    hidden, weight, bias if bias is not None else hidden, targets, lse,
                    ent if use_ent else lse, g_lp, g_ent, tile,
                    s, e, v0, v1, hdim, hidden.stride(0), weight.stride(0), tile.stride(0), head.pre, head.post,
                    HAS_BIAS=bias is not None, HAS_SOFTCAP=head.softcap is not None, USE_ENT=use_ent, **precision,
                    BLOCK_N=blocks["BLOCK_N"], BLOCK_V=blocks["BLOCK_V"], BLOCK_H=blocks["BLOCK_H"],
                    **_launch_options(blocks),
                )
                if need_h:
                    grad_h[s:e].addmm_(tile, weight[v0:v1])
                if need_w and cublas_dw:
                    gw.addmm_(tile.t(), hidden[s:e])
                elif need_w:
                    _accumulate_at_b_kernel[(triton.cdiv(width, acc_m), triton.cdiv(hdim, acc_n))](
                        tile, hidden[s:e], gw, width, rows, hdim,
                        tile.stride(0), hidden.stride(0), gw.stride(0),
                        BLOCK_M=acc_m, BLOCK_K=acc_k, BLOCK_NC=acc_n, **precision,
                    )
                if need_b:
                    grad_b[v0:v1] += tile.sum(dim=0, dtype=torch.float32)
            if slab_acc is not None:
                grad_w[v0:v1].copy_(gw)
        return (
            grad_h,
            grad_w,
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
    *,
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton path of ``agent_lightning.ops.token_logprobs`` (already validated inputs).

    Args:
        hidden: ``[N, H]`` float32/bf16/fp16; cast to a common dtype with ``weight``.
        weight: ``[V, H]``.
        targets: ``[N]`` int64 in ``[0, V)``.
        bias: ``[V]`` or ``None``.
        temperature: > 0.
        return_entropy: Compute the (differentiable) entropy too.
        blocks: Overrides of the tile sizes ``BLOCK_N``/``BLOCK_V``/``BLOCK_H`` (powers of two
            >= 16), of the backward split ``SLAB_V``/``CHUNK_N``, of the weight-gradient
            kernel's ``ACC_M``/``ACC_K``/``ACC_N``, of ``num_warps``/``num_stages``, and
            ``CUBLAS_DW`` (float32 weights: cuBLAS accumulates the weight gradient); tests use
            it to force partial tiles, several slabs and chunks, and each backward path.
        logit_scale: Multiplies the lm-head output (> 0).
        softcap: Final logit soft-cap ``c`` (``c * tanh(logits / c)``), or ``None``.

    Returns:
        ``(logprobs [N] float32, entropy [N] float32 or [0])``.
    """
    dtype = torch.promote_types(hidden.dtype, weight.dtype)
    hidden = hidden.to(dtype).contiguous()
    weight = weight.to(dtype).contiguous()
    targets = targets.contiguous()
    bias = bias.contiguous() if bias is not None else None
    blocks = dict(_blocks(hidden.shape[1], hidden.device), **(blocks or {}))
    head = HeadTransform(float(temperature), float(logit_scale), None if softcap is None else float(softcap))
    return _TritonTokenLogprobs.apply(hidden, weight, bias, targets, head, return_entropy, blocks)
