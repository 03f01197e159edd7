"""agent_lightning.ops.gae against hand values and a per-timestep float64 reference."""

import pytest
import torch

from _kernel_params import compile_kernels_for_cuda, impl_params
from agent_lightning.ops import dispatch, gae


def _reference(rewards, values, mask, cu_seqlens, gamma, lam):
    """Per-timestep float64 loop over each packed sequence, skipping masked positions."""
    rewards, values, mask = rewards.double().tolist(), values.double().tolist(), mask.bool().tolist()
    adv = [0.0] * len(rewards)
    ret = [0.0] * len(rewards)
    bounds = cu_seqlens.tolist()
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        next_value, next_adv = 0.0, 0.0
        for t in range(hi - 1, lo - 1, -1):
            if not mask[t]:
                continue
            delta = rewards[t] + gamma * next_value - values[t]
            next_adv = delta + gamma * lam * next_adv
            next_value = values[t]
            adv[t], ret[t] = next_adv, next_adv + values[t]
    return torch.tensor(adv, dtype=torch.float64), torch.tensor(ret, dtype=torch.float64)


def _run(impl, device, monkeypatch, *args, **kwargs):
    monkeypatch.setenv("ALIGHTNING_OPS", impl)
    moved = [a.to(device) for a in args]
    if kwargs.get("cu_seqlens") is not None:
        kwargs["cu_seqlens"] = kwargs["cu_seqlens"].to(device)
    adv, ret = gae(*moved, **kwargs)
    assert adv.dtype == ret.dtype == torch.float32
    assert adv.device.type == device and adv.shape == moved[0].shape
    return adv.cpu(), ret.cpu()


@pytest.mark.parametrize("impl_device", impl_params())
def test_hand_values_with_interior_zero(impl_device, monkeypatch):
    impl, device = impl_device
    # t=2: delta = 2 - 1 = 1, A = 1, R = 2.  t=1 is skipped.
    # t=0: next valid is t=2: delta = 1 + 0.5 * 1.0 - 0.5 = 1, A = 1 + 0.25 * 1 = 1.25, R = 1.75.
    rewards = torch.tensor([[1.0, 7.0, 2.0]])
    values = torch.tensor([[0.5, 9.0, 1.0]])
    mask = torch.tensor([[True, False, True]])
    adv, ret = _run(impl, device, monkeypatch, rewards, values, mask, gamma=0.5, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[1.25, 0.0, 1.0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.75, 0.0, 2.0]]))


@pytest.mark.parametrize("impl_device", impl_params())
def test_packed_resets_at_boundaries(impl_device, monkeypatch):
    impl, device = impl_device
    ones = torch.ones(3)
    cu = torch.tensor([0, 2, 3], dtype=torch.int32)
    adv, ret = _run(impl, device, monkeypatch, ones, torch.zeros(3), ones.bool(), gamma=1.0, lam=1.0, cu_seqlens=cu)
    torch.testing.assert_close(adv, torch.tensor([2.0, 1.0, 1.0]))  # without the reset: [3, 2, 1]
    torch.testing.assert_close(ret, torch.tensor([2.0, 1.0, 1.0]))


def _random_packed(gen, lengths, p_valid=0.7):
    total = sum(lengths)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    rewards = torch.randn(total, generator=gen)
    values = torch.randn(total, generator=gen)
    mask = torch.rand(total, generator=gen) < p_valid
    return rewards, values, mask, cu


@pytest.mark.parametrize("impl_device", impl_params())
@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (1.0, 1.0), (0.9, 0.0), (0.5, 1.0)])
def test_packed_random_against_reference(impl_device, gamma, lam, monkeypatch):
    impl, device = impl_device
    gen = torch.Generator().manual_seed(int(gamma * 100 + lam * 10))
    lengths = [0, 1, 37, 5, 130, 0, 64, 3]  # empty sequences, odd lengths, several scan blocks
    rewards, values, mask, cu = _random_packed(gen, lengths)
    mask[cu[3] : cu[4]] = False  # a fully masked sequence
    adv, ret = _run(impl, device, monkeypatch, rewards, values, mask, gamma=gamma, lam=lam, cu_seqlens=cu)
    exp_adv, exp_ret = _reference(rewards, values, mask, cu, gamma, lam)
    torch.testing.assert_close(adv.double(), exp_adv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ret.double(), exp_ret, atol=1e-5, rtol=1e-5)
    assert not torch.isnan(adv).any()


@pytest.mark.parametrize("impl_device", impl_params())
def test_padded_equals_reference_and_packed(impl_device, monkeypatch):
    impl, device = impl_device
    gen = torch.Generator().manual_seed(7)
    batch, length = 5, 77
    rewards = torch.randn(batch, length, generator=gen)
    values = torch.randn(batch, length, generator=gen)
    mask = torch.rand(batch, length, generator=gen) < 0.6
    mask[2] = False  # fully masked row
    mask[3, 50:] = False  # right padding
    adv, ret = _run(impl, device, monkeypatch, rewards, values, mask, gamma=0.97, lam=0.9)
    cu = torch.arange(batch + 1, dtype=torch.int32) * length
    exp_adv, exp_ret = _reference(rewards.flatten(), values.flatten(), mask.flatten(), cu, 0.97, 0.9)
    torch.testing.assert_close(adv.double(), exp_adv.view(batch, length), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ret.double(), exp_ret.view(batch, length), atol=1e-5, rtol=1e-5)
    assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()
    packed = _run(
        impl, device, monkeypatch, rewards.flatten(), values.flatten(), mask.flatten(), gamma=0.97, lam=0.9, cu_seqlens=cu
    )
    torch.testing.assert_close(packed[0].view(batch, length), adv)


@pytest.mark.parametrize("impl_device", impl_params())
def test_long_sequences_within_1e5(impl_device, monkeypatch):
    impl, device = impl_device
    gen = torch.Generator().manual_seed(3)
    rewards, values, mask, cu = _random_packed(gen, [2048, 1500, 999], p_valid=0.8)
    rewards *= 0.1  # realistic scale: per-token rewards mostly zero-ish, values O(1)
    adv, ret = _run(impl, device, monkeypatch, rewards, values, mask, gamma=0.99, lam=0.95, cu_seqlens=cu)
    exp_adv, exp_ret = _reference(rewards, values, mask, cu, 0.99, 0.95)
    torch.testing.assert_close(adv.double(), exp_adv, atol=1e-5, rtol=0)
    torch.testing.assert_close(ret.double(), exp_ret, atol=1e-5, rtol=0)


@pytest.mark.parametrize("impl_device", impl_params())
def test_whiten(impl_device, monkeypatch):
    impl, device = impl_device
    gen = torch.Generator().manual_seed(11)
    rewards, values, mask, cu = _random_packed(gen, [20, 31, 9])
    adv, _ = _run(impl, device, monkeypatch, rewards, values, mask, gamma=0.9, lam=0.9, cu_seqlens=cu, whiten=True)
    raw, _ = _reference(rewards, values, mask, cu, 0.9, 0.9)
    valid = raw[mask]
    expected = torch.zeros_like(raw)
    expected[mask] = (valid - valid.mean()) / (valid.var(correction=1) + 1e-8).sqrt()
    torch.testing.assert_close(adv.double(), expected, atol=1e-5, rtol=1e-5)
    assert (adv[~mask] == 0).all()


@pytest.mark.parametrize("impl_device", [p for p in impl_params() if p.values[0][0] == "triton"])
def test_triton_small_blocks_carry_across_blocks(impl_device):
    from agent_lightning.kernels.gae import gae_packed_triton

    _, device = impl_device
    gen = torch.Generator().manual_seed(13)
    rewards, values, mask, cu = _random_packed(gen, [50, 16, 0, 33, 17], p_valid=0.5)
    mask[10:40] = False  # a run of skipped positions longer than a block
    moved = [x.to(device) for x in (rewards, values, mask, cu)]
    adv, ret = gae_packed_triton(*moved, 0.95, 0.9, block=16)
    exp_adv, exp_ret = _reference(rewards, values, mask, cu, 0.95, 0.9)
    torch.testing.assert_close(adv.cpu().double(), exp_adv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ret.cpu().double(), exp_ret, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(dispatch.cpp_extension() is None, reason="agent_lightning._C is not built")
def test_cpp_extension_against_reference(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    rewards, values, mask, cu = _random_packed(gen, [0, 3, 300, 41, 1])
    adv, ret = _run("cpp", "cpu", monkeypatch, rewards, values, mask, gamma=0.99, lam=0.95, cu_seqlens=cu)
    exp_adv, exp_ret = _reference(rewards, values, mask, cu, 0.99, 0.95)
    torch.testing.assert_close(adv.double(), exp_adv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ret.double(), exp_ret, atol=1e-5, rtol=1e-5)


def test_bad_inputs_name_the_problem():
    x = torch.zeros(6)
    with pytest.raises(ValueError, match="same shape"):
        gae(x, torch.zeros(5), x.bool(), gamma=1.0, lam=1.0, cu_seqlens=torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="total=6"):
        gae(x, x, x.bool(), gamma=1.0, lam=1.0, cu_seqlens=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="non-decreasing"):
        gae(x, x, x.bool(), gamma=1.0, lam=1.0, cu_seqlens=torch.tensor([0, 4, 3, 6]))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        gae(x, x, x.bool(), gamma=1.0, lam=1.0)


def test_triton_kernel_compiles_for_cuda():
    compile_kernels_for_cuda("gae")
