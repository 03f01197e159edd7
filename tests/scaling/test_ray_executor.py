"""The Ray executor on a local 2-CPU cluster: same episodes as in process, and no episode
lost or duplicated when a worker is killed mid-rollout (both placements)."""

from __future__ import annotations

import concurrent.futures as futures
import functools
import os
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

HERE = Path(__file__).resolve().parent
TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2}


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module; workers import ``slow_guess_env`` from this folder."""
    if ray.is_initialized():
        ray.shutdown()
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def _configs():
    from agent_lightning.config import BackendConfig, ModelConfig, SamplingConfig

    return (ModelConfig(preset="tiny", preset_options=TINY), BackendConfig(device="cpu", threads=1),
            SamplingConfig(max_new_tokens=3, max_turns=3))


@pytest.fixture(scope="module")
def policy():
    """A tiny policy whose weights differ from a freshly built replica's (version 3)."""
    import torch

    from agent_lightning.backends.transformers.backend import TransformersBackend

    model, backend_config, _ = _configs()
    backend = TransformersBackend(model, backend_config, seed=0)
    with torch.no_grad():
        for p in backend.model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    backend.version = 3
    return backend


def _executor(policy, generate_on):
    from slow_guess_env import SlowGuessEnv

    from agent_lightning.backends.transformers.backend import create_backend
    from agent_lightning.scaling.executors import _build_backend
    from agent_lightning.scaling.executors.ray_executor import RayExecutor, RayExecutorConfig

    model, backend_config, sampling = _configs()
    config = RayExecutorConfig(workers=2, cpus_per_worker=0.5, generate_on=generate_on)
    return RayExecutor(config, env_factory=SlowGuessEnv, backend=policy,
                       backend_factory=functools.partial(_build_backend, create_backend, model, backend_config, 0),
                       sampling=sampling, step_timeout_s=20.0)


@pytest.fixture(scope="module")
def on_workers(cluster, policy):
    executor = _executor(policy, "workers")
    yield executor
    executor.close()


def _in_process(policy, jobs, seed):
    from slow_guess_env import SlowGuessEnv

    from agent_lightning.loop.rollout import EnvPool
    from agent_lightning.scaling.executors.inprocess import InProcessExecutor

    *_, sampling = _configs()
    with futures.ThreadPoolExecutor(8) as threads:
        executor = InProcessExecutor(backend=policy, envs=EnvPool(SlowGuessEnv), threads=threads, sampling=sampling,
                                     step_timeout_s=20.0)
        return executor.play(jobs, temperature=1.0, seed=seed)


def _content(trajectories):
    return {t.id: (tuple(t.token_ids), tuple(t.step_rewards), t.success, t.failure, t.policy_version)
            for t in trajectories}


def _assert_same(got, want):
    assert [t.id for t in got] == [t.id for t in want]  # job order, each episode once
    assert _content(got) == _content(want)
    for a, b in zip(got, want):
        assert a.sampling_logprobs == pytest.approx(b.sampling_logprobs, abs=1e-5)


def _play_and_kill(executor, jobs, marker_dir: Path, victim):
    """Run ``executor.play`` in a thread and kill ``victim`` once an episode has started."""
    with futures.ThreadPoolExecutor(1) as thread:
        running = thread.submit(executor.play, jobs, temperature=1.0, seed="kill")
        deadline = time.monotonic() + 120
        while not any(marker_dir.iterdir()):
            assert time.monotonic() < deadline, "no episode started"
            assert not running.done(), running.exception()
            time.sleep(0.02)
        ray.kill(victim.handle)
        return running.result(timeout=300)


def test_two_workers_play_the_same_episodes_as_in_process(on_workers, policy):
    import torch

    from slow_guess_env import make_jobs

    jobs = make_jobs(12)
    _assert_same(on_workers.play(jobs, temperature=1.0, seed="0/train/0"), _in_process(policy, jobs, "0/train/0"))
    # A new policy version reaches the workers before they sample again.
    with torch.no_grad():
        for p in policy.model.parameters():
            p.mul_(1.5)
    policy.version = 4
    got = on_workers.play(jobs, temperature=1.0, seed="0/train/1")
    _assert_same(got, _in_process(policy, jobs, "0/train/1"))
    assert {t.policy_version for t in got} == {4}
    assert on_workers.metrics() == {"rollout/worker_deaths": 0.0, "rollout/retried_episodes": 0.0, "rollout/workers": 2.0}


def test_killing_a_worker_mid_rollout_loses_and_duplicates_no_episode(on_workers, policy, tmp_path):
    from slow_guess_env import make_jobs

    jobs = make_jobs(8, delay_s=0.15, marker_dir=str(tmp_path), prefix="kill")
    first = on_workers.workers[0]  # gets the first chunk (4 episodes)
    got = _play_and_kill(on_workers, jobs, tmp_path, first)
    assert len(got) == len(jobs) and len({t.id for t in got}) == len(jobs)
    assert [t.failure for t in got] == [None] * len(jobs)
    _assert_same(got, _in_process(policy, jobs, "kill"))  # the replayed episodes are the same episodes
    assert on_workers.metrics() == {"rollout/worker_deaths": 1.0, "rollout/retried_episodes": 4.0, "rollout/workers": 2.0}
    assert first not in on_workers.workers


def test_environments_in_workers_with_generation_on_the_driver(cluster, policy, tmp_path):
    from slow_guess_env import make_jobs

    executor = _executor(policy, "driver")
    try:
        jobs = make_jobs(12)
        _assert_same(executor.play(jobs, temperature=1.0, seed="driver"), _in_process(policy, jobs, "driver"))
        assert executor.metrics()["rollout/worker_deaths"] == 0.0
        jobs = make_jobs(8, delay_s=0.15, marker_dir=str(tmp_path), prefix="kill-driver")
        got = _play_and_kill(executor, jobs, tmp_path, executor.workers[0])
        assert [t.failure for t in got] == [None] * len(jobs)
        _assert_same(got, _in_process(policy, jobs, "kill"))
        metrics = executor.metrics()
        assert metrics["rollout/worker_deaths"] == 1.0 and 1.0 <= metrics["rollout/retried_episodes"] <= 4.0
    finally:
        executor.close()


@pytest.mark.slow
def test_trainer_step_through_ray_equals_the_in_process_step(cluster, tiny_config, tmp_path):
    """``trainer.executor.name: ray`` changes where episodes run, not what is learned."""
    import torch

    from agent_lightning.loop.trainer import Trainer

    results = {}
    for name, executor in [("inprocess", {"name": "inprocess"}),
                           ("ray", {"name": "ray", "workers": 2, "cpus_per_worker": 0.5})]:
        # A penalty for wasted guesses makes rewards differ within groups, so the step updates.
        config = tiny_config(trainer={"executor": executor}, environment={"wasted_guess_penalty": 0.1})
        trainer = Trainer(config, tmp_path / name)
        try:
            metrics = trainer.train_step()
        finally:
            trainer.rollout_executor.close()
        results[name] = (metrics, trainer.backend.weights_state_dict())
    (m_in, w_in), (m_ray, w_ray) = results["inprocess"], results["ray"]
    assert m_ray["train/reward_mean"] == m_in["train/reward_mean"]
    assert m_ray["train/tokens_per_episode"] == m_in["train/tokens_per_episode"]
    assert m_ray["rollout/worker_deaths"] == 0.0 and "rollout/worker_deaths" not in m_in
    assert w_in.keys() == w_ray.keys()
    assert m_in["train/advantage_abs_mean"] > 0
    for key in w_in:
        torch.testing.assert_close(w_ray[key], w_in[key], rtol=0, atol=1e-6)
