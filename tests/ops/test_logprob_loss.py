"""agent_lightning.ops.token_logprob_loss (gradient taken in the forward sweep) against float64
autograd through materialised logits, for the head transforms, chunkings and losses it meets."""

import pytest
import torch
from _head_reference import reference_logprobs

from agent_lightning.ops import token_logprob_loss, token_logprobs


def _case(seed, n=29, h=12, v=83, dtype=torch.float64, bias=False, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, h, generator=gen, dtype=torch.float64) * scale).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=gen, dtype=torch.float64) / h**0.5).to(dtype).requires_grad_()
    b = torch.randn(v, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() if bias else None
    targets = torch.randint(0, v, (n,), generator=gen)
    consts = torch.randn(3, n, generator=gen, dtype=torch.float64)
    return hidden, weight, b, targets, consts


def _reference_outputs(hidden, weight, bias, targets, *, logit_scale=1.0, softcap=None, temperature=1.0):
    return reference_logprobs(hidden, weight, targets, bias, logit_scale, softcap, temperature)


def _surrogate(consts, near):
    """A PPO-like row-separable loss: clipped ratio times a per-token weight, an entropy term;
    the old log-probs are ``near`` plus noise, so that ratios straddle the clip range."""
    noise, adv, weights = consts
    old = near.detach().double() + 0.2 * noise

    def loss_of(logp, entropy):
        ratio = torch.exp(logp - old.to(logp))
        pg = -torch.minimum(ratio * adv.to(logp), ratio.clamp(0.8, 1.2) * adv.to(logp))
        loss = (pg * weights.abs().to(logp)).sum() / len(logp)
        if entropy is not None:
            loss = loss - 0.05 * (entropy * weights.to(entropy)).mean()
        return loss

    return loss_of


def _grads(loss, leaves):
    present = [x for x in leaves if x is not None]
    return torch.autograd.grad(loss, present)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("with_entropy", [False, True])
@pytest.mark.parametrize("head", [{}, {"logit_scale": 1.7, "temperature": 0.6}, {"softcap": 2.5, "temperature": 1.3}],
                         ids=["plain", "scaled", "softcap"])
@pytest.mark.parametrize("chunk_rows", [1, 7, None])
def test_loss_logprobs_and_gradients_equal_float64_autograd(bias, with_entropy, head, chunk_rows):
    hidden, weight, b, targets, consts = _case(3, bias=bias, scale=2.0)
    ref_lp, ref_ent = _reference_outputs(hidden, weight, b, targets, **head)
    loss_of = _surrogate(consts, ref_lp)
    out = token_logprob_loss(hidden, weight, targets, loss_of, bias=b, with_entropy=with_entropy,
                             chunk_rows=chunk_rows, **head)
    ref_loss = loss_of(ref_lp, ref_ent if with_entropy else None)

    torch.testing.assert_close(out.loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.logprobs, ref_lp.detach(), rtol=1e-12, atol=1e-12)
    if with_entropy:
        torch.testing.assert_close(out.entropy, ref_ent.detach(), rtol=1e-12, atol=1e-12)
    else:
        assert out.entropy is None
    assert not out.logprobs.requires_grad
    # A non-unit upstream gradient (the trainer scales each micro-batch's loss).
    ours = _grads(out.loss * -2.5, (hidden, weight, b))
    ref = _grads(ref_loss * -2.5, (hidden, weight, b))
    assert any(float(g.abs().max()) > 1e-3 for g in ref)  # the check below has something to compare
    for got, want in zip(ours, ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_float32_matches_the_float64_reference():
    hidden, weight, b, targets, consts = _case(5, n=64, h=32, v=500, dtype=torch.float32, bias=True, scale=3.0)
    ref_lp, ref_ent = _reference_outputs(hidden, weight, b, targets)
    loss_of = _surrogate(consts, ref_lp)
    out = token_logprob_loss(hidden, weight, targets, loss_of, bias=b, with_entropy=True, chunk_rows=24)
    assert out.loss.dtype == out.logprobs.dtype == torch.float32
    ref_loss = loss_of(ref_lp, ref_ent)
    torch.testing.assert_close(out.logprobs.double(), ref_lp.detach(), rtol=1e-5, atol=1e-5)
    for got, want in zip(_grads(out.loss, (hidden, weight, b)), _grads(ref_loss, (hidden, weight, b))):
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-4, atol=1e-6)


def test_same_as_autograd_through_token_logprobs():
    """The composition the trainer used before: token_logprobs, then the loss, then backward."""
    hidden, weight, b, targets, consts = _case(9, n=40, v=120, bias=True)
    loss_of = _surrogate(consts, _reference_outputs(hidden, weight, b, targets, temperature=0.8)[0])
    out = token_logprob_loss(hidden, weight, targets, loss_of, bias=b, with_entropy=True, temperature=0.8)
    composed = token_logprobs(hidden, weight, targets, bias=b, temperature=0.8, return_entropy=True)
    loss = loss_of(composed.logprobs, composed.entropy)
    torch.testing.assert_close(out.loss, loss, rtol=1e-12, atol=1e-12)
    for got, want in zip(_grads(out.loss, (hidden, weight, b)), _grads(loss, (hidden, weight, b))):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_a_frozen_head_gets_no_gradient_and_the_hidden_states_theirs():
    hidden, weight, _, targets, consts = _case(11)
    weight.requires_grad_(False)
    ref_lp, ref_ent = _reference_outputs(hidden, weight, None, targets)
    loss_of = _surrogate(consts, ref_lp)
    out = token_logprob_loss(hidden, weight, targets, loss_of, with_entropy=True, chunk_rows=5)
    out.loss.backward()
    (grad,) = torch.autograd.grad(loss_of(ref_lp, ref_ent), [hidden])
    torch.testing.assert_close(hidden.grad, grad, rtol=1e-10, atol=1e-12)
    assert weight.grad is None


def test_without_grad_mode_it_only_computes_the_loss():
    hidden, weight, _, targets, consts = _case(13)
    ref_lp, _ = _reference_outputs(hidden, weight, None, targets)
    loss_of = _surrogate(consts, ref_lp)
    with torch.no_grad():
        out = token_logprob_loss(hidden, weight, targets, loss_of)
    assert not out.loss.requires_grad
    torch.testing.assert_close(out.loss, loss_of(ref_lp, None).detach(), rtol=1e-12, atol=1e-12)


def test_bfloat16_inputs_accumulate_in_float32():
    hidden, weight, _, targets, consts = _case(17, n=16, h=32, v=64, dtype=torch.bfloat16)
    ref_lp, ref_ent = _reference_outputs(hidden, weight, None, targets)
    loss_of = _surrogate(consts, ref_lp)
    out = token_logprob_loss(hidden, weight, targets, loss_of, with_entropy=True)
    assert out.logprobs.dtype == torch.float32
    gh, gw = _grads(out.loss, (hidden, weight))
    assert gh.dtype == gw.dtype == torch.bfloat16
    torch.testing.assert_close(out.logprobs.double(), ref_lp.detach(), rtol=1e-5, atol=1e-5)
    rh, rw = _grads(loss_of(ref_lp, ref_ent), (hidden, weight))
    torch.testing.assert_close(gh.double(), rh.double(), rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(gw.double(), rw.double(), rtol=2e-2, atol=2e-3)


def test_a_loss_that_ignores_the_entropy_it_asked_for():
    hidden, weight, _, targets, consts = _case(19)
    loss_of = lambda logp, entropy: (logp * consts[0]).sum()  # noqa: E731
    out = token_logprob_loss(hidden, weight, targets, loss_of, with_entropy=True)
    ref_lp, ref_ent = _reference_outputs(hidden, weight, None, targets)
    torch.testing.assert_close(out.entropy, ref_ent.detach(), rtol=1e-12, atol=1e-12)
    for got, want in zip(_grads(out.loss, (hidden, weight)), _grads(loss_of(ref_lp, None), (hidden, weight))):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_no_rows():
    hidden, weight, _, targets, _ = _case(23, n=0)
    out = token_logprob_loss(hidden, weight, targets, lambda logp, _: logp.sum())
    assert out.logprobs.shape == (0,) and float(out.loss.detach()) == 0.0
    gh, gw = _grads(out.loss, (hidden, weight))
    assert gh.shape == hidden.shape and float(gw.abs().sum()) == 0.0


def test_a_loss_that_is_not_a_scalar_is_named():
    hidden, weight, _, targets, _ = _case(29)
    with pytest.raises(ValueError, match=r"loss_of must return a scalar tensor, got \(29,\)"):
        token_logprob_loss(hidden, weight, targets, lambda logp, _: logp * 2)
    with pytest.raises(TypeError, match="loss_of must be callable, got int"):
        token_logprob_loss(hidden, weight, targets, 3)


def test_bad_targets_are_named():
    hidden, weight, _, targets, _ = _case(31, v=50)
    targets[4] = 50
    with pytest.raises(ValueError, match=r"target id 50 is outside the vocabulary \[0, 50\)"):
        token_logprob_loss(hidden, weight, targets, lambda logp, _: logp.sum())


def test_a_second_backward_is_refused_by_name():
    hidden, weight, _, targets, _ = _case(37)
    out = token_logprob_loss(hidden, weight, targets, lambda logp, _: logp.sum())
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="token_logprob_loss: its backward ran already"):
        out.loss.backward()
