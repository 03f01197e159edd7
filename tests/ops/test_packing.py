"""Packing ops (agent_lightning.ops.packing): properties of the reference and of the dispatched op.

Runs with or without the C++ extension: the public ops dispatch to whatever is available,
and the ``*_torch`` references are tested against plain Python loops.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_lightning.ops import packing
from agent_lightning.ops.packing import (
    pack,
    pack_lengths,
    pad_packed,
    partition_microbatches,
    partition_microbatches_ref,
    unpack,
    unpad,
)

# Lengths of sequences in a packed batch: 1 and 0 (an empty observation) on purpose.
lengths_st = st.lists(st.one_of(st.integers(0, 2), st.integers(0, 40)), min_size=1, max_size=12)

FIELD_DTYPES = {
    "token_ids": torch.int64,
    "policy_mask": torch.bool,
    "sample_logprobs": torch.float32,
    "advantages": torch.float32,
    "turn_index": torch.int32,
}


def random_field(n: int, dtype: torch.dtype, g: torch.Generator, trailing: tuple[int, ...] = ()) -> torch.Tensor:
    shape = (n, *trailing)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) < 0.5
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    return torch.randint(-1000, 1000, shape, generator=g).to(dtype)


@settings(max_examples=60, deadline=None)
@given(lengths=lengths_st, seed=st.integers(0, 2**16))
def test_pack_lengths_matches_python_loop(lengths, seed):
    layout = pack_lengths(torch.tensor(lengths, dtype=torch.int64))
    cu, pos, seq = [0], [], []
    for b, n in enumerate(lengths):
        cu.append(cu[-1] + n)
        pos += list(range(n))
        seq += [b] * n
    assert layout.cu_seqlens.dtype == torch.int32 and layout.cu_seqlens.tolist() == cu
    assert layout.position_ids.dtype == torch.int64 and layout.position_ids.tolist() == pos
    assert layout.seq_ids.dtype == torch.int32 and layout.seq_ids.tolist() == seq
    assert layout.max_seqlen == max(lengths)
    ref = packing.pack_lengths_torch(torch.tensor(lengths))
    for a, b in zip(layout[:3], ref[:3]):
        assert torch.equal(a, b)


@settings(max_examples=60, deadline=None)
@given(lengths=lengths_st, seed=st.integers(0, 2**16), field=st.sampled_from(sorted(FIELD_DTYPES)))
def test_pack_unpack_round_trip(lengths, seed, field):
    g = torch.Generator().manual_seed(seed)
    seqs = [random_field(n, FIELD_DTYPES[field], g) for n in lengths]
    flat, cu = pack(seqs)
    assert flat.dtype == FIELD_DTYPES[field] and flat.shape == (sum(lengths),)
    assert cu.dtype == torch.int32 and cu.tolist() == pack_lengths(torch.tensor(lengths)).cu_seqlens.tolist()
    back = unpack(flat, cu)
    assert len(back) == len(seqs)
    for a, b in zip(back, seqs):
        assert a.dtype == b.dtype and torch.equal(a, b)


@settings(max_examples=60, deadline=None)
@given(
    lengths=lengths_st,
    seed=st.integers(0, 2**16),
    field=st.sampled_from(sorted(FIELD_DTYPES)),
    trailing=st.sampled_from([(), (3,), (2, 5)]),
    extra=st.integers(0, 3),
)
def test_pad_unpad_round_trip(lengths, seed, field, trailing, extra):
    g = torch.Generator().manual_seed(seed)
    dtype = FIELD_DTYPES[field]
    seqs = [random_field(n, dtype, g, trailing) for n in lengths]
    flat, cu = pack(seqs)
    pad_value = 1 if dtype == torch.bool else -7
    padded = pad_packed(flat, cu, pad_value=pad_value)
    assert padded.shape == (len(lengths), max(lengths), *trailing) and padded.dtype == dtype
    for b, s in enumerate(seqs):
        assert torch.equal(padded[b, : len(s)], s)
        assert bool((padded[b, len(s) :] == pad_value).all())
    assert torch.equal(unpad(padded, cu), flat)
    assert torch.equal(unpad(padded, torch.tensor(lengths)), flat)
    # A batch padded further than its longest sequence unpads the same.
    wider = torch.cat([padded, padded.new_zeros((len(lengths), extra, *trailing))], dim=1)
    assert torch.equal(unpad(wider, cu), flat)


def test_pack_accepts_views_and_keeps_grad():
    base = torch.randn(6, 4, requires_grad=True)
    seqs = [base[:, 0], base[:3, 1], base[4:, 2]]  # strided views
    flat, cu = pack(seqs)
    assert torch.equal(flat, torch.cat([s.detach() for s in seqs]))
    flat.sum().backward()
    assert base.grad[:, 0].eq(1).all() and base.grad[:, 3].eq(0).all() and base.grad[:3, 1].eq(1).all()


def test_pad_unpad_are_differentiable():
    flat = torch.randn(9, 2, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0, 4, 4, 9], dtype=torch.int32)
    torch.autograd.gradcheck(lambda x: pad_packed(x, cu, pad_value=0.5), (flat,))
    padded = torch.randn(3, 6, 2, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda x: unpad(x, cu), (padded,))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="at least one"):
        pack([])
    with pytest.raises(ValueError, match="sequence 1"):
        pack([torch.zeros(2, 3), torch.zeros(2, 4)])
    with pytest.raises(ValueError, match="lengths must be >= 0"):
        pack_lengths(torch.tensor([3, -1]))
    with pytest.raises(ValueError, match="total=5"):
        unpack(torch.zeros(5), torch.tensor([0, 2, 4], dtype=torch.int32))
    with pytest.raises(ValueError, match="non-decreasing"):
        pad_packed(torch.zeros(5), torch.tensor([0, 3, 2, 5], dtype=torch.int32))
    with pytest.raises(ValueError, match="exceeds the padded length"):
        unpad(torch.zeros(2, 3), torch.tensor([2, 4]))
    with pytest.raises(ValueError, match="lengths .B=2. or cu_seqlens"):
        unpad(torch.zeros(2, 3), torch.tensor([1, 1, 1, 1]))
    with pytest.raises(ValueError, match="token_budget"):
        partition_microbatches([1, 2], 0)


# --------------------------------------------------------------------------- micro-batching


def check_partition(lengths: list[int], budget: int, parts: list[list[int]]) -> None:
    flat = sorted(i for p in parts for i in p)
    assert flat == list(range(len(lengths))), "every sequence exactly once"
    for p in parts:
        tokens = sum(lengths[i] for i in p)
        assert tokens <= budget or len(p) == 1, f"micro-batch {p} has {tokens} > {budget} tokens"
        assert p == sorted(p)
    assert [p[0] for p in parts] == sorted(p[0] for p in parts)


def ffd_count(lengths: list[int], budget: int) -> int:
    loads: list[int] = []
    for n in sorted((n for n in lengths if n <= budget), reverse=True):
        for i, load in enumerate(loads):
            if load + n <= budget:
                loads[i] += n
                break
        else:
            loads.append(n)
    return len(loads)


@settings(max_examples=80, deadline=None)
@given(lengths=st.lists(st.integers(0, 60), min_size=1, max_size=40), budget=st.integers(1, 120))
def test_partition_properties(lengths, budget):
    parts = partition_microbatches(lengths, budget)
    check_partition(lengths, budget, parts)
    oversized = sum(n > budget for n in lengths)
    fitting_tokens = sum(n for n in lengths if n <= budget)
    n_fitting_parts = len(parts) - oversized
    # Never more micro-batches than first-fit-decreasing, never fewer than the volume bound.
    assert n_fitting_parts <= ffd_count(lengths, budget)
    if any(n <= budget for n in lengths):
        assert n_fitting_parts >= max(1, -(-fitting_tokens // budget))
    assert parts == partition_microbatches(list(lengths), budget)  # deterministic
    assert parts == partition_microbatches_ref(lengths, budget)


def test_partition_balances_and_meets_the_lower_bound():
    lengths = [300, 290, 280, 100, 90, 80, 70, 60, 50, 40, 30, 20, 10]
    parts = partition_microbatches(lengths, 512)
    loads = sorted(sum(lengths[i] for i in p) for p in parts)
    assert len(parts) == 3  # ceil(1420 / 512)
    assert loads[-1] - loads[0] <= 40, loads  # FFD would give 510 / 510 / 400


def test_partition_oversized_sequence_alone():
    parts = partition_microbatches([5, 700, 3, 600], 512)
    assert [700 > 512 and [1] in parts, [3] in parts] == [True, True]
    check_partition([5, 700, 3, 600], 512, parts)
    assert len(parts) == 3
