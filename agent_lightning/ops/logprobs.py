"""Per-token log-prob (and entropy, and KL to a reference) straight from hidden states.

The ``[N, V]`` logits tensor is the memory wall of RL fine-tuning (16k tokens x 152k vocab
is 10 GB in float32), and it is built only to read one number per token. ``token_logprobs``
never materialises it: the Triton kernel (CUDA) tiles the vocabulary with an online
log-sum-exp; the torch path (every other device) walks token chunks x vocab tiles, also
with an online log-sum-exp, so its largest temporary is one ``[CHUNK_ROWS, tile]`` logits
tile of ``TILE_BYTES``; the backward pass recomputes the tiles (4 matmuls in all instead of
3, traded for never allocating, faulting in and sweeping ``[N, V]`` arrays).

Maths. The lm head of most models is ``y = hidden @ weight.T + bias``; some families
transform it before the softmax: a logit scale ``s`` (Cohere ``logit_scale``, Granite
``1 / logits_scaling``) and a final soft-cap ``c`` (Gemma 2/3 ``final_logit_softcapping``)::

    logits = s * y                       (no soft-cap)
    logits = c * tanh(s * y / c)         (soft-cap c)
    z = logits / temperature,  p = softmax(z)

    logprob_i = z[i, target_i] - logsumexp(z[i])
    entropy_i = logsumexp(z[i]) - sum_v p[i, v] z[i, v]
    d logprob_i / d z[i] = onehot(target_i) - p[i]
    d entropy_i / d z[i] = -p[i] * (log p[i] + entropy_i)

and ``d z / d y = (s / temperature) * (1 - tanh(s * y / c)**2)`` (the last factor only with
a soft-cap). Both paths compute a tile as ``u = y * pre`` with ``pre = s / temperature``
(``s / c`` with a soft-cap, then ``z = tanh(u) * c / temperature``), and fold
``s / temperature`` into the upstream gradients of the backward pass.
"""

from __future__ import annotations

from typing import NamedTuple

# torch at module level is fine here: ``agent_lightning.ops`` loads this module lazily, on the
# first use of ``token_logprobs``, and the autograd.Function below needs it.
import torch

from agent_lightning.ops.head_transform import HeadTransform

IMPLEMENTED = ("triton",)
# Torch path tiling: token chunks of CHUNK_ROWS rows, vocab tiles sized so one float32
# [CHUNK_ROWS, tile] logits tile is TILE_BYTES. Tiles this big keep the matmuls efficient and
# the number of (multi-threaded) ops per call small; 1/8 of the tile sizes measured the same on
# one thread and slower on two (benchmarks/bench_logprobs.py, shared 2-core machine).
CHUNK_ROWS = 4096
TILE_BYTES = 32 * 1024 * 1024
_MIN_TILE = 128


class TokenLogprobs(NamedTuple):
    """Outputs of :func:`token_logprobs` when more than the log-probs are asked for.

    Fields are ``[N]`` float32 (float64 for float64 inputs), or ``None`` when not requested.
    """

    logprobs: torch.Tensor
    """``log p(target_i)`` at the given temperature."""
    entropy: torch.Tensor | None
    """Entropy of the full next-token distribution, in nats."""
    kl: torch.Tensor | None
    """Per-token KL estimate against ``ref_logprobs`` (see :func:`agent_lightning.ops.kl_penalty`)."""


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
    mask: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl: str = "k3",
    kl_clamp: float | None = 10.0,
) -> torch.Tensor | TokenLogprobs:
    """Log-probs of ``targets`` under the lm head ``weight`` applied to ``hidden``.

    Args:
        hidden: ``[N, H]`` final hidden states, any float dtype.
        weight: ``[V, H]`` lm-head weight (``nn.Linear(H, V).weight``), any float dtype.
        targets: ``[N]`` int64 token ids in ``[0, V)``.
        bias: ``[V]`` lm-head bias, or ``None``.
        logit_scale: The lm-head output is multiplied by it before the soft-cap (Cohere's
            ``logit_scale``, Granite's ``1 / logits_scaling``); must be > 0.
        softcap: Final logit soft-cap ``c``: logits become ``c * tanh(logits / c)`` (Gemma 2/3
            ``final_logit_softcapping``); ``None`` for none, else > 0.
        temperature: Logits (after scale and soft-cap) are divided by it (sampling
            temperature), must be > 0.
        return_entropy: Also return the per-token entropy (differentiable).
        mask: ``[N]`` bool; rows with ``False`` get 0 in every output and no gradient
            (and cost nothing). ``None`` means every row is valid.
        ref_logprobs: ``[N]`` reference log-probs; when given, the KL term is returned.
        kl: KL estimator, ``"k1"``, ``"k2"`` or ``"k3"``.
        kl_clamp: Clamp of the ``k3`` estimator (verl's ``low_var_kl``); ``None`` disables.

    Returns:
        ``[N]`` float32 log-probs when neither ``return_entropy`` nor ``ref_logprobs`` is
        given, else a :class:`TokenLogprobs`. Logits are accumulated in float32 whatever the
        input dtype (float64 inputs stay float64). Differentiable w.r.t. ``hidden``,
        ``weight`` and ``bias``, with per-token upstream gradients honoured.

    Path (``agent_lightning.ops.dispatch``): the Triton kernel for CUDA tensors, else the
    chunked torch path; float64 inputs always take the torch path.
    """
    from agent_lightning.ops import dispatch

    _check_inputs(hidden, weight, targets, bias, temperature, mask, ref_logprobs)
    head = _check_head(logit_scale, softcap)
    n = hidden.shape[0]
    out_dtype = torch.float64 if torch.float64 in (hidden.dtype, weight.dtype) else torch.float32

    rows = None
    h, t = hidden, targets
    if mask is not None:
        mask = mask.to(device=hidden.device, dtype=torch.bool)
        rows = mask.nonzero().squeeze(1)
        h, t = hidden.index_select(0, rows), targets.index_select(0, rows)

    path = dispatch.select("token_logprobs", hidden.device.type, IMPLEMENTED)
    if path == "triton" and out_dtype == torch.float64:
        if dispatch.forced_path() == "triton":
            raise dispatch.OpsUnavailableError(
                f"{dispatch.ENV_VAR}=triton for op 'token_logprobs': the Triton kernel takes float32/bf16/fp16 "
                "inputs, not float64"
            )
        path = "torch"  # float64 (tests, references) always takes the exact torch path
    if path == "triton":
        from agent_lightning.kernels.token_logprobs import triton_token_logprobs

        logp, ent = triton_token_logprobs(h, weight, t, bias, float(temperature), return_entropy, **head)
    else:
        logp, ent = chunked_token_logprobs(h, weight, t, bias, float(temperature), return_entropy, **head)

    if rows is not None:
        logp = _scatter_rows(logp, rows, n)
        ent = _scatter_rows(ent, rows, n) if return_entropy else None
    elif not return_entropy:
        ent = None
    if ref_logprobs is None and not return_entropy:
        return logp
    kl_term = None
    if ref_logprobs is not None:
        from agent_lightning.ops.kl import kl_penalty

        kl_term = kl_penalty(logp, ref_logprobs.to(logp.device), kind=kl, clamp=kl_clamp)
        if mask is not None:
            kl_term = kl_term.masked_fill(~mask, 0.0)
    return TokenLogprobs(logp, ent, kl_term)


def chunked_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    temperature: float,
    return_entropy: bool,
    chunk_rows: int | None = None,
    vocab_tile: int | None = None,
    *,
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch path: ``(logprobs [N], entropy [N] or [0])``, never holding ``[N, V]``.

    Tokens are processed in chunks of ``chunk_rows`` and the vocabulary in tiles of
    ``vocab_tile`` columns, so the largest temporary is one ``[chunk_rows, vocab_tile]``
    logits tile (two with entropy, one more with a soft-cap), sized by ``TILE_BYTES`` to
    stay cache-resident; the log-sum-exp runs online over the tiles. Both sizes can be
    overridden (tests use it). ``logit_scale`` and ``softcap`` as in :func:`token_logprobs`.
    """
    n, vocab = hidden.shape[0], weight.shape[0]
    rows = int(chunk_rows) if chunk_rows else CHUNK_ROWS
    rows = max(1, min(rows, n))
    cols = int(vocab_tile) if vocab_tile else max(_MIN_TILE, TILE_BYTES // (4 * rows))
    cols = max(1, min(cols, vocab))
    head = HeadTransform(float(temperature), float(logit_scale), None if softcap is None else float(softcap))
    return _ChunkedTokenLogprobs.apply(hidden, weight, bias, targets, head, return_entropy, (rows, cols))


class _ChunkedTokenLogprobs(torch.autograd.Function):
    """Token chunks x vocab tiles. Saves the inputs and the per-token log-sum-exp (and
    entropy) and recomputes each logits tile in backward: 4 matmuls in all, memory
    O(chunk x tile) on top of the inputs and gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, head, want_entropy, tiling):
        rows, cols = tiling
        acc = torch.float64 if torch.float64 in (hidden.dtype, weight.dtype) else torch.float32
        pre, post, capped = head.pre, head.post, head.softcap is not None
        b = None if bias is None else bias.to(acc) * pre
        n, vocab = hidden.shape[0], weight.shape[0]
        dev = hidden.device
        logp = torch.empty(n, dtype=acc, device=dev)
        lse = torch.empty(n, dtype=acc, device=dev)
        ent = torch.empty(n if want_entropy else 0, dtype=acc, device=dev)
        flat = torch.empty(min(rows, n) * cols, dtype=acc, device=dev)
        flat2 = torch.empty_like(flat) if want_entropy else None
        for s in range(0, n, rows):
            e = min(s + rows, n)
            hs = hidden[s:e].to(acc) * pre
            run_max = torch.full((e - s,), float("-inf"), dtype=acc, device=dev)
            run_sum = torch.zeros(e - s, dtype=acc, device=dev)  # sum exp(z - run_max)
            run_ez = torch.zeros(e - s, dtype=acc, device=dev) if want_entropy else None
            for v0 in range(0, vocab, cols):
                v1 = min(v0 + cols, vocab)
                z = _tile(flat, e - s, v1 - v0)
                # Weight tiles are cast one at a time: no float32 copy of a 16-bit weight.
                _logits_into(z, hs, weight[v0:v1].to(acc), None if b is None else b[v0:v1])
                if capped:
                    z.tanh_().mul_(post)
                new_max = torch.maximum(run_max, z.amax(dim=1))
                scale = torch.exp(run_max - new_max)  # 0 on the first tile
                y = z.sub_(new_max[:, None])
                if want_entropy:
                    ey = torch.exp(y, out=_tile(flat2, e - s, v1 - v0))
                    tile_sum = ey.sum(dim=1)
                    tile_ey = ey.mul_(y).sum(dim=1)
                    # Re-centre the old sum of e * (z - max) on the new max (nothing to move on tile 0).
                    shift = torch.where(run_sum > 0, (run_max - new_max) * run_sum, 0.0)
                    run_ez = scale * (run_ez + shift) + tile_ey
                else:
                    tile_sum = y.exp_().sum(dim=1)
                run_sum = run_sum * scale + tile_sum
                run_max = new_max
            log_sum = run_sum.log()
            lse[s:e] = run_max + log_sum
            if want_entropy:
                ent[s:e] = log_sum - run_ez / run_sum
        # Target logits as row-wise dot products: [N, H] work instead of a gather per tile.
        z_tgt = (hidden.to(acc) * weight.index_select(0, targets).to(acc)).sum(dim=1) * pre
        if b is not None:
            z_tgt += b.index_select(0, targets)
        if capped:
            z_tgt = z_tgt.tanh_().mul_(post)
        torch.sub(z_tgt, lse, out=logp)
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ent)
        ctx.head, ctx.tiling, ctx.want_entropy = head, tiling, want_entropy
        if not want_entropy:
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp, grad_ent):
        hidden, weight, bias, targets, lse, ent = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if not (need_h or need_w or need_b):
            return None, None, None, None, None, None, None
        rows, cols = ctx.tiling
        acc = lse.dtype
        head = ctx.head
        pre, post, capped = head.pre, head.post, head.softcap is not None
        b = None if bias is None else bias.to(acc) * pre
        n, vocab = hidden.shape[0], weight.shape[0]
        dev = hidden.device
        # Fold s/T into the upstream gradients: d/dy = (d/dz) * s/T (* (1 - tanh^2) if capped).
        g_lp = (grad_logp.to(acc) if grad_logp is not None else torch.zeros_like(lse)) * head.grad_scale
        use_ent = ctx.want_entropy and grad_ent is not None
        g_ent = grad_ent.to(acc) * head.grad_scale if use_ent else None
        h_acc = hidden.to(acc)
        grad_h = torch.zeros(n, hidden.shape[1], dtype=acc, device=dev) if need_h else None
        grad_w = torch.zeros(vocab, weight.shape[1], dtype=acc, device=dev) if need_w else None
        grad_b = torch.zeros(vocab, dtype=acc, device=dev) if need_b else None
        flat = torch.empty(min(rows, n) * cols, dtype=acc, device=dev)
        flat2 = torch.empty_like(flat) if use_ent else None
        flat3 = torch.empty_like(flat) if capped else None
        for s in range(0, n, rows):
            e = min(s + rows, n)
            h = h_acc[s:e]
            hs = h * pre
            neg_g = -g_lp[s:e, None]
            tgt = targets[s:e]
            for v0 in range(0, vocab, cols):
                v1 = min(v0 + cols, vocab)
                z = _tile(flat, e - s, v1 - v0)
                w_tile = weight[v0:v1].to(acc)
                _logits_into(z, hs, w_tile, None if b is None else b[v0:v1])
                if capped:
                    t = z.tanh_()
                    # d tanh(u) / du = 1 - tanh(u)^2, applied to d/dz below.
                    dcap = torch.mul(t, t, out=_tile(flat3, e - s, v1 - v0)).neg_().add_(1.0)
                    t.mul_(post)
                log_p = z.sub_(lse[s:e, None])
                if use_ent:
                    p = torch.exp(log_p, out=_tile(flat2, e - s, v1 - v0))
                    # -p * (g_lp + g_ent * (log p + H))
                    coef = log_p.add_(ent[s:e, None]).mul_(g_ent[s:e, None]).sub_(neg_g)
                    grad_z = coef.mul_(p).neg_()
                else:
                    grad_z = log_p.exp_().mul_(neg_g)
                # The one-hot part of d logprob / d z: + g_lp at (i, target_i) in this tile.
                hit = ((tgt >= v0) & (tgt < v1)).nonzero().squeeze(1)
                if hit.numel():
                    idx = (hit, tgt.index_select(0, hit) - v0)
                    grad_z.index_put_(idx, grad_z[idx] - neg_g.squeeze(1).index_select(0, hit))
                if capped:
                    grad_z.mul_(dcap)
                if need_h:
                    grad_h[s:e].addmm_(grad_z, w_tile)
                if need_w:
                    grad_w[v0:v1].addmm_(grad_z.t(), h)
                if need_b:
                    grad_b[v0:v1] += grad_z.sum(dim=0)
        return (
            grad_h.to(hidden.dtype) if need_h else None,
            grad_w.to(weight.dtype) if need_w else None,
            grad_b.to(bias.dtype) if need_b else None,
            None,
            None,
            None,
            None,
        )


def _check_head(logit_scale, softcap) -> dict:
    """Validated ``logit_scale`` / ``softcap`` as keyword arguments of the two paths."""
    import math

    if not (math.isfinite(logit_scale) and logit_scale > 0):
        raise ValueError(f"token_logprobs: logit_scale must be finite and > 0, got {logit_scale}")
    if softcap is not None and not (math.isfinite(softcap) and softcap > 0):
        raise ValueError(f"token_logprobs: softcap must be None or finite and > 0, got {softcap}")
    return {"logit_scale": float(logit_scale), "softcap": None if softcap is None else float(softcap)}


def _tile(flat: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """A contiguous ``[rows, cols]`` view on the front of a preallocated flat buffer."""
    return flat[: rows * cols].view(rows, cols)


def _logits_into(out, h_scaled, w_tile, b_tile):
    """``out[:] = h_scaled @ w_tile.T + b_tile`` (1/T already folded in) without temporaries."""
    if b_tile is None:
        return torch.mm(h_scaled, w_tile.t(), out=out)
    return torch.addmm(b_tile, h_scaled, w_tile.t(), out=out)


def _scatter_rows(values, rows, n):
    out = torch.zeros(n, dtype=values.dtype, device=values.device)
    return out.index_put((rows,), values)


def _check_inputs(hidden, weight, targets, bias, temperature, mask, ref_logprobs):
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"token_logprobs: hidden must be [N, H] and weight [V, H]; got hidden "
            f"{tuple(hidden.shape)} and weight {tuple(weight.shape)}"
        )
    n, vocab = hidden.shape[0], weight.shape[0]
    if targets.shape != (n,):
        raise ValueError(f"token_logprobs: targets must be [N]=[{n}], got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point:
        raise TypeError(f"token_logprobs: targets must be int64 token ids, got {targets.dtype}")
    if bias is not None and bias.shape != (vocab,):
        raise ValueError(f"token_logprobs: bias must be [V]=[{vocab}], got {tuple(bias.shape)}")
    if mask is not None and mask.shape != (n,):
        raise ValueError(f"token_logprobs: mask must be [N]=[{n}], got {tuple(mask.shape)}")
    if ref_logprobs is not None and ref_logprobs.shape != (n,):
        raise ValueError(f"token_logprobs: ref_logprobs must be [N]=[{n}], got {tuple(ref_logprobs.shape)}")
    if not temperature > 0:
        raise ValueError(f"token_logprobs: temperature must be > 0, got {temperature}")
    if n and targets.numel():
        check = targets if mask is None else targets[mask.to(device=targets.device, dtype=bool)]
        if check.numel():
            lo, hi = int(check.min()), int(check.max())
            if lo < 0 or hi >= vocab:
                bad = lo if lo < 0 else hi
                raise ValueError(f"token_logprobs: target id {bad} is outside the vocabulary [0, {vocab})")

