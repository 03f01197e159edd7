"""Packed (padding-free) token streams: layouts, pack / unpack, pad / unpad, micro-batching.

A packed batch of ``B`` variable-length sequences is one flat tensor ``[total, ...]`` plus
``cu_seqlens`` (int32 ``[B+1]``, ``cu_seqlens[0] = 0``, sequence ``b`` occupies rows
``cu_seqlens[b]:cu_seqlens[b+1]``). Every per-token field of a trajectory (token ids int64,
policy mask bool, sampling log-probs f32, advantages / returns f32, turn index int32) is
packed with the same ``cu_seqlens``. Sequences of length 0 are allowed everywhere.

Each op dispatches (``agent_lightning.ops.dispatch.select``) between the pure-torch reference
(``*_torch``, always present, the ground truth in tests) and the C++ extension
``agent_lightning._C`` (CPU; its CUDA kernels on GPU when it was built with CUDA).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import TYPE_CHECKING, NamedTuple, Sequence

if TYPE_CHECKING:
    import torch


class PackedLayout(NamedTuple):
    """Where every token of a packed batch sits.

    Attributes:
        cu_seqlens: int32 ``[B+1]`` sequence offsets into the flat stream.
        position_ids: int64 ``[total]`` position of each token inside its sequence (restarts at 0).
        seq_ids: int32 ``[total]`` index of the sequence each token belongs to.
        max_seqlen: Length of the longest sequence (0 when every sequence is empty).
    """

    cu_seqlens: "torch.Tensor"
    position_ids: "torch.Tensor"
    seq_ids: "torch.Tensor"
    max_seqlen: int


# --------------------------------------------------------------------------- helpers


def _as_lengths(lengths: "torch.Tensor | Sequence[int]", op: str) -> "torch.Tensor":
    """``lengths`` as an int64 1-D tensor, validated (non-negative)."""
    import torch

    t = lengths if isinstance(lengths, torch.Tensor) else torch.as_tensor(list(lengths), dtype=torch.int64)
    if t.ndim != 1:
        raise ValueError(f"{op}: lengths must be 1-D [B], got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{op}: lengths must be an integer tensor, got {t.dtype}")
    t = t.to(torch.int64)
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"{op}: lengths must be >= 0, got min {int(t.min())}")
    return t


def check_cu_seqlens(cu_seqlens: "torch.Tensor", total: int, op: str) -> None:
    """Raise (naming ``op``) unless ``cu_seqlens`` is int ``[B+1]``, 0 ... ``total``, non-decreasing."""
    import torch

    if cu_seqlens.ndim != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"{op}: cu_seqlens must be 1-D [B+1], got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: cu_seqlens must be int32 (or int64), got {cu_seqlens.dtype}")
    first, last = int(cu_seqlens[0]), int(cu_seqlens[-1])
    if first != 0 or last != total:
        raise ValueError(f"{op}: cu_seqlens must run from 0 to total={total}, got {first}..{last}")
    if cu_seqlens.numel() > 1 and bool((cu_seqlens[1:] < cu_seqlens[:-1]).any()):
        raise ValueError(f"{op}: cu_seqlens must be non-decreasing")


def _path(op: str, device_type: str) -> str:
    from agent_lightning.ops.dispatch import select

    return select(op, device_type, implemented=("cpp",))


def _ext():
    from agent_lightning.ops.dispatch import cpp_extension

    return cpp_extension()


# --------------------------------------------------------------------------- torch reference


def pack_lengths_torch(lengths: "torch.Tensor") -> PackedLayout:
    """Reference for :func:`pack_lengths` (vectorised torch)."""
    import torch

    lengths = _as_lengths(lengths, "pack_lengths")
    batch = lengths.numel()
    cu = torch.zeros(batch + 1, dtype=torch.int64, device=lengths.device)
    torch.cumsum(lengths, 0, out=cu[1:])
    total = int(cu[-1])
    seq_ids = torch.repeat_interleave(torch.arange(batch, device=lengths.device), lengths, output_size=total)
    position_ids = torch.arange(total, device=lengths.device) - cu[seq_ids]
    max_seqlen = int(lengths.max()) if batch else 0
    return PackedLayout(cu.to(torch.int32), position_ids, seq_ids.to(torch.int32), max_seqlen)


def pack_torch(seqs: Sequence["torch.Tensor"]) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Reference for :func:`pack`: ``torch.cat`` plus offsets."""
    import torch

    _check_seqs(seqs)
    lengths = torch.tensor([s.shape[0] for s in seqs], dtype=torch.int64, device=seqs[0].device)
    cu = torch.zeros(len(seqs) + 1, dtype=torch.int32, device=seqs[0].device)
    torch.cumsum(lengths, 0, out=cu[1:])
    return torch.cat(list(seqs), dim=0), cu


def unpack_torch(flat: "torch.Tensor", cu_seqlens: "torch.Tensor") -> list["torch.Tensor"]:
    """Reference for :func:`unpack`: views of ``flat`` split at ``cu_seqlens``."""
    check_cu_seqlens(cu_seqlens, flat.shape[0], "unpack")
    sizes = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    return list(flat.split(sizes, dim=0))


def pad_packed_torch(flat: "torch.Tensor", cu_seqlens: "torch.Tensor", pad_value: float = 0) -> "torch.Tensor":
    """Reference for :func:`pad_packed` (scatter by ``(seq_id, position)``)."""
    check_cu_seqlens(cu_seqlens, flat.shape[0], "pad_packed")
    layout = pack_lengths_torch((cu_seqlens[1:] - cu_seqlens[:-1]).to("cpu"))
    batch = cu_seqlens.numel() - 1
    out = flat.new_full((batch, layout.max_seqlen, *flat.shape[1:]), pad_value)
    import torch

    seq = layout.seq_ids.to(flat.device, torch.int64)
    out[seq, layout.position_ids.to(flat.device)] = flat
    return out


def unpad_torch(padded: "torch.Tensor", lengths_or_cu_seqlens: "torch.Tensor") -> "torch.Tensor":
    """Reference for :func:`unpad` (boolean-mask gather)."""
    import torch

    lengths = _lengths_from(padded, lengths_or_cu_seqlens)
    t = padded.shape[1]
    mask = torch.arange(t, device=padded.device)[None, :] < lengths.to(padded.device)[:, None]
    return padded[mask]


def _lengths_from(padded: "torch.Tensor", lengths_or_cu_seqlens: "torch.Tensor") -> "torch.Tensor":
    """Per-sequence lengths from either lengths ``[B]`` or offsets ``[B+1]`` (told apart by size)."""
    import torch

    if padded.ndim < 2:
        raise ValueError(f"unpad: padded must be [B, T, ...], got shape {tuple(padded.shape)}")
    batch, t = padded.shape[0], padded.shape[1]
    x = torch.as_tensor(lengths_or_cu_seqlens)
    if x.ndim != 1 or x.numel() not in (batch, batch + 1):
        raise ValueError(
            f"unpad: expected lengths [B={batch}] or cu_seqlens [B+1={batch + 1}], got shape {tuple(x.shape)}"
        )
    if x.numel() == batch + 1:
        check_cu_seqlens(x, int(x[-1]), "unpad")
        x = x[1:] - x[:-1]
    lengths = _as_lengths(x, "unpad")
    if lengths.numel() and int(lengths.max()) > t:
        raise ValueError(f"unpad: a sequence of length {int(lengths.max())} exceeds the padded length T={t}")
    return lengths


def _check_seqs(seqs: Sequence["torch.Tensor"]) -> None:
    if len(seqs) == 0:
        raise ValueError("pack: needs at least one sequence")
    first = seqs[0]
    for i, s in enumerate(seqs):
        if s.ndim < 1:
            raise ValueError(f"pack: sequence {i} is a scalar; every sequence must be [L_i, ...]")
        if s.shape[1:] != first.shape[1:] or s.dtype != first.dtype or s.device != first.device:
            raise ValueError(
                f"pack: sequence {i} is {s.dtype} {tuple(s.shape)} on {s.device}, but sequence 0 is "
                f"{first.dtype} {tuple(first.shape)} on {first.device}; trailing shape, dtype and device must match"
            )


def partition_microbatches_ref(lengths: "torch.Tensor | Sequence[int]", token_budget: int) -> list[list[int]]:
    """Reference for :func:`partition_microbatches` (pure Python).

    Algorithm (deterministic): a sequence longer than the budget is a micro-batch of its own.
    The others go, longest first (ties: lower index first), into ``k`` bins, each to the
    least-loaded bin that still fits (ties: lower bin); ``k`` starts at the lower bound
    ``ceil(tokens / budget)`` and grows until every sequence fits. First-fit-decreasing is the
    fallback if that has not succeeded by the bin count FFD needs. Bins are then sorted by
    their smallest sequence index, each bin's indices ascending.
    """
    if token_budget < 1:
        raise ValueError(f"partition_microbatches: token_budget must be >= 1, got {token_budget}")
    lens = [int(v) for v in _as_lengths(lengths, "partition_microbatches").tolist()]
    oversized = [[i] for i, n in enumerate(lens) if n > token_budget]
    fitting = sorted((i for i, n in enumerate(lens) if n <= token_budget), key=lambda i: (-lens[i], i))
    bins: list[list[int]] = []
    if fitting:
        ffd = _first_fit_decreasing(fitting, lens, token_budget)
        lower = max(1, -(-sum(lens[i] for i in fitting) // token_budget))
        for k in range(lower, len(ffd) + 1):
            placed = _least_loaded(fitting, lens, token_budget, k)
            if placed is not None:
                bins = placed
                break
        else:  # least-loaded placement can fail where first-fit-decreasing succeeds
            bins = ffd
    result = [sorted(b) for b in bins if b] + oversized
    result.sort(key=lambda b: b[0])
    return result


def _least_loaded(order: list[int], lens: list[int], budget: int, k: int) -> list[list[int]] | None:
    loads = [0] * k
    bins: list[list[int]] = [[] for _ in range(k)]
    for i in order:
        best = -1
        for b in range(k):
            if loads[b] + lens[i] <= budget and (best < 0 or loads[b] < loads[best]):
                best = b
        if best < 0:
            return None
        loads[best] += lens[i]
        bins[best].append(i)
    return bins


def _first_fit_decreasing(order: list[int], lens: list[int], budget: int) -> list[list[int]]:
    loads: list[int] = []
    bins: list[list[int]] = []
    for i in order:
        for b in range(len(bins)):
            if loads[b] + lens[i] <= budget:
                loads[b] += lens[i]
                bins[b].append(i)
                break
        else:
            loads.append(lens[i])
            bins.append([i])
    return bins


# --------------------------------------------------------------------------- public ops


def pack_lengths(lengths: "torch.Tensor | Sequence[int]") -> PackedLayout:
    """Layout of a packed batch from its sequence lengths.

    Args:
        lengths: int ``[B]`` (tensor or list), each ``>= 0``.

    Returns:
        :class:`PackedLayout` (``cu_seqlens`` int32 ``[B+1]``, ``position_ids`` int64 ``[total]``,
        ``seq_ids`` int32 ``[total]``, ``max_seqlen``), on ``lengths``' device.
    """
    lengths = _as_lengths(lengths, "pack_lengths")
    if _path("pack_lengths", lengths.device.type) == "cpp":
        cu, pos, seq, max_len = _ext().pack_lengths(lengths)
        return PackedLayout(cu, pos, seq, int(max_len))
    return pack_lengths_torch(lengths)


def pack(seqs: Sequence["torch.Tensor"]) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Concatenate variable-length sequences into one flat stream.

    Args:
        seqs: ``B >= 1`` tensors ``[L_i, ...]`` with equal trailing shape, dtype and device
            (``L_i = 0`` allowed).

    Returns:
        ``(flat [sum L_i, ...], cu_seqlens int32 [B+1])``. Differentiable (the C++ path is used
        only when no input requires grad).
    """
    _check_seqs(seqs)
    device = seqs[0].device
    if _path("pack", device.type) == "cpp" and not any(s.requires_grad for s in seqs):
        flat, cu = _ext().pack(list(seqs))
        return flat, cu
    return pack_torch(seqs)


def unpack(flat: "torch.Tensor", cu_seqlens: "torch.Tensor") -> list["torch.Tensor"]:
    """Split a packed stream back into its sequences (views of ``flat``, no copy).

    Args:
        flat: ``[total, ...]``.
        cu_seqlens: int32 ``[B+1]``.

    Returns:
        ``B`` tensors ``[L_i, ...]``.
    """
    if _path("unpack", flat.device.type) == "cpp":
        check_cu_seqlens(cu_seqlens, flat.shape[0], "unpack")
        return list(_ext().unpack(flat, cu_seqlens))
    return unpack_torch(flat, cu_seqlens)


def pad_packed(flat: "torch.Tensor", cu_seqlens: "torch.Tensor", pad_value: float = 0) -> "torch.Tensor":
    """Right-pad a packed stream to ``[B, Tmax, ...]``.

    Args:
        flat: ``[total, ...]`` any dtype.
        cu_seqlens: int32 ``[B+1]``.
        pad_value: Fill for positions past each sequence's end.

    Returns:
        ``[B, Tmax, ...]``, ``Tmax = max L_i``; differentiable w.r.t. ``flat``.
    """
    check_cu_seqlens(cu_seqlens, flat.shape[0], "pad_packed")
    if _path("pad_packed", flat.device.type) == "cpp":
        if flat.requires_grad:
            return _autograd().pad_packed.apply(flat, cu_seqlens.to(flat.device), pad_value)
        return _ext().pad_packed(flat, cu_seqlens.to(flat.device), float(pad_value))
    return pad_packed_torch(flat, cu_seqlens, pad_value)


def unpad(padded: "torch.Tensor", lengths_or_cu_seqlens: "torch.Tensor | Sequence[int]") -> "torch.Tensor":
    """Drop the padding of a right-padded batch.

    Args:
        padded: ``[B, T, ...]``.
        lengths_or_cu_seqlens: Lengths ``[B]`` or offsets ``[B+1]`` (told apart by size).

    Returns:
        ``[sum L_i, ...]`` in packed order; differentiable w.r.t. ``padded``.
    """
    import torch

    lengths = _lengths_from(padded, lengths_or_cu_seqlens)
    if _path("unpad", padded.device.type) == "cpp":
        cu = torch.zeros(lengths.numel() + 1, dtype=torch.int32)
        torch.cumsum(lengths, 0, out=cu[1:])
        cu = cu.to(padded.device)
        if padded.requires_grad:
            return _autograd().unpad.apply(padded, cu)
        return _ext().unpad(padded, cu)
    return unpad_torch(padded, lengths)


def partition_microbatches(lengths: "torch.Tensor | Sequence[int]", token_budget: int) -> list[list[int]]:
    """Balanced partition of sequences into micro-batches of at most ``token_budget`` tokens.

    Minimises the number of micro-batches (starting from the lower bound ``ceil(total/budget)``)
    and balances their token counts; a sequence longer than the budget gets its own
    micro-batch. Deterministic. See :func:`partition_microbatches_ref` for the algorithm.

    Args:
        lengths: int ``[B]`` sequence lengths.
        token_budget: Maximum tokens per micro-batch (``>= 1``).

    Returns:
        Lists of sequence indices (ascending within a micro-batch, micro-batches ordered by
        their first index); every index appears exactly once.
    """
    if token_budget < 1:
        raise ValueError(f"partition_microbatches: token_budget must be >= 1, got {token_budget}")
    lens = _as_lengths(lengths, "partition_microbatches").to("cpu")
    if _path("partition_microbatches", "cpu") == "cpp":
        return [list(b) for b in _ext().partition_microbatches(lens, int(token_budget))]
    return partition_microbatches_ref(lens, token_budget)


def partition_shared_prompts(lengths: Sequence[int], groups: Sequence[int], shared: Sequence[int],
                             token_budget: int) -> list[list[int]]:
    """Micro-batches for a forward that encodes a group's shared prompt once per micro-batch.

    Rows with the same ``groups[i] >= 0`` start with the same ``shared[i]`` tokens (a GRPO
    group's prompt), which such a forward encodes once for all of them in a micro-batch, so
    a micro-batch costs, per group it holds, the prompt once plus each member's remainder.
    :func:`partition_microbatches` counts every row in full and balances rows across
    micro-batches, which spreads a group over all of them: each then encodes the prompt again
    (two groups of 8 rows in two micro-batches: four prompt encodings instead of two). Here a group's rows stay together: a group is one unit costing
    ``shared + sum(length - shared)``, cut in order into consecutive chunks of at most
    ``token_budget`` (each chunk pays the prompt again) only when it does not fit; units (and
    rows of no group, ``groups[i] < 0``, in full) are then partitioned by
    :func:`partition_microbatches` on those costs.

    Args:
        lengths: ``B`` stream tokens per row.
        groups: ``B`` group ids (``-1``: the row shares nothing).
        shared: ``B`` prompt tokens each row shares with its group (read for grouped rows).
        token_budget: Maximum cost per micro-batch (``>= 1``).

    Returns:
        Lists of row indices (ascending within a micro-batch, micro-batches ordered by their
        first index); every index appears exactly once. Deterministic.
    """
    if token_budget < 1:
        raise ValueError(f"partition_shared_prompts: token_budget must be >= 1, got {token_budget}")
    if not len(lengths) == len(groups) == len(shared):
        raise ValueError(f"partition_shared_prompts: {len(lengths)} lengths, {len(groups)} groups and "
                         f"{len(shared)} shared lengths; one of each per row")
    units: list[list[int]] = []  # a group's rows, or one row of no group; in first-row order
    unit_of: dict[int, int] = {}
    for i, group in enumerate(groups):
        if group < 0:
            units.append([i])
            continue
        if group not in unit_of:
            unit_of[group] = len(units)
            units.append([])
        units[unit_of[group]].append(i)
    costed: list[tuple[list[int], int]] = []  # (rows, cost)
    for rows in units:
        if len(rows) == 1:  # no group, or a group of one: encoded in full
            costed.append((rows, int(lengths[rows[0]])))
            continue
        prompt = min(int(shared[i]) for i in rows)
        chunk: list[int] = []
        total = prompt
        for i in rows:
            extra = int(lengths[i]) - prompt
            if chunk and total + extra > token_budget:
                costed.append((chunk, total))
                chunk, total = [], prompt
            chunk.append(i)
            total += extra
        costed.append((chunk, total))
    bins = partition_microbatches([cost for _, cost in costed], token_budget)
    result = [sorted(i for unit in b for i in costed[unit][0]) for b in bins]
    result.sort(key=lambda b: b[0])
    return result


# --------------------------------------------------------------------------- autograd for the C++ path


@functools.lru_cache(maxsize=None)
def _autograd() -> SimpleNamespace:
    """autograd.Functions around the C++ pad / unpad (built on first use: no import-time torch)."""
    import torch

    class PadPacked(torch.autograd.Function):
        @staticmethod
        def forward(ctx, flat, cu_seqlens, pad_value):  # type: ignore[override]
            ctx.save_for_backward(cu_seqlens)
            return _ext().pad_packed(flat, cu_seqlens, float(pad_value))

        @staticmethod
        def backward(ctx, grad):  # type: ignore[override]
            (cu,) = ctx.saved_tensors
            return _ext().unpad(grad.contiguous(), cu), None, None

    class Unpad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, padded, cu_seqlens):  # type: ignore[override]
            ctx.save_for_backward(cu_seqlens)
            ctx.padded_len = padded.shape[1]
            return _ext().unpad(padded, cu_seqlens)

        @staticmethod
        def backward(ctx, grad):  # type: ignore[override]
            (cu,) = ctx.saved_tensors
            out = _ext().pad_packed(grad.contiguous(), cu, 0.0)
            if out.shape[1] < ctx.padded_len:  # the padded input was longer than its longest sequence
                extra = out.new_zeros((out.shape[0], ctx.padded_len - out.shape[1], *out.shape[2:]))
                out = torch.cat([out, extra], dim=1)
            return out, None

    return SimpleNamespace(pad_packed=PadPacked, unpad=Unpad)
