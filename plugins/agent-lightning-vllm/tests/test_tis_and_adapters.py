"""The plugin's logic that needs neither a GPU nor vllm: importance weights, batch
correction, adapter versions, request seeds, registration and the CPU error."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from agent_lightning.loop.batch import pack_trajectories
from agent_lightning.types import Task, Trajectory, Turn
from agent_lightning_vllm.adapters import AdapterVersions
from agent_lightning_vllm.engine import sampling_seeds
from agent_lightning_vllm.tis import correct_batch, truncated_weights


def test_truncated_weights_are_the_capped_probability_ratio():
    gen = torch.Generator().manual_seed(0)
    sampler = -torch.rand(1000, generator=gen) * 5
    trainer = sampler + torch.randn(1000, generator=gen) * 0.5
    weights, truncated = truncated_weights(trainer, sampler, cap=1.5)
    ratio = [math.exp(t - s) for t, s in zip(trainer.tolist(), sampler.tolist())]
    assert weights.tolist() == pytest.approx([min(r, 1.5) for r in ratio], rel=1e-5)
    assert truncated.tolist() == [r > 1.5 for r in ratio]
    assert 0 < int(truncated.sum()) < 1000
    same, none_cut = truncated_weights(sampler, sampler, cap=2.0)
    assert torch.equal(same, torch.ones(1000)) and not none_cut.any()
    huge, _ = truncated_weights(torch.tensor([0.0]), torch.tensor([-500.0]), cap=3.0)  # no overflow
    assert huge.tolist() == [3.0]
    with pytest.raises(ValueError, match="tis_cap must be > 0"):
        truncated_weights(trainer, sampler, cap=0.0)


def _batch():
    task = Task(id="t", prompt=({"role": "user", "content": "x"},))
    trajs = []
    for i, n in enumerate([3, 1, 4]):
        turn = Turn(action="a", action_token_ids=tuple(range(5, 5 + n)),
                    action_logprobs=tuple(-0.1 * (i + 1) * (k + 1) for k in range(n)), observation_token_ids=(2,))
        trajs.append(Trajectory(id=f"e{i}", task=task, group=0, prompt_token_ids=(1, 2), turns=(turn,)))
    return pack_trajectories(trajs, [[1.0] * t.num_policy_tokens for t in trajs])


def test_correct_batch_anchors_to_the_trainer_and_weighs_the_gap():
    batch = _batch()
    sampler = batch.sampling_logprobs.clone()
    trainer = sampler + torch.linspace(-1.0, 1.0, sampler.numel())
    fixed, metrics = correct_batch(batch, lambda b: trainer, cap=2.0)
    assert torch.equal(fixed.sampling_logprobs, trainer)
    assert torch.equal(fixed.extras["sampler_logprobs"], sampler)
    assert torch.allclose(fixed.extras["is_weights"], torch.exp(trainer - sampler).clamp(max=2.0))
    assert metrics["rollout/logprob_mismatch"] == pytest.approx(float((trainer - sampler).abs().mean()))
    assert metrics["rollout/tis_truncated_fraction"] == pytest.approx(float(((trainer - sampler) > math.log(2.0)).float().mean()))
    # Replay's weights (already attached) are multiplied, not replaced.
    earlier = torch.full_like(sampler, 0.5)
    replayed = dataclasses.replace(batch, extras={"is_weights": earlier})
    again, _ = correct_batch(replayed, lambda b: trainer, cap=2.0)
    assert torch.allclose(again.extras["is_weights"], 0.5 * torch.exp(trainer - sampler).clamp(max=2.0))
    # Non-packed batches (preference pairs, nothing to train) pass through.
    assert correct_batch(None, lambda b: trainer, cap=2.0) == (None, {})
    with pytest.raises(ValueError, match="shape"):
        correct_batch(batch, lambda b: trainer[:-1], cap=2.0)


def _save(folder):
    from pathlib import Path

    Path(folder).mkdir(parents=True)
    (Path(folder) / "adapter_config.json").write_text("{}")


def test_adapter_versions_get_new_ids_and_old_ones_retire(tmp_path):
    versions = AdapterVersions(tmp_path, keep=2)
    first, retired = versions.publish(0, _save)
    assert (first.int_id, first.name, retired) == (1, "policy-v0", [])
    assert versions.publish(0, lambda folder: pytest.fail("saved twice")) == (first, [])
    second, _ = versions.publish(3, _save)
    third, retired = versions.publish(4, _save)
    assert [second.int_id, third.int_id] == [4, 5] and len({first.path, second.path, third.path}) == 3
    assert retired == [first] and not (tmp_path / "v0").exists() and (tmp_path / "v3").is_dir()
    assert versions.current == third
    with pytest.raises(ValueError, match="older than the published 4"):
        versions.publish(2, _save)
    with pytest.raises(ValueError, match="no adapter_config.json"):
        versions.publish(5, lambda folder: None)


def test_a_peft_adapter_saves_as_a_publishable_version(tmp_path):
    from agent_lightning.backends.transformers.backend import TransformersBackend
    from agent_lightning.config import BackendConfig, LoraSettings, ModelConfig

    backend = TransformersBackend(ModelConfig(preset="tiny", preset_options={"hidden_size": 32, "num_layers": 1, "num_heads": 2},
                                              lora=LoraSettings(r=4)), BackendConfig(device="cpu"), seed=0)
    entry, _ = AdapterVersions(tmp_path).publish(7, backend.model.save_pretrained)
    files = {p.name for p in (tmp_path / "v7").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files and entry.int_id == 8


def test_request_seeds_follow_the_rollout_noise():
    per_episode = [torch.Generator().manual_seed(s) for s in (11, 12, 11)]
    seeds = sampling_seeds(3, per_episode)
    assert seeds[0] == seeds[2] != seeds[1] and all(0 <= s < 2**31 for s in seeds)
    shared = sampling_seeds(4, torch.Generator().manual_seed(5))
    assert shared == sampling_seeds(4, torch.Generator().manual_seed(5)) and len(set(shared)) == 4
    with pytest.raises(ValueError, match="2 generators for 3 prompts"):
        sampling_seeds(3, per_episode[:2])


def test_registered_as_the_vllm_backend_and_refuses_cpu_in_one_line(al_plugin_manager):
    import agent_lightning_vllm
    from agent_lightning.config import BackendConfig, ModelConfig

    pm = al_plugin_manager(agent_lightning_vllm)
    assert "vllm" in pm.backends.names()
    with pytest.raises(ValueError) as info:
        pm.backends.create("vllm", ModelConfig(preset="tiny"), BackendConfig(name="vllm", device="cpu"), seed=0)
    assert "backend.device" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(Exception, match="backend.options.gpu_memory_utilisation"):
        pm.backends.create("vllm", ModelConfig(preset="tiny"),
                           BackendConfig(name="vllm", device="cpu", options={"gpu_memory_utilisation": 0.5}), seed=0)


def test_trainer_logprobs_recompute_what_the_policy_sampled(al_tiny_policy):
    """``no_grad_logprobs`` (the anchor of the correction) agrees with a sampler that is
    the trainer itself, so against vLLM it measures vLLM's gap only."""
    import concurrent.futures as futures

    from agent_lightning.config import SamplingConfig
    from agent_lightning.envs.guess_number import GuessNumberEnv
    from agent_lightning.loop.rollout import EnvPool, play
    from agent_lightning_vllm.tis import no_grad_logprobs

    tasks = GuessNumberEnv(max_number=6, max_turns=3).tasks("train")
    jobs = [(f"e{i}", tasks[i % 6], i) for i in range(6)]
    with futures.ThreadPoolExecutor(2) as threads:
        trajs = play(al_tiny_policy, EnvPool(lambda: GuessNumberEnv(max_number=6, max_turns=3)), jobs,
                     sampling=SamplingConfig(max_new_tokens=3, max_turns=3), temperature=1.0, step_timeout_s=10,
                     policy_version=0, executor=threads, seed="tis")
    batch = pack_trajectories(trajs, [[1.0] * t.num_policy_tokens for t in trajs])
    fixed, metrics = correct_batch(batch, no_grad_logprobs(al_tiny_policy, 1.0, micro_batch_tokens=40), cap=2.0)
    assert fixed.sampling_logprobs.shape == batch.sampling_logprobs.shape and batch.num_sequences == 6
    assert metrics["rollout/logprob_mismatch_max"] < 1e-4
    assert torch.allclose(fixed.extras["is_weights"], torch.ones(batch.num_policy_tokens), atol=1e-4)


@pytest.mark.parametrize("finish, stop_reason, expected", [
    ("stop", None, "stop"), ("stop", 2, "stop"), ("stop", "</tool_call>", "stop_string"), ("length", None, "length"),
])
def test_completions_map_to_generations_with_the_finish_reason(finish, stop_reason, expected):
    from types import SimpleNamespace

    from agent_lightning_vllm.engine import _to_generation

    step = {7: SimpleNamespace(logprob=-0.5)}, {9: SimpleNamespace(logprob=-1.5)}
    completion = SimpleNamespace(token_ids=[7, 9], logprobs=list(step), finish_reason=finish, stop_reason=stop_reason)
    generation = _to_generation(completion)
    assert generation.token_ids == (7, 9) and generation.logprobs == (-0.5, -1.5)
    assert generation.finish_reason == expected
