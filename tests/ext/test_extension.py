"""The C++ extension agent_lightning._C against the torch references, op by op.

Skipped as a whole when the extension is not built (``ALIGHTNING_BUILD_EXT=0``).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

C = pytest.importorskip("agent_lightning._C", reason="agent_lightning._C is not built (pure-torch install)")

from agent_lightning.ops import dispatch, packing, segments  # noqa: E402

lengths_st = st.lists(st.one_of(st.integers(0, 2), st.integers(0, 70)), min_size=1, max_size=16)
DTYPES = [torch.int64, torch.bool, torch.float32, torch.int32, torch.float64, torch.bfloat16, torch.uint8]


def random_tensor(shape, dtype, g):
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) < 0.5
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    return torch.randint(0, 100, shape, generator=g).to(dtype)


def test_flags_are_bools():
    assert isinstance(C.cuda_enabled, bool) and isinstance(C.openmp_enabled, bool)


@settings(max_examples=50, deadline=None)
@given(lengths=lengths_st)
def test_pack_lengths(lengths):
    got = C.pack_lengths(torch.tensor(lengths))
    want = packing.pack_lengths_torch(torch.tensor(lengths))
    for a, b in zip(got[:3], want[:3]):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert got[3] == want.max_seqlen


@settings(max_examples=50, deadline=None)
@given(lengths=lengths_st, seed=st.integers(0, 2**16), dtype=st.sampled_from(DTYPES),
       trailing=st.sampled_from([(), (1,), (3,), (2, 3), (5, 7)]), pad=st.sampled_from([0, 1, -3]))
def test_pack_unpack_pad_unpad(lengths, seed, dtype, trailing, pad):
    if dtype in (torch.uint8, torch.bool):
        pad = abs(pad) % 2 if dtype == torch.bool else abs(pad)  # representable in the dtype
    g = torch.Generator().manual_seed(seed)
    seqs = [random_tensor((n, *trailing), dtype, g) for n in lengths]
    flat, cu = C.pack(seqs)
    flat_ref, cu_ref = packing.pack_torch(seqs)
    assert torch.equal(flat, flat_ref) and torch.equal(cu, cu_ref) and flat.dtype == dtype
    for a, b in zip(C.unpack(flat, cu), packing.unpack_torch(flat_ref, cu_ref)):
        assert torch.equal(a, b)
    padded = C.pad_packed(flat, cu, float(pad))
    padded_ref = packing.pad_packed_torch(flat_ref, cu_ref, pad)
    assert padded.dtype == dtype and torch.equal(padded, padded_ref)
    assert torch.equal(C.unpad(padded, cu), packing.unpad_torch(padded_ref, cu_ref))


def test_non_contiguous_inputs():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(40, 6, generator=g)
    seqs = [base[:11, ::2], base[11:12, 1::2], base[20:40:2, :3]]
    flat, cu = C.pack(seqs)
    assert torch.equal(flat, torch.cat([s.contiguous() for s in seqs]))
    padded = packing.pad_packed_torch(flat, cu).transpose(0, 1).contiguous().transpose(0, 1)  # strided [B, T, 3]
    assert not padded.is_contiguous()
    assert torch.equal(C.unpad(padded, cu), flat)
    assert torch.equal(C.pad_packed(flat.t().contiguous().t(), cu, 0.0), packing.pad_packed_torch(flat, cu))


@settings(max_examples=80, deadline=None)
@given(lengths=st.lists(st.integers(0, 90), min_size=1, max_size=50), budget=st.integers(1, 200))
def test_partition_microbatches(lengths, budget):
    assert C.partition_microbatches(torch.tensor(lengths), budget) == packing.partition_microbatches_ref(
        lengths, budget
    )


@settings(max_examples=50, deadline=None)
@given(lengths=lengths_st, seed=st.integers(0, 2**16), use_mask=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]))
def test_segment_reductions(lengths, seed, use_mask, dtype):
    g = torch.Generator().manual_seed(seed)
    cu = packing.pack_lengths_torch(torch.tensor(lengths)).cu_seqlens
    values = torch.randn(sum(lengths), generator=g).to(dtype)
    mask = torch.rand(sum(lengths), generator=g) < 0.5
    m = mask if use_mask else None
    tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 1e-2, torch.float16: 1e-3}[dtype]
    got = C.segment_sum(values, cu)
    torch.testing.assert_close(got, segments.segment_sum_torch(values, cu), rtol=tol, atol=tol)
    mean, counts = C.segment_mean(values, cu, m)
    torch.testing.assert_close(mean, segments.segment_mean_torch(values, cu, m), rtol=tol, atol=tol)
    want_counts = segments.segment_count_torch(mask, cu) if use_mask else torch.tensor(lengths)
    assert torch.equal(counts, want_counts)
    assert torch.equal(C.segment_count(mask, cu), segments.segment_count_torch(mask, cu))


def gae_loop(rewards, values, mask, lengths, gamma, lam):
    """Per-timestep reference written from the spec: skip masked tokens, reset per sequence."""
    adv = [0.0] * len(rewards)
    ret = [0.0] * len(rewards)
    start = 0
    for n in lengths:
        next_v, next_a = 0.0, 0.0
        for t in range(start + n - 1, start - 1, -1):
            if not mask[t]:
                continue
            delta = rewards[t] + gamma * next_v - values[t]
            a = delta + gamma * lam * next_a
            adv[t], ret[t] = a, a + values[t]
            next_v, next_a = values[t], a
        start += n
    return torch.tensor(adv, dtype=torch.float64), torch.tensor(ret, dtype=torch.float64)


@settings(max_examples=50, deadline=None)
@given(lengths=lengths_st, seed=st.integers(0, 2**16), gamma=st.sampled_from([1.0, 0.99, 0.5]),
       lam=st.sampled_from([1.0, 0.95, 0.0]))
def test_gae_packed(lengths, seed, gamma, lam):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    rewards = torch.randn(total, generator=g)
    values = torch.randn(total, generator=g)
    mask = torch.rand(total, generator=g) < 0.7
    cu = packing.pack_lengths_torch(torch.tensor(lengths)).cu_seqlens
    adv, ret = C.gae_packed(rewards, values, mask, cu, gamma, lam)
    assert adv.dtype == ret.dtype == torch.float32 and adv.shape == (total,)
    want_adv, want_ret = gae_loop(rewards.double().tolist(), values.double().tolist(), mask.tolist(), lengths,
                                  gamma, lam)
    torch.testing.assert_close(adv.double(), want_adv, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ret.double(), want_ret, rtol=1e-5, atol=1e-5)
    assert bool((adv[~mask] == 0).all()) and bool((ret[~mask] == 0).all())


def test_gae_packed_rejects_bad_inputs():
    cu = torch.tensor([0, 2, 4], dtype=torch.int32)
    f = torch.zeros(4)
    m = torch.ones(4, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="gae_packed: rewards and values must be float32"):
        C.gae_packed(f.double(), f, m, cu, 1.0, 1.0)
    with pytest.raises(RuntimeError, match="gae_packed: mask must be bool"):
        C.gae_packed(f, f, m.float(), cu, 1.0, 1.0)
    with pytest.raises(RuntimeError, match=r"cu_seqlens\[-1\]=4 but the packed tensor has 5 rows"):
        C.gae_packed(torch.zeros(5), torch.zeros(5), torch.ones(5, dtype=torch.bool), cu, 1.0, 1.0)


def test_results_do_not_depend_on_thread_count():
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(0, 600, (64,), generator=g)
    cu = packing.pack_lengths_torch(lengths).cu_seqlens
    values = torch.randn(int(lengths.sum()), generator=g)
    mask = torch.rand(values.numel(), generator=g) < 0.5
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append((C.segment_sum(values, cu), C.gae_packed(values, values, mask, cu, 0.9, 0.9)[0],
                         C.pad_packed(values, cu, 0.0)))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_dispatch_reaches_the_extension(monkeypatch):
    monkeypatch.setenv("ALIGHTNING_OPS", "cpp")
    calls = []
    real = C.segment_sum
    monkeypatch.setattr(C, "segment_sum", lambda *a: calls.append(1) or real(*a))
    from agent_lightning.ops import segment_sum

    values = torch.randn(5, requires_grad=True)
    out = segment_sum(values, torch.tensor([0, 2, 5], dtype=torch.int32))
    out.backward(torch.tensor([1.0, 2.0]))
    assert calls and values.grad.tolist() == [1.0, 1.0, 2.0, 2.0, 2.0]


def test_forcing_cpp_on_cuda_without_cuda_kernels_is_an_ops_error(monkeypatch):
    if C.cuda_enabled:
        pytest.skip("the extension has CUDA kernels")
    monkeypatch.setenv("ALIGHTNING_OPS", "cpp")
    with pytest.raises(dispatch.OpsUnavailableError, match="without CUDA"):
        dispatch.select("pad_packed", "cuda", implemented=("cpp",))
