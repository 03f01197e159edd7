"""The vLLM backend on a real GPU: ids and log-probs agree with the trainer, a new LoRA
version is what vLLM samples with, and a GRPO step reports the log-prob mismatch.

Skipped (with the reason) without a CUDA device or without vllm.
"""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm (pip install agent-lightning-vllm)"),
]

MODEL = {"hidden_size": 256, "num_layers": 2, "num_heads": 4}


def _backend(lora=None):
    from agent_lightning.config import BackendConfig, LoraSettings, ModelConfig
    from agent_lightning_vllm.backend import VLLMBackend

    model = ModelConfig(preset="tiny", preset_options=MODEL, lora=LoraSettings(**lora) if lora else None)
    options = {"gpu_memory_utilization": 0.25, "enforce_eager": True}
    return VLLMBackend(model, BackendConfig(name="vllm", device="cuda", options=options), seed=0)


def _episodes(backend, n=16):
    import concurrent.futures as futures

    from agent_lightning.config import SamplingConfig
    from agent_lightning.envs.guess_number import GuessNumberEnv
    from agent_lightning.loop.rollout import EnvPool, play

    tasks = GuessNumberEnv(max_number=6, max_turns=3).tasks("train")
    jobs = [(f"{tasks[i % 6].id}/{i}", tasks[i % 6], i % 6) for i in range(n)]
    with futures.ThreadPoolExecutor(4) as threads:
        return play(backend, EnvPool(lambda: GuessNumberEnv(max_number=6, max_turns=3)), jobs,
                    sampling=SamplingConfig(max_new_tokens=4, max_turns=3), temperature=1.0, step_timeout_s=30,
                    policy_version=backend.version, executor=threads, seed="cuda-test")


def _mismatch(backend, trajectories):
    from agent_lightning.loop.batch import check_invariants, pack_trajectories

    check_invariants(trajectories, vocab_size=backend.model.get_input_embeddings().num_embeddings, decode=backend.decode)
    kept = [t for t in trajectories if t.num_policy_tokens]
    batch = pack_trajectories(kept, [[1.0] * t.num_policy_tokens for t in kept])
    _, metrics = backend.correct_sampler_mismatch(batch, temperature=1.0)
    return metrics


def test_vllm_samples_ids_and_logprobs_the_trainer_agrees_with():
    backend = _backend()
    trajectories = _episodes(backend)
    assert all(t.failure is None for t in trajectories)
    metrics = _mismatch(backend, trajectories)
    assert metrics["rollout/logprob_mismatch"] < 0.02, metrics  # float32 on both sides
    # Same seed key, same samples: vLLM honours the per-request seeds.
    assert [t.token_ids for t in _episodes(backend)] == [t.token_ids for t in trajectories]


def test_a_new_lora_version_is_used_without_reloading_the_base():
    backend = _backend({"r": 8})
    before = _episodes(backend)
    with torch.no_grad():
        for name, p in backend.model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 2.0)
    backend.version += 1
    after = _episodes(backend)
    assert backend.adapters.current.int_id == 2
    assert [t.token_ids for t in after] != [t.token_ids for t in before]
    # Small mismatch under the *new* weights: vLLM sampled with the new adapter.
    assert _mismatch(backend, after)["rollout/logprob_mismatch"] < 0.02


def test_grpo_step_reports_the_logprob_mismatch(tmp_path):
    from agent_lightning.config import validate
    from agent_lightning.loop.trainer import Trainer

    config = validate({
        "model": {"preset": "tiny", "preset_options": MODEL, "lora": {"r": 8}},
        "backend": {"name": "vllm", "device": "cuda", "options": {"gpu_memory_utilization": 0.25, "enforce_eager": True}},
        "environment": {"name": "guess-number", "max_number": 6, "max_turns": 3, "wasted_guess_penalty": 0.1},
        "algorithm": {"name": "grpo", "group_size": 4, "lr": 0.003},
        "sampling": {"max_new_tokens": 2, "max_turns": 3},
        "trainer": {"steps": 2, "batch_size": 4, "eval_episodes": 8},
        "trackers": ["jsonl"],
    })
    trainer = Trainer(config, tmp_path)
    first = trainer.train_step()
    second = trainer.train_step()
    for metrics in (first, second):
        assert 0.0 <= metrics["rollout/logprob_mismatch"] < 0.05, metrics
        assert metrics["rollout/tis_weight_mean"] > 0.5
