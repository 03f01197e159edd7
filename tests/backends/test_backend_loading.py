"""The transformers backend loads a saved model directory like a Hub checkpoint."""

from __future__ import annotations

import pytest
import torch

from agent_lightning.backends.transformers.backend import TransformersBackend
from agent_lightning.backends.transformers.tiny import build_preset
from agent_lightning.config import BackendConfig, ConfigError, LoraSettings, ModelConfig, validate


def test_local_directory_loads_with_from_pretrained(tmp_path):
    model, tokenizer = build_preset("tiny", {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "architecture": "qwen2"}, seed=3)
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    backend = TransformersBackend(ModelConfig(name_or_path=str(tmp_path / "ckpt"), lora=LoraSettings(r=2)),
                                  BackendConfig(device="cpu"), seed=0)
    assert type(backend.model.get_base_model()).__name__ == "Qwen2ForCausalLM"
    ids = torch.tensor([backend.encode_prompt([{"role": "user", "content": "guess my number"}])])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        got = backend.model(input_ids=ids).logits  # fresh LoRA adapters start as a no-op
    assert torch.allclose(expected, got, atol=1e-6)
    trainable = sum(p.numel() for p in backend.model.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in backend.model.parameters()) / 10


def test_model_source_errors_are_config_errors():
    with pytest.raises(ValueError, match="model: give either 'preset' or 'name_or_path'/'gguf_file', not both"):
        TransformersBackend(ModelConfig(preset="tiny", name_or_path="x"), BackendConfig(device="cpu"))
    with pytest.raises(ValueError, match="model.gguf_file: 'missing_pkg/m.gguf' is neither a file nor a file inside an installed package"):
        TransformersBackend(ModelConfig(gguf_file="missing_pkg/m.gguf"), BackendConfig(device="cpu"))
    with pytest.raises(ConfigError, match="invalid value 'fp8' for 'model.dtype'"):
        validate({"environment": {"name": "guess-number"}, "model": {"dtype": "fp8"}})
