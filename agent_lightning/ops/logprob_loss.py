"""A per-token loss of log-probs (and entropy) straight from hidden states, with its gradient
computed during the forward pass: three matmuls in all, where log-probs followed by autograd
need four.

:func:`agent_lightning.ops.token_logprobs` never holds ``[N, V]`` logits, so its backward pass
must recompute them: four ``[N, H] x [H, V]``-sized matmuls (logits, logits again, the two
gradients). When the loss on top is known in advance and *row-separable* — row ``i``'s
gradient depends only on row ``i``'s log-prob and entropy, as for every clipped-surrogate,
entropy-bonus and KL loss aggregated with fixed per-token weights — the upstream gradient of a
row chunk can be taken as soon as the chunk's log-probs exist, while its ``[rows, V]`` logits
are still in a buffer. The gradients w.r.t. the hidden states and the lm head are then
accumulated in the same sweep, and the backward pass only scales them by the upstream scalar
(Liger's fused linear cross-entropy does the same for a mean NLL). A frozen lm head (LoRA)
needs two matmuls instead of three.

Maths as in :mod:`agent_lightning.ops.logprobs` (``z`` the softmax input of a row, ``p`` its
softmax, ``g`` and ``k`` the upstream gradients of its log-prob and entropy)::

    d loss / d z = g * (onehot(target) - p) - k * p * (log p + entropy)

The largest temporary is one ``[rows, V]`` float32 buffer (two with entropy, three with a
soft-cap) of about ``TILE_BYTES``, plus the gradients themselves (hidden- and head-sized).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

# torch at module level is fine: ``agent_lightning.ops`` imports this module lazily, on the
# first use of ``token_logprob_loss``, and the autograd.Function below needs it.
import torch

from agent_lightning.ops.head_transform import HeadTransform
from agent_lightning.ops.logprobs import _logits_into

LossOf = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]
"""``loss_of(logprobs [N], entropy [N] | None) -> scalar``, row-separable (module docstring)."""

# One [rows, V] float32 logits buffer of about TILE_BYTES per row chunk. On the 2-core
# machine (benchmarks/bench_logprobs.py, (4096, 576, 49152)) 25 MB chunks were 12 % slower
# than 50-100 MB ones: each chunk re-reads and re-writes the whole [V, H] head gradient.
TILE_BYTES = 64 * 1024 * 1024


class LogprobLoss(NamedTuple):
    """What :func:`token_logprob_loss` returns."""

    loss: torch.Tensor
    """The scalar ``loss_of(logprobs, entropy)``, differentiable w.r.t. hidden, weight and bias."""
    logprobs: torch.Tensor
    """``[N]`` log-probs of the targets (detached), float32 (float64 for float64 inputs)."""
    entropy: torch.Tensor | None
    """``[N]`` entropies in nats (detached), or ``None`` when not asked for."""


def token_logprob_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    loss_of: LossOf,
    *,
    bias: torch.Tensor | None = None,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_rows: int | None = None,
) -> LogprobLoss:
    """``loss_of(log p(targets), entropy)`` under the lm head ``weight`` applied to ``hidden``.

    Args:
        hidden: ``[N, H]`` final hidden states, any float dtype.
        weight: ``[V, H]`` lm-head weight, any float dtype.
        targets: ``[N]`` int64 token ids in ``[0, V)``.
        loss_of: Maps ``(logprobs [N], entropy [N] or None)`` to a scalar tensor. It must be
            row-separable (row ``i``'s gradient depends on row ``i`` alone) and treat every
            tensor it closes over as a constant; it is called once per row chunk (rows not yet
            computed hold 0) and once more for the returned value.
        bias, logit_scale, softcap, temperature: As in :func:`agent_lightning.ops.token_logprobs`.
        with_entropy: Compute the entropy and pass it to ``loss_of`` (else it gets ``None``).
        chunk_rows: Rows per chunk; default: as many as fit ``TILE_BYTES`` of logits.

    Returns:
        :class:`LogprobLoss`. The gradient is exact (no approximation beyond float rounding)
        for a row-separable ``loss_of``.

    Path (``agent_lightning.ops.dispatch``, op ``token_logprobs``): with the Triton kernel
    (CUDA) this is ``loss_of(*token_logprobs(...))``; every other path sweeps row chunks as
    described in the module docstring.
    """
    from agent_lightning.ops import dispatch
    from agent_lightning.ops.logprobs import IMPLEMENTED, _check_head, _check_inputs, token_logprobs

    if not callable(loss_of):
        raise TypeError(f"token_logprob_loss: loss_of must be callable, got {type(loss_of).__name__}")
    _check_inputs(hidden, weight, targets, bias, temperature, None, None)
    head = _check_head(logit_scale, softcap)
    path = dispatch.select("token_logprobs", hidden.device.type, IMPLEMENTED)
    wide = torch.float64 in (hidden.dtype, weight.dtype)
    if path == "triton" and not wide:
        out = token_logprobs(hidden, weight, targets, bias=bias, temperature=temperature,
                             return_entropy=with_entropy, **head)
        logp, ent = (out.logprobs, out.entropy) if with_entropy else (out, None)
        loss = _checked_loss(loss_of, logp, ent)
        return LogprobLoss(loss, logp.detach(), None if ent is None else ent.detach())

    n, vocab = hidden.shape[0], weight.shape[0]
    rows = int(chunk_rows) if chunk_rows else max(1, TILE_BYTES // (4 * max(1, vocab)))
    rows = max(1, min(rows, max(n, 1)))
    transform = HeadTransform(float(temperature), head["logit_scale"], head["softcap"])
    grad_on = torch.is_grad_enabled()
    needs = tuple(grad_on and t is not None and t.requires_grad for t in (hidden, weight, bias))
    loss, logp, ent = _SweptLogprobLoss.apply(hidden, weight, bias, targets, transform, with_entropy, loss_of,
                                              rows, needs)
    return LogprobLoss(loss, logp, ent if with_entropy else None)


def _checked_loss(loss_of: LossOf, logp: torch.Tensor, ent: torch.Tensor | None) -> torch.Tensor:
    loss = loss_of(logp, ent)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"token_logprob_loss: loss_of must return a scalar tensor, got {shape}")
    return loss.reshape(())


def _row_grads(loss_of: LossOf, logp: torch.Tensor, ent: torch.Tensor | None):
    """``(d loss / d logp, d loss / d entropy or None)`` at the given values, ``[N]`` each."""
    with torch.enable_grad():
        lp = logp.detach().clone().requires_grad_()
        en = None if ent is None else ent.detach().clone().requires_grad_()
        loss = _checked_loss(loss_of, lp, en)
        if not loss.requires_grad:
            return torch.zeros_like(lp), None if en is None else torch.zeros_like(en)
        inputs = [lp] if en is None else [lp, en]
        grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    g_lp = grads[0] if grads[0] is not None else torch.zeros_like(lp)
    g_ent = grads[1] if en is not None else None  # None also when the loss ignores the entropy
    return g_lp.to(logp.dtype), None if g_ent is None else g_ent.to(logp.dtype)


class _SweptLogprobLoss(torch.autograd.Function):
    """One sweep over row chunks computes the log-probs, the loss's per-row gradients and the
    gradients w.r.t. hidden / weight / bias; backward scales them by the upstream scalar."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, head, want_entropy, loss_of, rows, needs):
        with torch.autocast(hidden.device.type, enabled=False):
            loss, logp, ent, grads = _sweep(hidden, weight, bias, targets, head, want_entropy, loss_of, rows, needs)
        # The gradients are ours alone: kept on ctx (not save_for_backward) and scaled in place,
        # so that backward holds no second head-sized copy.
        ctx.grads = grads
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(logp, ent)
        return loss, logp, ent

    @staticmethod
    def backward(ctx, grad_loss, _grad_logp, _grad_ent):
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError("token_logprob_loss: its backward ran already (the gradient was scaled in place; "
                               "retain_graph=True is not supported)")
        out = [None if g is None else g.mul_(grad_loss.to(g.dtype)).to(dtype) for g, dtype in zip(grads, ctx.dtypes)]
        return (*out, None, None, None, None, None, None)


def _sweep(hidden, weight, bias, targets, head: HeadTransform, want_entropy: bool, loss_of: LossOf, rows: int,
           needs: tuple[bool, bool, bool]):
    """The forward sweep: ``(loss, logp [N], entropy [N] or [0], (grad_h, grad_w, grad_b))``."""
    need_h, need_w, need_b = needs
    acc = torch.float64 if torch.float64 in (hidden.dtype, weight.dtype) else torch.float32
    pre, post, capped = head.pre, head.post, head.softcap is not None
    n, vocab = hidden.shape[0], weight.shape[0]
    dev = hidden.device
    w = weight.detach().to(acc)
    b = None if bias is None else bias.detach().to(acc) * pre
    logp = torch.zeros(n, dtype=acc, device=dev)
    ent = torch.zeros(n if want_entropy else 0, dtype=acc, device=dev)
    any_grad = need_h or need_w or need_b
    grad_h = torch.empty(n, hidden.shape[1], dtype=acc, device=dev) if need_h else None
    grad_w = torch.zeros(vocab, weight.shape[1], dtype=acc, device=dev) if need_w else None
    grad_b = torch.zeros(vocab, dtype=acc, device=dev) if need_b else None
    flat = torch.empty(min(rows, n) * vocab, dtype=acc, device=dev)
    flat2 = torch.empty_like(flat) if want_entropy else None
    flat3 = torch.empty_like(flat) if capped and any_grad else None
    for s in range(0, n, rows):
        e = min(s + rows, n)
        r = e - s
        h = hidden[s:e].detach().to(acc)
        tgt = targets[s:e]
        z = flat[: r * vocab].view(r, vocab)
        _logits_into(z, h * pre, w, b)
        dcap = None
        if capped:
            t = z.tanh_()
            if any_grad:  # d tanh(u) / du = 1 - tanh(u)^2
                dcap = torch.mul(t, t, out=flat3[: r * vocab].view(r, vocab)).neg_().add_(1.0)
            t.mul_(post)
        z_tgt = z.gather(1, tgt[:, None]).squeeze(1)
        top = z.amax(dim=1)
        y = z.sub_(top[:, None])  # z - max, in place
        if want_entropy:
            ey = torch.exp(y, out=flat2[: r * vocab].view(r, vocab))
            total = ey.sum(dim=1)
            # Row-wise dot products sum_v e^y * y as a batched [1, V] x [V, 1] product: no temporary.
            ey_y = torch.bmm(ey.unsqueeze(1), y.unsqueeze(2)).view(r)
            log_total = total.log()
            ent[s:e] = log_total - ey_y / total
        else:
            ey = y.exp_()
            total = ey.sum(dim=1)
            log_total = total.log()
        logp[s:e] = z_tgt - top - log_total
        if not any_grad:
            continue
        g_lp, g_ent = _row_grads(loss_of, logp, ent if want_entropy else None)
        # d/dy = d/dz * s/T (* (1 - tanh^2) with a soft-cap): fold s/T into the row gradients.
        g = g_lp[s:e] * head.grad_scale
        inv = total.reciprocal()
        if g_ent is not None:
            k = g_ent[s:e] * head.grad_scale
            # -(p) * (g + k * (log p + H)),  log p = y - log_total
            coef = y.add_((ent[s:e] - log_total)[:, None]).mul_(k[:, None]).add_(g[:, None])
            grad_z = coef.mul_(ey).mul_(inv.neg()[:, None])
        else:
            grad_z = ey.mul_((-g * inv)[:, None])
        # The one-hot part of d logprob / d z: + g at (i, target_i).
        grad_z[torch.arange(r, device=dev), tgt] += g
        if dcap is not None:
            grad_z.mul_(dcap)
        if need_h:
            torch.mm(grad_z, w, out=grad_h[s:e])
        if need_w:
            grad_w.addmm_(grad_z.t(), h)
        if need_b:
            grad_b += grad_z.sum(dim=0)
    with torch.no_grad():
        loss = _checked_loss(loss_of, logp, ent if want_entropy else None).detach()
    return loss, logp, ent, (grad_h, grad_w, grad_b)
