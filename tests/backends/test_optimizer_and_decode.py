"""The transformers backend's AdamW kernel choice (fused where torch has it) and its decode memo."""

from __future__ import annotations

import pytest
import torch

from agent_lightning.backends.transformers import backend as backend_module
from agent_lightning.backends.transformers.backend import (
    TransformersBackend,
    fused_adamw_supported,
)
from agent_lightning.config import BackendConfig, ModelConfig


def _backend() -> TransformersBackend:
    return TransformersBackend(ModelConfig(preset="tiny", preset_options={"hidden_size": 32, "num_layers": 2,
                                                                          "num_heads": 2}),
                               BackendConfig(device="cpu"), seed=0)


def _configure(backend: TransformersBackend) -> None:
    backend.configure_optimizer(lr=1e-3, weight_decay=0.01, betas=(0.9, 0.99), warmup_steps=0, total_steps=10,
                                schedule="constant")


def test_fused_adamw_only_for_plain_floating_tensors_on_one_cpu_or_cuda_device():
    plain = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2, 2, dtype=torch.bfloat16))]
    assert fused_adamw_supported(plain)
    assert not fused_adamw_supported([])
    assert not fused_adamw_supported([torch.nn.Parameter(torch.randn(3, device="meta"))])


def test_the_backend_steps_with_the_fused_kernel_and_matches_the_single_tensor_loop(tmp_path):
    fused, loop = _backend(), _backend()
    _configure(fused)
    _configure(loop)
    assert fused.optimizer.param_groups[0]["fused"] is True
    for group in loop.optimizer.param_groups:  # the kernel torch uses where fused is not available
        group.update(fused=None, foreach=False)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for a, b in zip(fused.trainable_parameters(), loop.trainable_parameters(), strict=True):
            grad = torch.randn(a.shape, generator=g)
            a.grad, b.grad = grad.clone(), grad.clone()
        versions = [p._version for p in fused.trainable_parameters()]
        assert fused.optimizer_step(1.0)["grad_norm"] == pytest.approx(loop.optimizer_step(1.0)["grad_norm"])
        # the fused kernel does not count its writes; the backend does (the sampling caches read it)
        assert all(p._version > v for p, v in zip(fused.trainable_parameters(), versions, strict=True))
    for a, b in zip(fused.trainable_parameters(), loop.trainable_parameters(), strict=True):
        assert not torch.equal(a, torch.zeros_like(a)) and a.grad is None
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # a checkpoint written with the loop loads into a fused optimizer and stays fused
    (tmp_path / "ckpt").mkdir()
    loop.save(str(tmp_path / "ckpt"))
    fused.load(str(tmp_path / "ckpt"))
    assert [(grp["fused"], grp["foreach"]) for grp in fused.optimizer.param_groups] == [(True, None)]
    for a, b in zip(fused.trainable_parameters(), loop.trainable_parameters(), strict=True):
        assert torch.equal(a, b)


def test_decode_remembers_replies_and_starts_over_when_full(monkeypatch):
    backend = _backend()
    calls = []
    real = backend.tokenizer.decode
    monkeypatch.setattr(backend.tokenizer, "decode", lambda ids, **kw: calls.append(tuple(ids)) or real(ids, **kw))
    ids = backend.tokenizer.encode("guess the number 7", add_special_tokens=False)
    assert backend.decode(ids) == backend.decode(tuple(ids)) == "guess the number 7"
    assert calls == [tuple(ids)]
    monkeypatch.setattr(backend_module, "DECODE_MEMO", 2)
    backend.decode([ids[0], 0])  # the second distinct reply: the memo is full now
    assert len(backend._decoded) == 2
    backend.decode([ids[0], 1])  # the third found it full: it starts over
    assert list(backend._decoded) == [(ids[0], 1)]
    assert backend.decode([ids[0], 1]) == real([ids[0], 1], skip_special_tokens=True).strip()
