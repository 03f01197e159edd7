"""Per-sequence reductions over a packed token stream (loss aggregation).

``values`` is ``[total]`` in packed order and ``cu_seqlens`` int32 ``[B+1]`` its sequence
offsets (see ``agent_lightning.ops.packing``). Each reduction returns one number per sequence.
Sums and means are differentiable w.r.t. ``values``: the torch reference through autograd,
the C++ path through an ``autograd.Function`` whose backward is a gather of the output grad.
Half / bfloat16 values accumulate in float32 on every path.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import TYPE_CHECKING

from agent_lightning.ops.packing import check_cu_seqlens

if TYPE_CHECKING:
    import torch


def _path(op: str, device_type: str) -> str:
    from agent_lightning.ops.dispatch import select

    return select(op, device_type, implemented=("cpp",))


def _ext():
    from agent_lightning.ops.dispatch import cpp_extension

    return cpp_extension()


def _check(values: "torch.Tensor | None", mask: "torch.Tensor | None", cu_seqlens: "torch.Tensor", op: str) -> int:
    """Validate shapes / dtypes; returns the number of tokens."""
    import torch

    total = None
    if values is not None:
        if values.ndim != 1:
            raise ValueError(f"{op}: values must be 1-D [total], got shape {tuple(values.shape)}")
        if not values.dtype.is_floating_point:
            raise TypeError(f"{op}: values must be floating point, got {values.dtype}")
        total = values.shape[0]
    if mask is not None:
        if mask.ndim != 1 or mask.dtype != torch.bool:
            raise TypeError(f"{op}: mask must be a bool [total] tensor, got {mask.dtype} {tuple(mask.shape)}")
        if total is not None and mask.shape[0] != total:
            raise ValueError(f"{op}: mask has {mask.shape[0]} tokens but values has {total}")
        total = mask.shape[0]
    assert total is not None
    check_cu_seqlens(cu_seqlens, total, op)
    return total


def _lengths(cu_seqlens: "torch.Tensor") -> "torch.Tensor":
    import torch

    return (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)


def _acc_dtype(dtype: "torch.dtype") -> "torch.dtype":
    import torch

    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


# --------------------------------------------------------------------------- torch reference


def _seq_ids(cu_seqlens: "torch.Tensor", total: int) -> "torch.Tensor":
    import torch

    batch = cu_seqlens.numel() - 1
    return torch.repeat_interleave(
        torch.arange(batch, device=cu_seqlens.device), _lengths(cu_seqlens), output_size=total
    )


def segment_sum_torch(values: "torch.Tensor", cu_seqlens: "torch.Tensor") -> "torch.Tensor":
    """Reference for :func:`segment_sum` (``index_add`` by sequence id)."""
    total = _check(values, None, cu_seqlens, "segment_sum")
    ids = _seq_ids(cu_seqlens.to(values.device), total)
    acc = values.new_zeros(cu_seqlens.numel() - 1, dtype=_acc_dtype(values.dtype))
    return acc.index_add(0, ids, values.to(acc.dtype)).to(values.dtype)


def segment_count_torch(mask: "torch.Tensor", cu_seqlens: "torch.Tensor") -> "torch.Tensor":
    """Reference for :func:`segment_count`."""
    import torch

    total = _check(None, mask, cu_seqlens, "segment_count")
    ids = _seq_ids(cu_seqlens.to(mask.device), total)
    return torch.zeros(cu_seqlens.numel() - 1, dtype=torch.int64, device=mask.device).index_add(
        0, ids, mask.to(torch.int64)
    )


def segment_mean_torch(
    values: "torch.Tensor", cu_seqlens: "torch.Tensor", mask: "torch.Tensor | None" = None
) -> "torch.Tensor":
    """Reference for :func:`segment_mean`."""
    import torch

    total = _check(values, mask, cu_seqlens, "segment_mean")
    ids = _seq_ids(cu_seqlens.to(values.device), total)
    batch = cu_seqlens.numel() - 1
    acc_dtype = _acc_dtype(values.dtype)
    v = values.to(acc_dtype)
    if mask is not None:
        v = torch.where(mask, v, torch.zeros((), dtype=acc_dtype, device=v.device))
        counts = torch.zeros(batch, dtype=torch.int64, device=values.device).index_add(0, ids, mask.to(torch.int64))
    else:
        counts = _lengths(cu_seqlens).to(values.device)
    sums = v.new_zeros(batch).index_add(0, ids, v)
    return (sums / counts.clamp(min=1).to(acc_dtype)).to(values.dtype)


# --------------------------------------------------------------------------- public ops


def segment_sum(values: "torch.Tensor", cu_seqlens: "torch.Tensor") -> "torch.Tensor":
    """Sum of ``values`` over each sequence.

    Args:
        values: float ``[total]`` packed per-token values.
        cu_seqlens: int32 ``[B+1]`` sequence offsets.

    Returns:
        ``[B]`` in ``values``' dtype (0 for an empty sequence); differentiable w.r.t. ``values``.
    """
    if _path("segment_sum", values.device.type) != "cpp":
        return segment_sum_torch(values, cu_seqlens)
    _check(values, None, cu_seqlens, "segment_sum")
    cu = cu_seqlens.to(values.device)
    if values.requires_grad:
        return _autograd().segment_sum.apply(values, cu)
    return _ext().segment_sum(values, cu)


def segment_mean(
    values: "torch.Tensor", cu_seqlens: "torch.Tensor", mask: "torch.Tensor | None" = None
) -> "torch.Tensor":
    """Mean of ``values`` over the masked-in tokens of each sequence.

    Args:
        values: float ``[total]``.
        cu_seqlens: int32 ``[B+1]``.
        mask: Optional bool ``[total]``; ``None`` averages every token. Masked-out values are
            ignored (even NaN) and get zero gradient.

    Returns:
        ``[B]`` in ``values``' dtype; 0 for a sequence with no masked-in token.
    """
    if _path("segment_mean", values.device.type) != "cpp":
        return segment_mean_torch(values, cu_seqlens, mask)
    _check(values, mask, cu_seqlens, "segment_mean")
    cu = cu_seqlens.to(values.device)
    if values.requires_grad:
        return _autograd().segment_mean.apply(values, cu, mask)
    return _ext().segment_mean(values, cu, mask)[0]


def segment_count(mask: "torch.Tensor", cu_seqlens: "torch.Tensor") -> "torch.Tensor":
    """Number of true entries of ``mask`` in each sequence.

    Args:
        mask: bool ``[total]``.
        cu_seqlens: int32 ``[B+1]``.

    Returns:
        int64 ``[B]``.
    """
    if _path("segment_count", mask.device.type) != "cpp":
        return segment_count_torch(mask, cu_seqlens)
    _check(None, mask, cu_seqlens, "segment_count")
    return _ext().segment_count(mask, cu_seqlens.to(mask.device))


# --------------------------------------------------------------------------- autograd for the C++ path


@functools.lru_cache(maxsize=None)
def _autograd() -> SimpleNamespace:
    """autograd.Functions around the C++ reductions (built on first use: no import-time torch)."""
    import torch

    def spread(per_seq: "torch.Tensor", cu: "torch.Tensor", total: int) -> "torch.Tensor":
        # The backward of a segment reduction: every token receives its sequence's gradient.
        return torch.repeat_interleave(per_seq, _lengths(cu), output_size=total)

    class SegmentSum(torch.autograd.Function):
        @staticmethod
        def forward(ctx, values, cu):  # type: ignore[override]
            ctx.save_for_backward(cu)
            ctx.total = values.shape[0]
            return _ext().segment_sum(values, cu)

        @staticmethod
        def backward(ctx, grad):  # type: ignore[override]
            (cu,) = ctx.saved_tensors
            return spread(grad, cu, ctx.total), None

    class SegmentMean(torch.autograd.Function):
        @staticmethod
        def forward(ctx, values, cu, mask):  # type: ignore[override]
            mean, counts = _ext().segment_mean(values, cu, mask)
            ctx.save_for_backward(cu, counts, mask if mask is not None else torch.empty(0, dtype=torch.bool))
            ctx.has_mask = mask is not None
            ctx.total = values.shape[0]
            return mean

        @staticmethod
        def backward(ctx, grad):  # type: ignore[override]
            cu, counts, mask = ctx.saved_tensors
            per_seq = grad / counts.clamp(min=1).to(grad.dtype)
            out = spread(per_seq, cu, ctx.total)
            if ctx.has_mask:
                out = out * mask.to(out.dtype)
            return out, None, None

    return SimpleNamespace(segment_sum=SegmentSum, segment_mean=SegmentMean)
