"""token_logprobs with the lm-head transforms of some model families, against float64 autograd.

A bias on the lm head (Phi), a logit scale (Cohere ``logit_scale``, Granite ``1/logits_scaling``)
and a final soft-cap ``c * tanh(logits / c)`` (Gemma 2/3), alone and together, with a
temperature, on the torch path and the Triton kernel (interpreted on CPU).
"""

import pytest
import torch

from _head_reference import reference_logprobs as _reference
from _kernel_params import impl_params
from agent_lightning.ops import token_logprobs
from agent_lightning.ops.logprobs import TokenLogprobs, chunked_token_logprobs

IMPLS = impl_params()


def _leaves(seed, n, h, v, bias, device, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    # Logits of several units (|y| up to ~10): the soft-cap's tanh is far from linear there.
    hidden = torch.randn(n, h, generator=gen) * scale
    weight = torch.randn(v, h, generator=gen) / h**0.5
    b = torch.randn(v, generator=gen) * 2.0 if bias else None
    targets = torch.randint(0, v, (n,), generator=gen).to(device)
    leaves = [x.to(device).requires_grad_() for x in (hidden, weight)]
    leaves.append(None if b is None else b.to(device).requires_grad_())
    return (*leaves, targets, gen)


def _check(hidden, weight, bias, targets, out, head, gen, tol=1e-4):
    logp, entropy = out.logprobs, out.entropy
    g_lp = torch.randn(len(targets), generator=gen).to(logp.device)
    g_ent = torch.randn(len(targets), generator=gen).to(logp.device)
    (logp * g_lp + entropy * g_ent).sum().backward()
    ref_leaves = [x.detach().double().requires_grad_() if x is not None else None for x in (hidden, weight, bias)]
    ref_lp, ref_ent = _reference(ref_leaves[0], ref_leaves[1], targets, ref_leaves[2], *head)
    (ref_lp * g_lp.double() + ref_ent * g_ent.double()).sum().backward()
    torch.testing.assert_close(logp.double(), ref_lp.detach(), atol=tol, rtol=tol)
    torch.testing.assert_close(entropy.double(), ref_ent.detach(), atol=tol, rtol=tol)
    for ours, ref in zip((hidden, weight, bias), ref_leaves):
        if ours is not None:
            scale = max(1.0, ref.grad.abs().max().item())
            torch.testing.assert_close(ours.grad.double(), ref.grad, atol=tol * scale, rtol=tol)
    return ref_lp.detach()


@pytest.mark.parametrize("impl_device", IMPLS)
@pytest.mark.parametrize(
    "n,h,v,bias,logit_scale,softcap,temperature",
    [
        (13, 16, 97, True, 1.0, None, 1.0),  # bias alone (Phi)
        (29, 24, 301, False, 0.0625, None, 0.8),  # Cohere-style scale
        (17, 16, 211, False, 1.0 / 4.0, None, 1.0),  # Granite: logits / logits_scaling
        (31, 16, 257, False, 1.0, 2.5, 1.0),  # Gemma-style soft-cap, strongly saturated
        (23, 40, 1009, True, 1.7, 4.0, 0.7),  # everything at once, several vocab tiles
    ],
)
def test_head_transforms_match_reference(impl_device, n, h, v, bias, logit_scale, softcap, temperature, monkeypatch):
    impl, device = impl_device
    monkeypatch.setenv("ALIGHTNING_OPS", impl)
    hidden, weight, b, targets, gen = _leaves(n * 7 + v, n, h, v, bias, device)
    out = token_logprobs(hidden, weight, targets, bias=b, logit_scale=logit_scale, softcap=softcap,
                         temperature=temperature, return_entropy=True)
    assert isinstance(out, TokenLogprobs)
    ref_lp = _check(hidden, weight, b, targets, out, (logit_scale, softcap, temperature), gen)
    # The head really matters at these logits: a bare ``hidden @ weight.T`` is far off.
    plain, _ = _reference(hidden.detach(), weight.detach(), targets, None, 1.0, None, temperature)
    assert (plain - ref_lp).abs().max() > 1e-2


@pytest.mark.parametrize("impl_device", IMPLS)
def test_softcap_small_logits_are_exact(impl_device, monkeypatch):
    """Near zero tanh is nearly linear; the kernel's polynomial branch must stay exact there."""
    impl, device = impl_device
    monkeypatch.setenv("ALIGHTNING_OPS", impl)
    hidden, weight, b, targets, gen = _leaves(77, 19, 16, 89, True, device, scale=0.05)
    out = token_logprobs(hidden, weight, targets, bias=b, softcap=30.0, temperature=1.3, return_entropy=True)
    _check(hidden, weight, b, targets, out, (1.0, 30.0, 1.3), gen, tol=1e-5)


@pytest.mark.parametrize("impl_device", [p for p in IMPLS if p.values[0][0] == "triton"])
def test_triton_softcap_partial_tiles(impl_device):
    """Soft-cap and bias with tiles small enough for partial tiles, 3 slabs x 3 chunks."""
    from agent_lightning.kernels.token_logprobs import triton_token_logprobs

    device = impl_device[1]
    hidden, weight, b, targets, gen = _leaves(5, 21, 20, 83, True, device)
    blocks = dict(BLOCK_N=16, BLOCK_V=16, BLOCK_H=16, SLAB_V=32, CHUNK_N=7)
    lp, ent = triton_token_logprobs(hidden, weight, targets, b, 0.9, True, blocks, logit_scale=0.5, softcap=3.0)
    _check(hidden, weight, b, targets, TokenLogprobs(lp, ent, None), (0.5, 3.0, 0.9), gen)


@pytest.mark.parametrize("chunk_rows,vocab_tile", [(1, 7), (5, 89), (None, None)])
def test_torch_softcap_tilings_agree(chunk_rows, vocab_tile):
    hidden, weight, b, targets, gen = _leaves(12, 23, 16, 89, True, "cpu")
    lp, ent = chunked_token_logprobs(hidden, weight, targets, b, 0.8, True, chunk_rows, vocab_tile,
                                     logit_scale=2.0, softcap=5.0)
    _check(hidden, weight, b, targets, TokenLogprobs(lp, ent, None), (2.0, 5.0, 0.8), gen)


def test_softcap_float64_gradcheck():
    gen = torch.Generator().manual_seed(13)
    hidden = (torch.randn(5, 8, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    weight = torch.randn(30, 8, generator=gen, dtype=torch.float64).requires_grad_()
    bias = torch.randn(30, generator=gen, dtype=torch.float64).requires_grad_()
    targets = torch.randint(0, 30, (5,), generator=gen)
    assert torch.autograd.gradcheck(
        lambda h, w, b: chunked_token_logprobs(h, w, targets, b, 0.7, True, 2, 7, logit_scale=0.5, softcap=2.0),
        (hidden, weight, bias),
    )


def test_bad_head_arguments_name_the_culprit():
    h, w, t = torch.zeros(4, 8), torch.zeros(10, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="softcap must be None or finite and > 0, got 0.0"):
        token_logprobs(h, w, t, softcap=0.0)
    with pytest.raises(ValueError, match="logit_scale must be finite and > 0, got -1.0"):
        token_logprobs(h, w, t, logit_scale=-1.0)
