"""Per-episode sampling seeds, the executor config, and worker weight payloads (no Ray)."""

from __future__ import annotations

import concurrent.futures as futures

import pytest

from agent_lightning.loop.rollout import EnvPool, episode_seed, play

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2}


def _backend(lora=None, seed=0):
    from agent_lightning.backends.transformers.backend import TransformersBackend
    from agent_lightning.config import BackendConfig, LoraSettings, ModelConfig

    model = ModelConfig(preset="tiny", preset_options=TINY, lora=LoraSettings(**lora) if lora else None)
    return TransformersBackend(model, BackendConfig(device="cpu"), seed=seed)


@pytest.fixture(scope="module")
def backend():
    return _backend()


def _play(backend, jobs, seed):
    from agent_lightning.config import SamplingConfig
    from agent_lightning.envs.guess_number import GuessNumberEnv

    pool = EnvPool(lambda: GuessNumberEnv(max_number=6, max_turns=3))
    with futures.ThreadPoolExecutor(4) as threads:
        return play(backend, pool, jobs, sampling=SamplingConfig(max_new_tokens=3, max_turns=3), temperature=1.0,
                    step_timeout_s=10.0, policy_version=0, executor=threads, seed=seed)


def _jobs(n):
    from agent_lightning.envs.guess_number import GuessNumberEnv

    tasks = GuessNumberEnv(max_number=6, max_turns=3).tasks("train")
    return [(f"{tasks[i % 6].id}/{i // 6}", tasks[i % 6], i % 6) for i in range(n)]


def _content(trajectories):
    return {t.id: (t.token_ids, t.sampling_logprobs, t.step_rewards, t.success) for t in trajectories}


def test_episodes_do_not_depend_on_what_else_is_in_the_batch(backend):
    jobs = _jobs(12)
    whole = _play(backend, jobs, "0/train/0")
    split = _play(backend, jobs[7:], "0/train/0") + _play(backend, list(reversed(jobs[:7])), "0/train/0")
    assert _content(whole) == _content(split)
    assert all(len(t.turns) >= 1 and t.failure is None for t in whole)


def test_the_seed_key_and_the_episode_id_change_the_noise(backend):
    jobs = _jobs(12)
    base = _content(_play(backend, jobs, "0/train/0"))
    other_step = _content(_play(backend, jobs, "0/train/1"))
    assert [v[0] for v in base.values()] != [v[0] for v in other_step.values()]
    # Two episodes of the same task in one call sample differently (ids differ).
    same_task = [v[0] for k, v in base.items() if k.startswith(jobs[0][1].id + "/")]
    assert len(same_task) == 2 and same_task[0] != same_task[1]
    assert episode_seed("0/train/0", "a/0", 0) != episode_seed("0/train/0", "a/0", 1)
    assert 0 <= episode_seed(7, "x", 3) < 2**63


def test_executor_section_is_validated(tiny_config):
    from agent_lightning.config import ConfigError
    from agent_lightning.scaling.executors import create_executor

    with pytest.raises(ConfigError, match=r"'trainer.executor.name'.*'inprocess' or 'ray'"):
        tiny_config(trainer={"executor": {"name": "rayy"}})
    config = tiny_config(trainer={"executor": {"name": "inprocess", "workers": 2}})
    with pytest.raises(ConfigError, match="trainer.executor: the inprocess executor takes no options"):
        create_executor(config, backend=None, envs=None, threads=None, plugin_manager=None)
    pytest.importorskip("ray")
    for bad, message in [({"workers": 0}, "invalid value 0 for 'trainer.executor.workers'"),
                         ({"wrokers": 2}, "unknown key 'trainer.executor.wrokers'")]:
        config = tiny_config(trainer={"executor": {"name": "ray", **bad}})
        with pytest.raises(ConfigError, match=message):
            create_executor(config, backend=None, envs=None, threads=None, plugin_manager=None)
    assert tiny_config().trainer.executor.name == "inprocess"


@pytest.mark.parametrize("lora", [None, {"r": 4}])
def test_weights_payload_rebuilds_the_policy_on_a_replica(lora):
    import torch

    from agent_lightning.scaling.executors.weights import apply_weights, weights_payload

    trained, replica = _backend(lora), _backend(lora)
    with torch.no_grad():
        for p in trained.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.3)
    payload = weights_payload(trained)
    if lora:
        assert payload and all("lora_" in name for name in payload)  # the adapter only
        assert sum(v.numel() for v in payload.values()) == sum(p.numel() for p in trained.trainable_parameters())
    ids = torch.tensor([[3, 9, 12, 5, 7]])
    with torch.no_grad():
        before = replica.model(input_ids=ids).logits
        apply_weights(replica, payload, version=5)
        after = replica.model(input_ids=ids).logits
        want = trained.model(input_ids=ids).logits
    assert not torch.allclose(before, want)
    assert torch.equal(after, want) and replica.version == 5
    with pytest.raises(ValueError, match="worker weights"):
        apply_weights(replica, {"not.a.weight": torch.zeros(1)}, version=6)
