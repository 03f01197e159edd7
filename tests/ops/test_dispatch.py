"""Which implementation token_logprobs / gae / group_advantages run, and the forced-path errors."""

import pytest
import torch

from _kernel_params import HAS_CUDA, HAS_TRITON
from agent_lightning.ops import dispatch, gae, token_logprobs


def _spy(monkeypatch, target: str):
    """Replace ``module.attr`` by a wrapper that records its calls and still runs it."""
    module_name, attr = target.rsplit(".", 1)
    module = __import__(module_name, fromlist=[attr])
    real = getattr(module, attr)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, attr, wrapper)
    return calls


def _gae_inputs():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, 9, generator=gen), torch.randn(2, 9, generator=gen), torch.rand(2, 9, generator=gen) < 0.7


def _lp_inputs(dtype=torch.float32):
    gen = torch.Generator().manual_seed(1)
    return (
        torch.randn(5, 16, generator=gen, dtype=dtype),
        torch.randn(33, 16, generator=gen, dtype=dtype),
        torch.randint(0, 33, (5,), generator=gen),
    )


def test_forced_torch_runs_the_torch_paths(monkeypatch):
    monkeypatch.setenv("ALIGHTNING_OPS", "torch")
    gae_calls = _spy(monkeypatch, "agent_lightning.ops.gae.gae_packed_torch")
    lp_calls = _spy(monkeypatch, "agent_lightning.ops.logprobs.chunked_token_logprobs")
    gae(*_gae_inputs(), gamma=0.9, lam=0.9)
    token_logprobs(*_lp_inputs())
    assert len(gae_calls) == 1 and len(lp_calls) == 1


def test_auto_on_cpu(monkeypatch):
    monkeypatch.delenv("ALIGHTNING_OPS", raising=False)
    torch_calls = _spy(monkeypatch, "agent_lightning.ops.gae.gae_packed_torch")
    lp_calls = _spy(monkeypatch, "agent_lightning.ops.logprobs.chunked_token_logprobs")
    gae(*_gae_inputs(), gamma=0.9, lam=0.9)
    token_logprobs(*_lp_inputs())
    # On CPU: the C++ extension for GAE when built, else torch; token_logprobs has no C++ path.
    assert len(torch_calls) == (0 if dispatch.cpp_extension() is not None else 1)
    assert len(lp_calls) == 1


@pytest.mark.skipif(dispatch.cpp_extension() is None, reason="agent_lightning._C is not built")
def test_forced_cpp_gae_matches_torch(monkeypatch):
    inputs = _gae_inputs()
    monkeypatch.setenv("ALIGHTNING_OPS", "cpp")
    adv_cpp, ret_cpp = gae(*inputs, gamma=0.9, lam=0.8)
    monkeypatch.setenv("ALIGHTNING_OPS", "torch")
    adv_t, ret_t = gae(*inputs, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv_cpp, adv_t, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ret_cpp, ret_t, atol=1e-6, rtol=1e-6)


def test_forced_cpp_for_token_logprobs_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("ALIGHTNING_OPS", "cpp")
    with pytest.raises(dispatch.OpsUnavailableError, match="'token_logprobs' has no cpp"):
        token_logprobs(*_lp_inputs())


def test_forced_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("ALIGHTNING_OPS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(dispatch.OpsUnavailableError, match="triton"):
        token_logprobs(*_lp_inputs())
    with pytest.raises(dispatch.OpsUnavailableError, match="triton"):
        gae(*_gae_inputs(), gamma=0.9, lam=0.9)


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_forced_triton_float64_token_logprobs_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("ALIGHTNING_OPS", "triton")
    if not HAS_CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    device = "cuda" if HAS_CUDA else "cpu"
    with pytest.raises(dispatch.OpsUnavailableError, match="float64"):
        token_logprobs(*(x.to(device) for x in _lp_inputs(torch.float64)))


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_forced_triton_runs_the_kernels(monkeypatch):
    monkeypatch.setenv("ALIGHTNING_OPS", "triton")
    device = "cuda" if HAS_CUDA else "cpu"
    if not HAS_CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    gae_calls = _spy(monkeypatch, "agent_lightning.kernels.gae.gae_packed_triton")
    lp_calls = _spy(monkeypatch, "agent_lightning.kernels.token_logprobs.triton_token_logprobs")
    gae(*(x.to(device) for x in _gae_inputs()), gamma=0.9, lam=0.9)
    token_logprobs(*(x.to(device) for x in _lp_inputs()))
    assert len(gae_calls) == 1 and len(lp_calls) == 1


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_auto_on_cuda_uses_triton(monkeypatch):
    monkeypatch.delenv("ALIGHTNING_OPS", raising=False)
    lp_calls = _spy(monkeypatch, "agent_lightning.kernels.token_logprobs.triton_token_logprobs")
    gae_calls = _spy(monkeypatch, "agent_lightning.kernels.gae.gae_packed_triton")
    token_logprobs(*(x.cuda() for x in _lp_inputs()))
    gae(*(x.cuda() for x in _gae_inputs()), gamma=0.9, lam=0.9)
    assert len(lp_calls) == 1 and len(gae_calls) == 1


def test_unknown_forced_path(monkeypatch):
    monkeypatch.setenv("ALIGHTNING_OPS", "cuda")
    with pytest.raises(dispatch.OpsUnavailableError, match="allowed: auto, torch, triton, cpp"):
        gae(*_gae_inputs(), gamma=0.9, lam=0.9)
