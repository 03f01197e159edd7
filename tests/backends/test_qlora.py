"""QLoRA (``model.quantization: 4bit``): a one-line refusal without CUDA; on a GPU, a GRPO
step on a 4-bit base that peaks below the same step with plain LoRA."""

from __future__ import annotations

import importlib.util

import pytest

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2}


def test_4bit_on_cpu_is_refused_in_one_line_naming_the_option():
    from agent_lightning.backends.transformers.backend import TransformersBackend
    from agent_lightning.config import BackendConfig, LoraSettings, ModelConfig

    model = ModelConfig(preset="tiny", preset_options=TINY, lora=LoraSettings(r=4), quantization="4bit")
    with pytest.raises(ValueError) as info:
        TransformersBackend(model, BackendConfig(device="cpu"), seed=0)
    message = str(info.value)
    assert message.startswith("model.quantization: '4bit'") and "CUDA" in message and "\n" not in message


def test_4bit_through_the_cli_is_a_config_error(alightning, cli_env, tmp_path):
    import subprocess

    result = subprocess.run([*alightning, "run", "model.quantization=4bit", "model.lora={r: 4}", "backend.device=cpu",
                             "trainer.steps=1", "--output-dir", str(tmp_path / "run")],
                            capture_output=True, text=True, env=cli_env, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: model.quantization: '4bit'")


def test_only_4bit_is_a_quantization(tiny_config):
    from agent_lightning.config import ConfigError

    with pytest.raises(ConfigError, match="model.quantization"):
        tiny_config(model={"quantization": "8bit"})


@pytest.mark.skipif(not importlib.util.find_spec("torch") or not __import__("torch").cuda.is_available(),
                    reason="needs a CUDA device")
@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes (pip install 'agent-lightning[qlora]')")
def test_qlora_grpo_step_peaks_below_lora(tiny_config, tmp_path):
    import gc

    import torch

    from agent_lightning.loop.trainer import Trainer

    peaks = {}
    for name, quantization in [("lora", None), ("qlora", "4bit")]:
        model = {"preset": "tiny", "preset_options": {"hidden_size": 1024, "num_layers": 8, "num_heads": 16},
                 "dtype": "bfloat16", "lora": {"r": 16}, "quantization": quantization}
        config = tiny_config(model=model, backend={"name": "transformers", "device": "cuda"},
                             environment={"wasted_guess_penalty": 0.1}, sampling={"max_new_tokens": 2, "max_turns": 3})
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        trainer = Trainer(config, tmp_path / name)
        metrics = trainer.train_step()
        torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated() - before
        assert metrics["train/grad_norm"] > 0 and torch.isfinite(torch.tensor(metrics["train/pg_loss"]))
        if quantization:
            import bitsandbytes as bnb

            assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.backend.model.modules())
            assert set(trainer.backend.weights_state_dict()) and all("lora_" in k for k in trainer.backend.weights_state_dict())
        del trainer
    print(f"peak GPU memory of one GRPO step: lora {peaks['lora'] / 2**20:.0f} MiB, qlora {peaks['qlora'] / 2**20:.0f} MiB")
    assert peaks["qlora"] < peaks["lora"]
