"""Segment reductions (agent_lightning.ops.segments) against per-sequence Python loops."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_lightning.ops import segment_count, segment_mean, segment_sum
from agent_lightning.ops import segments as seg
from agent_lightning.ops.packing import pack_lengths

lengths_st = st.lists(st.one_of(st.integers(0, 2), st.integers(0, 50)), min_size=1, max_size=10)


def loop_reductions(values, mask, lengths):
    sums, means, counts = [], [], []
    start = 0
    for n in lengths:
        v = values[start : start + n].double()
        m = mask[start : start + n] if mask is not None else torch.ones(n, dtype=torch.bool)
        sums.append(float(v.sum()))
        counts.append(int(m.sum()))
        means.append(float(v[m].sum() / m.sum()) if m.any() else 0.0)
        start += n
    return torch.tensor(sums, dtype=torch.float64), torch.tensor(means, dtype=torch.float64), torch.tensor(counts)


@settings(max_examples=60, deadline=None)
@given(lengths=lengths_st, seed=st.integers(0, 2**16), use_mask=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_reductions_match_loops(lengths, seed, use_mask, dtype):
    g = torch.Generator().manual_seed(seed)
    cu = pack_lengths(torch.tensor(lengths)).cu_seqlens
    total = sum(lengths)
    values = torch.randn(total, generator=g).to(dtype)
    mask = (torch.rand(total, generator=g) < 0.6) if use_mask else None
    sums, means, counts = loop_reductions(values, mask, lengths)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for fn in (segment_sum, seg.segment_sum_torch):
        out = fn(values, cu)
        assert out.dtype == dtype and out.shape == (len(lengths),)
        torch.testing.assert_close(out.double(), sums, **tol)
    for fn in (segment_mean, seg.segment_mean_torch):
        out = fn(values, cu, mask)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), means, **tol)
    if mask is not None:
        for fn in (segment_count, seg.segment_count_torch):
            out = fn(mask, cu)
            assert out.dtype == torch.int64 and out.tolist() == counts.tolist()


def test_masked_out_nan_is_ignored():
    values = torch.tensor([1.0, float("nan"), 3.0, float("inf")], requires_grad=True)
    mask = torch.tensor([True, False, True, False])
    cu = torch.tensor([0, 2, 4], dtype=torch.int32)
    for fn in (segment_mean, seg.segment_mean_torch):
        out = fn(values, cu, mask)
        assert out.tolist() == [1.0, 3.0]
        (grad,) = torch.autograd.grad(out.sum(), values)
        assert grad.tolist() == [1.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize("fn_name", ["dispatched", "torch"])
def test_gradients(fn_name):
    g = torch.Generator().manual_seed(0)
    lengths = [3, 0, 1, 7, 2]
    cu = pack_lengths(torch.tensor(lengths)).cu_seqlens
    values = torch.randn(sum(lengths), generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(sum(lengths), generator=g) < 0.5
    s = segment_sum if fn_name == "dispatched" else seg.segment_sum_torch
    m = segment_mean if fn_name == "dispatched" else seg.segment_mean_torch
    torch.autograd.gradcheck(lambda v: s(v, cu), (values,))
    torch.autograd.gradcheck(lambda v: m(v, cu, mask), (values,))
    torch.autograd.gradcheck(lambda v: m(v, cu, None), (values,))


def test_half_precision_accumulates_in_float32():
    values = torch.full((4096,), 0.1, dtype=torch.bfloat16)
    cu = torch.tensor([0, 4096], dtype=torch.int32)
    want = float(values.float().sum())
    for fn in (segment_sum, seg.segment_sum_torch):
        # bf16 accumulation would stall near 32; float32 accumulation lands within bf16 rounding.
        assert abs(float(fn(values, cu)) - want) / want < 1e-2


def test_errors():
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    with pytest.raises(ValueError, match="total=4"):
        segment_sum(torch.zeros(4), cu)
    with pytest.raises(TypeError, match="floating point"):
        segment_sum(torch.zeros(5, dtype=torch.int64), cu)
    with pytest.raises(ValueError, match="mask has 4 tokens"):
        segment_mean(torch.zeros(5), cu, torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        segment_count(torch.ones(5), cu)
