"""Attention with logit soft-capping (Gemma 2's ``attn_logit_softcapping``), which SDPA cannot
do: the eager formula in plain torch, used by the packed and segment attentions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def softcap_attention(module: Any, query: "torch.Tensor", key: "torch.Tensor", value: "torch.Tensor",
                      allowed: "torch.Tensor | None", scaling: float | None, dropout: float,
                      softcap: float) -> "torch.Tensor":
    """Eager attention with logit soft-capping (what SDPA cannot do).

    Args:
        query: ``[b, H, q, D]``; key, value: ``[b, Hkv, k, D]`` (``H`` a multiple of ``Hkv``).
        allowed: Bool mask broadcastable to ``[b, H, q, k]`` (True: attend), an additive float
            mask, or ``None`` (no masking).
        softcap: Scores become ``softcap * tanh(scores / softcap)`` before masking.

    Returns:
        ``[b, q, H, D]``. Softmax in float32; masked scores get the dtype's minimum (as
        transformers' eager masks do), so a fully masked row is uniform rather than NaN.
    """
    import torch

    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scale
    scores = torch.tanh(scores / softcap) * softcap
    if allowed is not None:
        if allowed.dtype == torch.bool:
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        else:
            scores = scores + allowed
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if dropout and module.training:
        probs = torch.nn.functional.dropout(probs, p=dropout)
    return torch.matmul(probs, value).transpose(1, 2)
