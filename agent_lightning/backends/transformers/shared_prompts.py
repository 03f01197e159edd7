"""Training forwards that encode a prompt shared by several sequences once.

A GRPO (or RLOO, or any grouped) batch holds each prompt ``G`` times: the ``G`` sampled
episodes of a task start with the same prompt tokens and differ from their first sampled
token on. The packed training forward (:func:`modeling.final_hidden_states`) runs every
sequence in full, so the prompt's tokens go through every layer ``G`` times; with long
prompts (agent system prompts, demonstrations) that is most of the update's work.

:func:`share_prefixes` rewrites a packed batch as a stream of *segments*: each shared prompt
once (a root segment) and each sequence's remainder (its sampled tokens and whatever follows)
as a child segment whose tokens attend to the prompt's keys and causally to their own —
exactly the attention the full sequence gives them, at the same positions. Only attention
mixes tokens, so every hidden state equals the full sequence's (up to float rounding of the
batched attention) and gradients flow into the prompt's keys and values from every child.

Only tokens before a sequence's first policy token are shared: the policy tokens of every
sequence are computed in its own segment. ``index`` maps each position of the original
stream to its position in the shared stream, so the hidden state that predicts policy token
``t`` is ``hidden[index[t - 1]]`` — for a first sampled token that is the prompt's last
token, shared by the group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

if TYPE_CHECKING:
    import torch

MIN_SAVING = 0.1
"""Share only when it removes at least this fraction of the batch's tokens; below that the
per-batch layout work and the masked attention are not worth it."""


class SharedPrefixes(NamedTuple):
    """A packed batch with each shared prompt encoded once. ``T`` original tokens, ``T'``
    shared-stream tokens, ``S`` segments.

    Attributes:
        input_ids: int64 ``[T']`` the segments back to back.
        position_ids: int64 ``[T']`` each token's position in its original sequence (a child
            segment continues from its prompt's length).
        cu_seqlens: int32 ``[S+1]`` segment boundaries.
        parents: ``S`` ints: the segment whose tokens a segment also attends to (its shared
            prompt), ``-1`` for a root segment.
        index: int64 ``[T]`` the shared-stream position of every original stream position.
    """

    input_ids: "torch.Tensor"
    position_ids: "torch.Tensor"
    cu_seqlens: "torch.Tensor"
    parents: tuple[int, ...]
    index: "torch.Tensor"


def prompt_lengths(cu_seqlens: "torch.Tensor", policy_index: "torch.Tensor",
                   policy_cu_seqlens: "torch.Tensor") -> list[int]:
    """Per sequence, the number of tokens before its first policy token (its length if it has none).

    Args:
        cu_seqlens: int32 ``[B+1]`` sequence boundaries in the stream.
        policy_index: int64 ``[N]`` stream positions of the policy tokens.
        policy_cu_seqlens: int32 ``[B+1]`` each sequence's range in ``policy_index``.
    """
    cu, pcu = cu_seqlens.tolist(), policy_cu_seqlens.tolist()
    firsts = policy_index.tolist()
    return [(firsts[pcu[b]] - cu[b]) if pcu[b + 1] > pcu[b] else cu[b + 1] - cu[b] for b in range(len(cu) - 1)]


def prompt_groups(input_ids: "torch.Tensor", cu_seqlens: "torch.Tensor", prompts: Sequence[int]) -> list[int]:
    """Per sequence, its group: the first sequence whose prompt (the first ``prompts[b]``
    tokens) is the same, for every sequence of a prompt held by two or more; ``-1`` for the
    others, and for a sequence whose prompt is its whole length (no policy token).

    Args:
        input_ids: int64 ``[T]`` the packed stream (read on the CPU).
        cu_seqlens: int32 ``[B+1]`` sequence boundaries.
        prompts: ``B`` prompt lengths (:func:`prompt_lengths`).
    """
    cu = cu_seqlens.tolist()
    if len(prompts) != len(cu) - 1:
        raise ValueError(f"shared prompts: {len(prompts)} prompt lengths for {len(cu) - 1} sequences")
    ids = input_ids.tolist()
    groups: dict[tuple[int, ...], list[int]] = {}
    for b, length in enumerate(prompts):
        start, end = cu[b], cu[b + 1]
        if 0 < length < end - start:
            groups.setdefault(tuple(ids[start:start + length]), []).append(b)
    group_of = [-1] * len(prompts)
    for members in groups.values():
        if len(members) > 1:
            for b in members:
                group_of[b] = members[0]
    return group_of


def share_prefixes(input_ids: "torch.Tensor", cu_seqlens: "torch.Tensor", prompts: Sequence[int], *,
                   min_saving: float = MIN_SAVING) -> SharedPrefixes | None:
    """Group the sequences whose prompts (the first ``prompts[b]`` tokens) are identical and lay
    each group out as its prompt once plus every member's remainder.

    Args:
        input_ids: int64 ``[T]`` the packed stream (on any device; read on the CPU).
        cu_seqlens: int32 ``[B+1]`` sequence boundaries.
        prompts: ``B`` prompt lengths (:func:`prompt_lengths`); a sequence whose prompt is its
            whole length (no policy token) is never grouped.
        min_saving: Return ``None`` unless sharing removes at least this fraction of the ``T`` tokens.

    Returns:
        The shared layout (on ``input_ids``' device), or ``None`` when nothing worth sharing.
    """
    cu = cu_seqlens.tolist()
    group_of = {b: g for b, g in enumerate(prompt_groups(input_ids, cu_seqlens, prompts)) if g >= 0}
    saved = sum(prompts[b] for b in group_of if group_of[b] != b)
    if not group_of or saved < min_saving * max(1, cu[-1]):
        return None

    from agent_lightning.backends.transformers.segment_attention import concat_ranges
    from agent_lightning.ops import pack_lengths

    # Segments in stream order: a group's prompt just before its first member's remainder.
    seg_starts: list[int] = []  # where each segment's tokens are in the original stream
    sizes: list[int] = []
    parents: list[int] = []
    root_of: dict[int, int] = {}  # group leader -> its prompt's segment
    index_segments: list[int] = []  # each sequence's pieces, in order: the segment holding it...
    index_lengths: list[int] = []  # ...and its length

    def segment(start: int, size: int, parent: int) -> int:
        seg_starts.append(start)
        sizes.append(size)
        parents.append(parent)
        return len(sizes) - 1

    for b in range(len(cu) - 1):
        length = cu[b + 1] - cu[b]
        leader = group_of.get(b)
        if leader is None:
            index_segments.append(segment(cu[b], length, -1))
            index_lengths.append(length)
            continue
        if leader not in root_of:
            root_of[leader] = segment(cu[b], prompts[b], -1)
        index_segments += [root_of[leader], segment(cu[b] + prompts[b], length - prompts[b], root_of[leader])]
        index_lengths += [prompts[b], length - prompts[b]]
    device = input_ids.device
    bounds = pack_lengths(sizes).cu_seqlens  # int32 [S+1]
    offsets = bounds.tolist()
    source = concat_ranges(seg_starts, sizes).to(device)  # original position of each shared-stream token
    index = concat_ranges([offsets[g] for g in index_segments], index_lengths).to(device)
    positions = pack_lengths([cu[b + 1] - cu[b] for b in range(len(cu) - 1)]).position_ids.to(device)
    return SharedPrefixes(input_ids[source], positions[source], bounds.to(device), tuple(parents), index)


def policy_hidden_states(model: Any, batch: Any, device: Any, *, share: bool = True) -> "torch.Tensor":
    """The final hidden states that predict a packed batch's policy tokens, ``[N, H]`` in the
    model's dtype (differentiable), with shared prompts encoded once where the model allows.

    Args:
        model: A transformers causal LM or a peft wrapper.
        batch: ``agent_lightning.loop.batch.PackedBatch``.
        device: Where the forward runs.
        share: Use :func:`share_prefixes` (when the model's attention supports segment parents
            and sharing saves :data:`MIN_SAVING` of the tokens); ``False``: every sequence in full.
    """
    from agent_lightning.backends.transformers import modeling

    predictors = batch.policy_index.to(device) - 1
    layout = None
    if share and modeling.packed_attention_for(model, device):
        layout = share_prefixes(batch.input_ids, batch.cu_seqlens,
                                prompt_lengths(batch.cu_seqlens, batch.policy_index, batch.policy_cu_seqlens))
    if layout is None:
        hidden = modeling.final_hidden_states(model, batch.input_ids.to(device), batch.position_ids.to(device),
                                              batch.cu_seqlens.to(device))
        return hidden[predictors]
    hidden = modeling.final_hidden_states(model, layout.input_ids.to(device), layout.position_ids.to(device),
                                          layout.cu_seqlens.to(device), segment_parents=layout.parents)
    return hidden[layout.index.to(device)[predictors]]
