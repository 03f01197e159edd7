"""agent_lightning.ops.kl_penalty against hand values and a float64 reference."""

import math

import pytest
import torch

from agent_lightning.ops import kl_penalty


def _reference(logp, ref, kind, clamp):
    logp, ref = logp.double(), ref.double()
    if kind == "k1":
        return logp - ref
    if kind == "k2":
        return 0.5 * (logp - ref) ** 2
    log_ratio = ref - logp
    if clamp is not None:
        log_ratio = log_ratio.clamp(-clamp, clamp)
    out = log_ratio.exp() - log_ratio - 1
    return out if clamp is None else out.clamp(-clamp, clamp)


def test_hand_values():
    logp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-2.0, -1.0])
    # log_ratio = ref - logp = [-1, 1]
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), torch.tensor([0.5, 0.5]))
    expected = torch.tensor([math.exp(-1) + 1 - 1, math.exp(1) - 1 - 1])
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), expected)


def test_k3_clamps_ratio_and_result():
    # log_ratio = 29 -> clamped to 10 -> exp(10) - 10 - 1 ~ 22015 -> clamped to 10.
    out = kl_penalty(torch.tensor([-30.0, -1.0]), torch.tensor([-1.0, -1.0]), "k3", clamp=10.0)
    torch.testing.assert_close(out, torch.tensor([10.0, 0.0]))
    # log_ratio = -29 -> clamped to -10 -> exp(-10) + 10 - 1 ~ 9.0000454 (under the bound).
    out = kl_penalty(torch.tensor([-1.0]), torch.tensor([-30.0]), "k3", clamp=10.0)
    torch.testing.assert_close(out, torch.tensor([math.exp(-10) + 9.0]))
    unclamped = kl_penalty(torch.tensor([-30.0]), torch.tensor([-1.0]), "k3", clamp=None)
    assert unclamped.item() > 1e12


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
@pytest.mark.parametrize("clamp", [10.0, 2.0, None])
def test_random_against_reference_with_grad(kind, clamp):
    gen = torch.Generator().manual_seed(hash((kind, clamp)) % 2**31)
    logp = (-torch.rand(5, 33, generator=gen) * 6).requires_grad_()
    ref = (-torch.rand(5, 33, generator=gen) * 6).requires_grad_()
    out = kl_penalty(logp, ref, kind, clamp)
    assert out.shape == logp.shape and out.dtype == torch.float32
    logp64 = logp.detach().double().requires_grad_()
    ref64 = ref.detach().double().requires_grad_()
    expected = _reference(logp64, ref64, kind, clamp)
    torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=1e-6)
    upstream = torch.randn(5, 33, generator=gen)
    (out * upstream).sum().backward()
    (expected * upstream.double()).sum().backward()
    torch.testing.assert_close(logp.grad.double(), logp64.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref.grad.double(), ref64.grad, atol=1e-5, rtol=1e-5)


def test_k3_is_nonnegative_and_zero_on_equal():
    logp = -torch.rand(100) * 5
    assert (kl_penalty(logp, logp, "k3") == 0).all()
    assert (kl_penalty(logp, -torch.rand(100) * 5, "k3") >= 0).all()


def test_unknown_kind_names_the_allowed_ones():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(torch.zeros(2), torch.zeros(2), "k4")
