"""Attention over a packed row of segments where a segment may extend another (a shared prompt).

Segment ``s`` (``sizes[s]`` tokens of the packed row) attends to the tokens of its ancestors
(``parents[s]``, that one's parent, ... root first) in full and causally to its own: the
attention of the sequence ``ancestors + own`` restricted to the own tokens' queries. Used by
:func:`agent_lightning.backends.transformers.modeling.packed_sdpa_attention` when the forward
got ``segment_parents`` (:mod:`agent_lightning.backends.transformers.shared_prompts`).

Segments are grouped into buckets of similar (query, key) lengths; a bucket is one SDPA call
on its segments laid out ``[n, heads, max q, D]`` (queries) and ``[n, heads, max k, D]``
(ancestor keys then own keys) with a boolean mask. Layout and masks are built once per batch
(cached) and reused by every layer and by the backward pass's recomputation.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch

PADDING_BUDGET = 0.25
"""Padded attention work a bucket may add, as a fraction of its segments' own ``sum(q_i * k_i)``."""

MATH_MAX_SCORES = 1 << 18
"""On a CPU, a bucket of at most this many attention scores (``n * heads * q_len * k_len``) runs
as two matmuls and a softmax instead of SDPA, whose per-(segment, head) scheduling dominates
small buckets. Forward + backward of one layer, 2 threads, 4 heads of 16 (a GRPO step of the
quickstart-sized model: 16 prompts of 15 tokens, 128 replies of 8): SDPA 2.5 + 3.9 ms, matmuls
1.7 + 2.1 ms. At 128 x 4 x 12 x 32 (196k scores) matmuls still win (3.3 + 4.0 vs 4.8 + 7.8 ms);
at 786k they tie and at 5.4M SDPA is 1.4x faster (and keeps the scores out of memory)."""


class Bucket(NamedTuple):
    """One SDPA call: ``n`` segments, queries padded to ``q_len``, keys to ``k_len``."""

    query_rows: "torch.Tensor"
    """int64 ``[n * q_len]`` packed-row position of each padded query (padding: position 0)."""
    key_rows: "torch.Tensor"
    """int64 ``[n * k_len]`` packed-row position of each padded key (padding: position 0)."""
    real: "torch.Tensor"
    """int64 ``[M]`` which of the ``n * q_len`` padded queries are real..."""
    targets: "torch.Tensor"
    """int64 ``[M]`` ...and their packed-row positions."""
    mask: "torch.Tensor"
    """bool ``[n, 1, q_len, k_len]``: True where a query may attend."""
    n: int
    q_len: int
    k_len: int


def _ancestry(parents: tuple[int, ...]) -> list[list[int]]:
    """Per segment, its ancestors root first; raises on a parent that is not an earlier segment."""
    chains: list[list[int]] = []
    for s, p in enumerate(parents):
        if p >= s or p < -1:
            raise ValueError(f"segment_parents[{s}] = {p}: a parent must be an earlier segment (or -1)")
        chains.append([] if p < 0 else [*chains[p], p])
    return chains


def buckets_by_work(shapes: list[tuple[int, int]], budget: float = PADDING_BUDGET, small: int = 0) -> list[list[int]]:
    """Segment indices grouped for batched attention: sorted by key length, a bucket grows while
    ``n * max(q) * max(k)`` stays within ``(1 + budget) * sum(q_i * k_i)``, or within ``small``
    whatever its padding (empty segments are left out). ``shapes``: ``(query length, key
    length)`` per segment."""
    order = sorted((i for i, (q, _) in enumerate(shapes) if q), key=lambda i: (shapes[i][1], shapes[i][0]))
    buckets: list[list[int]] = []
    work = max_q = 0
    for i in order:
        q, k = shapes[i]
        if buckets:
            wider = max(max_q, q)
            padded = (len(buckets[-1]) + 1) * wider * k
            if padded <= (1 + budget) * (work + q * k) or padded <= small:
                buckets[-1].append(i)
                work, max_q = work + q * k, wider
                continue
        buckets.append([i])
        work, max_q = q * k, q
    return buckets


def concat_ranges(starts: list[int], lengths: list[int]) -> "torch.Tensor":
    """int64 ``[sum(lengths)]``: ``range(starts[0], starts[0] + lengths[0])``, then the next range..."""
    import torch

    from agent_lightning.ops import pack_lengths

    layout = pack_lengths(lengths)  # position_ids: the offset of each element inside its range
    return torch.tensor(starts, dtype=torch.long)[layout.seq_ids.long()] + layout.position_ids


@functools.lru_cache(maxsize=16)
def segment_layout(sizes: tuple[int, ...], parents: tuple[int, ...], window: int | None,
                   device: str, small: int = 0) -> list[Bucket]:
    """The buckets of a packed row of segments (see the module docstring).

    Args:
        sizes: Tokens per segment, in row order.
        parents: Per segment, the segment it extends, or ``-1``.
        window: Sliding window (a query sees keys fewer than ``window`` positions back), or ``None``.
        device: Where the index tensors and masks live.
        small: A bucket of at most this many padded ``(query, key)`` pairs may pad without limit
            (:func:`buckets_by_work`): fewer, larger calls where every call is cheap.
    """
    import torch

    if len(parents) != len(sizes):
        raise ValueError(f"segment_parents has {len(parents)} entries for {len(sizes)} segments")
    chains = _ancestry(parents)
    starts = [0]
    for n in sizes[:-1]:
        starts.append(starts[-1] + n)
    prior = [sum(sizes[a] for a in chain) for chain in chains]  # ancestor tokens per segment
    layout = []
    for members in buckets_by_work([(sizes[s], prior[s] + sizes[s]) for s in range(len(sizes))], small=small):
        n = len(members)
        q_sizes = torch.tensor([sizes[s] for s in members])
        k_sizes = torch.tensor([prior[s] + sizes[s] for s in members])
        q_len, k_len = int(q_sizes.max()), int(k_sizes.max())
        # Keys of a member: its ancestors' ranges, root first, then its own.
        ranges = [(starts[a], sizes[a]) for s in members for a in (*chains[s], s)]
        key_pos = concat_ranges([r[0] for r in ranges], [r[1] for r in ranges])
        query_pos = concat_ranges([starts[s] for s in members], q_sizes.tolist())
        q_valid = torch.arange(q_len)[None, :] < q_sizes[:, None]  # [n, q_len]
        k_valid = torch.arange(k_len)[None, :] < k_sizes[:, None]
        query_rows = torch.zeros(n, q_len, dtype=torch.long).masked_scatter_(q_valid, query_pos)
        key_rows = torch.zeros(n, k_len, dtype=torch.long).masked_scatter_(k_valid, key_pos)
        q_abs = torch.tensor([prior[s] for s in members])[:, None] + torch.arange(q_len)  # positions in the full sequence
        k_abs = torch.arange(k_len)[None, None, :]
        allowed = k_abs <= q_abs[:, :, None]  # [n, q_len, k_len]; a real query's keys are all real
        if window is not None:
            allowed &= q_abs[:, :, None] - k_abs < window
        allowed = torch.where(q_valid[:, :, None], allowed, k_abs == 0)  # padded queries: one key, no all -inf row
        layout.append(Bucket(query_rows.flatten().to(device), key_rows.flatten().to(device),
                             torch.nonzero(q_valid.flatten()).flatten().to(device), query_pos.to(device),
                             allowed.unsqueeze(1).to(device), n, q_len, k_len))
    return layout


def segment_sdpa(module: Any, query: "torch.Tensor", key: "torch.Tensor", value: "torch.Tensor",
                 sizes: list[int], parents: tuple[int, ...], scaling: float | None, dropout: float,
                 sliding_window: int | None, softcap: float | None) -> "torch.Tensor":
    """Attention of a packed row of segments with parents.

    Args:
        query: ``[1, H, T, D]``; key: ``[1, Hkv, T, D]``; value: ``[1, Hkv, T, Dv]``.
        sizes: Tokens per segment (sum ``T``); parents: see :func:`segment_layout`.
        softcap: Attention logit soft-cap (eager attention), or ``None`` (SDPA).

    Returns:
        ``[1, T, H, Dv]``.
    """
    import torch.nn.functional as F

    from agent_lightning.backends.transformers.softcap_attention import softcap_attention

    gqa = key.shape[1] != query.shape[1]
    q_all, k_all, v_all = (t[0].transpose(0, 1) for t in (query, key, value))  # [T, heads, D]
    out = query.new_empty(query.shape[2], query.shape[1], value.shape[3])
    matmul = query.device.type == "cpu" and not dropout and softcap is None
    # Buckets the matmul path takes anyway may pad freely: fewer calls (each one's ops cost more
    # than its arithmetic at these sizes) and fewer layouts to build.
    small = MATH_MAX_SCORES // query.shape[1] if matmul else 0
    for b in segment_layout(tuple(sizes), tuple(parents), sliding_window, str(query.device), small):
        q = q_all.index_select(0, b.query_rows).view(b.n, b.q_len, *q_all.shape[1:]).transpose(1, 2)
        k = k_all.index_select(0, b.key_rows).view(b.n, b.k_len, *k_all.shape[1:]).transpose(1, 2)
        v = v_all.index_select(0, b.key_rows).view(b.n, b.k_len, *v_all.shape[1:]).transpose(1, 2)
        if softcap is not None:
            o = softcap_attention(module, q, k, v, b.mask, scaling, dropout, softcap)  # [n, q, H, Dv]
        elif matmul and b.n * q.shape[1] * b.q_len * b.k_len <= MATH_MAX_SCORES:
            o = _matmul_attention(q, k, v, b.mask, scaling)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=b.mask, dropout_p=dropout, scale=scaling,
                                               enable_gqa=gqa).transpose(1, 2)
        o = o.reshape(b.n * b.q_len, o.shape[2], o.shape[3]).index_select(0, b.real)
        out = out.index_copy(0, b.targets, o)
    return out.unsqueeze(0)


def _matmul_attention(q: "torch.Tensor", k: "torch.Tensor", v: "torch.Tensor", mask: "torch.Tensor",
                      scaling: float | None) -> "torch.Tensor":
    """Masked attention as two batched matmuls and a softmax (small buckets on a CPU).

    ``q [n, H, q, D]``, ``k [n, Hkv, k, D]``, ``v [n, Hkv, k, Dv]`` (grouped-query heads share
    their key head), ``mask`` bool ``[n, 1, q, k]`` with at least one True per row
    -> ``[n, q, H, Dv]``.
    """
    import torch

    n, heads, q_len, dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    group = heads // kv_heads
    scores = torch.matmul(q.reshape(n, kv_heads, group * q_len, dim), k.transpose(2, 3))
    scores = scores.view(n, heads, q_len, k_len) * (scaling if scaling is not None else dim ** -0.5)
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    out = torch.matmul(probs.view(n, kv_heads, group * q_len, k_len), v)
    return out.view(n, heads, q_len, v.shape[3]).transpose(1, 2)
