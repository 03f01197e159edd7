"""agent_lightning.ops.token_logprobs (torch chunked path and Triton kernel) against float64.

The reference materialises the full float64 logits and differentiates with autograd.
"""

import pytest
import torch

from _kernel_params import compile_kernels_for_cuda, impl_params
from agent_lightning.ops import kl_penalty, token_logprobs
from agent_lightning.ops.logprobs import TokenLogprobs, chunked_token_logprobs

IMPLS = impl_params()


def _reference(hidden, weight, targets, bias, temperature):
    z = hidden.double() @ weight.double().T
    if bias is not None:
        z = z + bias.double()
    log_p = torch.log_softmax(z / temperature, dim=-1)
    logp = log_p.gather(1, targets[:, None]).squeeze(1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return logp, entropy


def _leaves(gen, n, h, v, dtype=torch.float32, bias=False, device="cpu", scale=1.0):
    hidden = torch.randn(n, h, generator=gen) * scale
    weight = torch.randn(v, h, generator=gen) / h**0.5
    b = torch.randn(v, generator=gen) if bias else None
    targets = torch.randint(0, v, (n,), generator=gen)
    leaves = [x.to(device=device, dtype=dtype).requires_grad_() for x in (hidden, weight)]
    leaves.append(None if b is None else b.to(device=device, dtype=dtype).requires_grad_())
    return (*leaves, targets.to(device))


def _check_against_reference(hidden, weight, bias, targets, out, temperature, gen, mask=None, tol=1e-4):
    """Values and gradients (random per-token upstream for both outputs) vs float64 autograd."""
    logp, entropy = out.logprobs, out.entropy
    assert logp.dtype == entropy.dtype == torch.float32
    g_lp = torch.randn(len(targets), generator=gen).to(logp.device)
    g_ent = torch.randn(len(targets), generator=gen).to(logp.device)
    (logp * g_lp + entropy * g_ent).sum().backward()

    ref_leaves = [x.detach().double().requires_grad_() if x is not None else None for x in (hidden, weight, bias)]
    ref_lp, ref_ent = _reference(ref_leaves[0], ref_leaves[1], targets, ref_leaves[2], temperature)
    if mask is not None:
        ref_lp, ref_ent = ref_lp * mask, ref_ent * mask
    (ref_lp * g_lp.double() + ref_ent * g_ent.double()).sum().backward()

    torch.testing.assert_close(logp.double(), ref_lp.detach(), atol=tol, rtol=tol)
    torch.testing.assert_close(entropy.double(), ref_ent.detach(), atol=tol, rtol=tol)
    for ours, ref in zip((hidden, weight, bias), ref_leaves):
        if ours is None:
            continue
        # float32 rounding error scales with the size of the gradient entries (large when the
        # logits are peaked); bf16/fp16 gradients are rounded to their dtype at the end.
        gtol = tol if ours.dtype == torch.float32 else 2e-2
        scale = max(1.0, ref.grad.abs().max().item())
        torch.testing.assert_close(ours.grad.double(), ref.grad, atol=gtol * scale, rtol=gtol)


@pytest.mark.parametrize("impl_device", IMPLS)
@pytest.mark.parametrize(
    "n,h,v,temperature,bias",
    [
        (1, 8, 7, 1.0, False),
        (37, 16, 101, 1.0, True),  # N, V not multiples of any block
        (67, 24, 1009, 0.7, True),  # prime V
        (19, 40, 4099, 1.6, False),  # prime V over several vocab tiles
    ],
)
def test_matches_reference(impl_device, n, h, v, temperature, bias, monkeypatch):
    impl, device = impl_device
    monkeypatch.setenv("ALIGHTNING_OPS", impl)
    gen = torch.Generator().manual_seed(n * 1000 + v)
    hidden, weight, b, targets = _leaves(gen, n, h, v, bias=bias, device=device)
    out = token_logprobs(hidden, weight, targets, bias=b, temperature=temperature, return_entropy=True)
    assert isinstance(out, TokenLogprobs) and out.kl is None
    _check_against_reference(hidden, weight, b, targets, out, temperature, gen)


@pytest.mark.parametrize("impl_device", IMPLS)
def test_qwen_vocab(impl_device, monkeypatch):
    impl, device = impl_device
    monkeypatch.setenv("ALIGHTNING_OPS", impl)
    gen = torch.Generator().manual_seed(151936)
    hidden, weight, _, targets = _leaves(gen, 3, 16, 151936, device=device)
    out = token_logprobs(hidden, weight, targets, temperature=0.9, return_entropy=True)
    _check_against_reference(hidden, weight, None, targets, out, 0.9, gen)


@pytest.mark.parametrize("impl_device", [p for p in IMPLS if p.values[0][0] == "triton"])
@pytest.mark.parametrize("cublas_dw", [False, True])
def test_triton_partial_tiles(impl_device, cublas_dw):
    """Tiny tiles so the programs see partial vocab, row and hidden tiles; the float32 weight
    gradient accumulated by the Triton kernel or by cuBLAS (``CUBLAS_DW``)."""
    from agent_lightning.kernels.token_logprobs import triton_token_logprobs

    device = impl_device[1]

    gen = torch.Generator().manual_seed(4)
    hidden, weight, b, targets = _leaves(gen, 21, 20, 83, bias=True, device=device)
    blocks = dict(BLOCK_N=16, BLOCK_V=16, BLOCK_H=16, SLAB_V=32, CHUNK_N=7,  # 3 slabs x 3 chunks
                  CUBLAS_DW=cublas_dw)
    lp, ent = triton_token_logprobs(hidden, weight, targets, b, 1.3, True, blocks)
    _check_against_reference(hidden, weight, b, targets, TokenLogprobs(lp, ent, None), 1.3, gen)


@pytest.mark.parametrize("impl_device", [p for p in IMPLS if p.values[0][0] == "triton"])
def test_triton_bf16_weight_gradient_slabs(impl_device):
    """16-bit weights: the float32 slab accumulator is used and copied slab by slab."""
    from agent_lightning.kernels.token_logprobs import triton_token_logprobs

    device = impl_device[1]
    gen = torch.Generator().manual_seed(14)
    hidden, weight, _, targets = _leaves(gen, 40, 32, 150, dtype=torch.bfloat16, device=device)
    blocks = dict(BLOCK_N=16, BLOCK_V=32, BLOCK_H=16, SLAB_V=64, CHUNK_N=16)
    lp, ent = triton_token_logprobs(hidden, weight, targets, None, 0.9, True, blocks)
    _check_against_reference(hidden, weight, None, targets, TokenLogprobs(lp, ent, None), 0.9, gen)


@pytest.mark.parametrize("impl_device", IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_accumulate_in_float32(impl_device, dtype, monkeypatch):
    impl, device = impl_device
    monkeypatch.setenv("ALIGHTNING_OPS", impl)
    gen = torch.Generator().manual_seed(2)
    hidden, weight, _, targets = _leaves(gen, 29, 32, 515, dtype=dtype, device=device)
    out = token_logprobs(hidden, weight, targets, return_entropy=True)
    # The reference sees the same rounded inputs, so only accumulation error remains.
    _check_against_reference(hidden, weight, None, targets, out, 1.0, gen, tol=1e-4)
    assert hidden.grad.dtype == dtype and weight.grad.dtype == dtype


@pytest.mark.parametrize("impl_device", IMPLS)
def test_all_negative_logits(impl_device, monkeypatch):
    """Logits around -300: exp underflows unless the running max starts at -inf."""
    impl, device = impl_device
    monkeypatch.setenv("ALIGHTNING_OPS", impl)
    gen = torch.Generator().manual_seed(3)
    hidden, weight, bias, targets = _leaves(gen, 23, 16, 301, bias=True, device=device)
    with torch.no_grad():
        bias.sub_(300.0)
    assert (hidden @ weight.T + bias).max() < -250
    out = token_logprobs(hidden, weight, targets, bias=bias, return_entropy=True)
    assert torch.isfinite(out.logprobs).all() and torch.isfinite(out.entropy).all()
    _check_against_reference(hidden, weight, bias, targets, out, 1.0, gen)


@pytest.mark.parametrize("impl_device", IMPLS)
def test_peaked_logits(impl_device, monkeypatch):
    impl, device = impl_device
    monkeypatch.setenv("ALIGHTNING_OPS", impl)
    gen = torch.Generator().manual_seed(5)
    hidden, weight, _, targets = _leaves(gen, 31, 16, 257, device=device, scale=12.0)
    with torch.no_grad():
        top = (hidden.double() @ weight.double().T).argmax(1)
    targets = torch.where(torch.arange(31, device=device) % 2 == 0, top, targets)  # half at the peak
    out = token_logprobs(hidden, weight, targets, temperature=0.5, return_entropy=True)
    assert out.logprobs[::2].max() > -1e-3  # really peaked
    _check_against_reference(hidden, weight, None, targets, out, 0.5, gen)


@pytest.mark.parametrize("impl_device", IMPLS)
def test_mask(impl_device, monkeypatch):
    impl, device = impl_device
    monkeypatch.setenv("ALIGHTNING_OPS", impl)
    gen = torch.Generator().manual_seed(6)
    hidden, weight, b, targets = _leaves(gen, 33, 16, 97, bias=True, device=device)
    mask = (torch.rand(33, generator=gen) < 0.5).to(device)
    out = token_logprobs(hidden, weight, targets, bias=b, mask=mask, return_entropy=True)
    assert (out.logprobs[~mask] == 0).all() and (out.entropy[~mask] == 0).all()
    _check_against_reference(hidden, weight, b, targets, out, 1.0, gen, mask=mask)
    assert (hidden.grad[~mask] == 0).all()


@pytest.mark.parametrize("impl_device", IMPLS)
def test_fully_masked_rows_give_zeros_not_nan(impl_device, monkeypatch):
    impl, device = impl_device
    monkeypatch.setenv("ALIGHTNING_OPS", impl)
    gen = torch.Generator().manual_seed(8)
    hidden, weight, _, targets = _leaves(gen, 9, 16, 50, device=device)
    targets[3] = 10_000  # out of range, but masked: must not be looked at
    mask = torch.zeros(9, dtype=torch.bool, device=device)
    out = token_logprobs(hidden, weight, targets, mask=mask, return_entropy=True, ref_logprobs=torch.zeros(9))
    assert (out.logprobs == 0).all() and (out.entropy == 0).all() and (out.kl == 0).all()
    (out.logprobs.sum() + out.entropy.sum() + out.kl.sum()).backward()
    assert (hidden.grad == 0).all() and (weight.grad == 0).all()


@pytest.mark.parametrize("impl_device", IMPLS)
@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_kl_against_reference(impl_device, kind, monkeypatch):
    impl, device = impl_device
    monkeypatch.setenv("ALIGHTNING_OPS", impl)
    gen = torch.Generator().manual_seed(9)
    hidden, weight, _, targets = _leaves(gen, 17, 16, 61, device=device)
    ref_logprobs = (-torch.rand(17, generator=gen) * 8).to(device)
    out = token_logprobs(hidden, weight, targets, ref_logprobs=ref_logprobs, kl=kind, kl_clamp=3.0)
    assert out.entropy is None
    h64, w64 = (x.detach().double().requires_grad_() for x in (hidden, weight))
    ref_lp, _ = _reference(h64, w64, targets, None, 1.0)
    expected = kl_penalty(ref_lp, ref_logprobs.double(), kind, 3.0)
    torch.testing.assert_close(out.kl.double(), expected.detach(), atol=1e-4, rtol=1e-4)
    out.kl.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(hidden.grad.double(), h64.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("impl_device", IMPLS)
def test_plain_tensor_and_logprob_only_gradient(impl_device, monkeypatch):
    impl, device = impl_device
    monkeypatch.setenv("ALIGHTNING_OPS", impl)
    gen = torch.Generator().manual_seed(10)
    hidden, weight, _, targets = _leaves(gen, 25, 16, 70, device=device)
    logp = token_logprobs(hidden, weight, targets)
    assert isinstance(logp, torch.Tensor) and logp.shape == (25,) and logp.dtype == torch.float32
    upstream = torch.randn(25, generator=gen).to(device)
    (logp * upstream).sum().backward()
    h64, w64 = (x.detach().double().requires_grad_() for x in (hidden, weight))
    ref_lp, _ = _reference(h64, w64, targets, None, 1.0)
    (ref_lp * upstream.double()).sum().backward()
    torch.testing.assert_close(logp.double(), ref_lp.detach(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(weight.grad.double(), w64.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("chunk_rows,vocab_tile", [(1, 7), (5, 89), (64, 30), (None, None), (6, 1)])
def test_torch_tilings_agree(chunk_rows, vocab_tile):
    gen = torch.Generator().manual_seed(12)
    hidden, weight, b, targets = _leaves(gen, 23, 16, 89, bias=True)
    lp, ent = chunked_token_logprobs(hidden, weight, targets, b, 0.8, True, chunk_rows, vocab_tile)
    _check_against_reference(hidden, weight, b, targets, TokenLogprobs(lp, ent, None), 0.8, gen)


@pytest.mark.parametrize("entropy", [False, True])
def test_a_non_finite_row_is_nan_and_leaves_the_others_alone(entropy):
    gen = torch.Generator().manual_seed(14)
    hidden, weight, _, targets = _leaves(gen, 9, 16, 61)
    with torch.no_grad():
        hidden[2, 3] = float("nan")
        hidden[5, 0] = float("inf")
    lp, ent = chunked_token_logprobs(hidden, weight, targets, None, 1.0, entropy, 4, 16)
    (lp.nan_to_num().sum() + (ent.nan_to_num().sum() if entropy else 0)).backward()
    bad = torch.tensor([i in (2, 5) for i in range(9)])
    assert lp[bad].isnan().all() and lp[~bad].isfinite().all()
    if entropy:
        assert ent[bad].isnan().all() and ent[~bad].isfinite().all()
    ref_lp, ref_ent = _reference(hidden.detach()[~bad], weight.detach(), targets[~bad], None, 1.0)
    torch.testing.assert_close(lp[~bad].detach().double(), ref_lp, atol=1e-5, rtol=1e-5)


def test_torch_float64_stays_float64():
    gen = torch.Generator().manual_seed(13)
    hidden, weight, _, targets = _leaves(gen, 11, 8, 30, dtype=torch.float64)
    out = token_logprobs(hidden, weight, targets, return_entropy=True)
    ref_lp, ref_ent = _reference(hidden.detach(), weight.detach(), targets, None, 1.0)
    assert out.logprobs.dtype == torch.float64
    torch.testing.assert_close(out.logprobs.detach(), ref_lp, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(out.entropy.detach(), ref_ent, atol=1e-12, rtol=1e-12)
    assert torch.autograd.gradcheck(
        lambda h, w: chunked_token_logprobs(h, w, targets[:5], None, 0.7, True, chunk_rows=2, vocab_tile=7),
        (hidden.detach()[:5].clone().requires_grad_(), weight.detach().clone().requires_grad_()),
    )


def test_bad_inputs_name_the_culprit():
    h, w = torch.zeros(4, 8), torch.zeros(10, 8)
    with pytest.raises(ValueError, match="target id 10 is outside the vocabulary"):
        token_logprobs(h, w, torch.tensor([0, 1, 10, 2]))
    with pytest.raises(ValueError, match="weight"):
        token_logprobs(h, torch.zeros(10, 9), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(h, w, torch.zeros(4, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match="mask"):
        token_logprobs(h, w, torch.zeros(4, dtype=torch.long), mask=torch.ones(3, dtype=torch.bool))


def test_triton_kernels_compile_for_cuda():
    """The compiled (non-interpreted) kernels lower to sm_90 code, in float32 and bf16."""
    compile_kernels_for_cuda("fwd_fp32", "grad_fp32", "acc_fp32", "fwd_bf16", "grad_bf16", "acc_bf16")
