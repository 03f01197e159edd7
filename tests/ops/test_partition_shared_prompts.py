"""Micro-batches that keep a group's shared prompt in one forward (ops.partition_shared_prompts)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_lightning import ops


def cost(part, lengths, groups, shared):
    """A micro-batch's tokens in a forward that encodes each group's prompt once."""
    prompts = {groups[i]: shared[i] for i in part if groups[i] >= 0}
    return sum(prompts.values()) + sum(lengths[i] - (shared[i] if groups[i] >= 0 else 0) for i in part)


def test_two_grpo_groups_with_a_long_prompt_fit_one_micro_batch():
    # Two groups of 8 episodes of a 1,600-token prompt and ~100 sampled tokens: 27k tokens counted
    # in full, 3.2k once each prompt is encoded once.
    lengths = [1600 + 90 + 3 * i for i in range(16)]
    groups, shared = [0] * 8 + [8] * 8, [1600] * 16
    assert ops.partition_shared_prompts(lengths, groups, shared, 16384) == [list(range(16))]
    # Counted in full, the balanced partition spreads both groups over two micro-batches: each
    # would encode both prompts again.
    full = ops.partition_microbatches(lengths, 16384)
    assert len(full) == 2 and all({groups[i] for i in part} == {0, 8} for part in full)


def test_a_group_larger_than_the_budget_is_cut_in_order_each_chunk_paying_the_prompt():
    lengths, groups, shared = [110] * 6, [0] * 6, [100] * 6
    parts = ops.partition_shared_prompts(lengths, groups, shared, 125)  # prompt 100 + at most 2 remainders of 10
    assert sorted(parts) == [[0, 1], [2, 3], [4, 5]]
    assert all(cost(p, lengths, groups, shared) <= 125 for p in parts)


def test_rows_without_a_group_are_partitioned_like_partition_microbatches():
    lengths = [5, 9, 3, 7, 8, 1]
    assert ops.partition_shared_prompts(lengths, [-1] * 6, [0] * 6, 12) == ops.partition_microbatches(lengths, 12)
    # A one-member group shares nothing and costs its full length.
    assert ops.partition_shared_prompts([50, 60], [0, 1], [40, 40], 60) == [[0], [1]]


def test_bad_input_names_the_culprit():
    with pytest.raises(ValueError, match="token_budget must be >= 1, got 0"):
        ops.partition_shared_prompts([1], [-1], [0], 0)
    with pytest.raises(ValueError, match="2 lengths, 1 groups and 2 shared lengths"):
        ops.partition_shared_prompts([1, 2], [-1], [0, 0], 8)


@st.composite
def grouped_rows(draw):
    rows = draw(st.integers(1, 24))
    groups, shared, lengths = [], [], []
    prompts: dict[int, int] = {}
    for i in range(rows):
        group = draw(st.sampled_from([-1, *sorted(prompts), i]))
        if group >= 0 and group not in prompts:
            prompts[group] = draw(st.integers(1, 40))
        groups.append(group)
        shared.append(prompts.get(group, 0))
        lengths.append(shared[-1] + draw(st.integers(1, 30)))
    return lengths, groups, shared, draw(st.integers(1, 120))


@settings(max_examples=200, deadline=None)
@given(grouped_rows())
def test_every_row_once_and_every_micro_batch_within_the_budget(case):
    lengths, groups, shared, budget = case
    parts = ops.partition_shared_prompts(lengths, groups, shared, budget)
    assert sorted(i for p in parts for i in p) == list(range(len(lengths)))
    assert all(p == sorted(p) for p in parts) and [p[0] for p in parts] == sorted(p[0] for p in parts)
    for p in parts:
        # Within the budget, unless the micro-batch is one row that alone exceeds it.
        assert cost(p, lengths, groups, shared) <= budget or len(p) == 1
    assert parts == ops.partition_shared_prompts(lengths, groups, shared, budget)  # deterministic
