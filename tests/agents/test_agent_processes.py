"""Agents in worker processes (``agent.workers``): same episodes as threads, the agent's own
failures and a dying worker fail their episodes only, the next step gets a fresh worker."""

from __future__ import annotations

import json
import math
import os

import pytest

from agent_lightning.config import ConfigError, load_config
from agent_lightning.loop.trainer import Trainer
from agent_lightning.plugins import build_plugin_manager


def _trainer(tmp_path, overrides, name="run"):
    config = load_config("quickstart-agent", ["trainer.steps=1", "trainer.batch_size=6", "algorithm.group_size=1",
                                              "trainer.eval_episodes=4", "trainer.checkpoint_every=0", "trackers=[jsonl]",
                                              "agent.options={}", "trainer.max_failure_rate=1.0", *overrides])
    return Trainer(config, tmp_path / name)


def test_workers_run_the_agents_in_other_processes(tmp_path):
    trainer = _trainer(tmp_path, ["agent.entrypoint=sample_agents:pid_agent", "agent.workers=2"])
    jobs = [(f"{t.id}/0", t, i) for i, t in enumerate(trainer.train_tasks)]
    trajectories = trainer._play(jobs, 1.0)
    pids = {int(t.info["answer"]) for t in trajectories}
    assert all(t.failure is None and t.final_reward == 1.0 for t in trajectories)
    assert os.getpid() not in pids and len(pids) == 2  # both workers took episodes
    trainer.rollout_executor.close()
    for pid in pids:  # closed with the executor
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_failures_in_a_worker_fail_their_episode_and_a_dead_worker_is_replaced(tmp_path):
    trainer = _trainer(tmp_path, ["agent.entrypoint=sample_agents:dies_on_two", "agent.workers=1"])
    jobs = [(f"{t.id}/0", t, i) for i, t in enumerate(trainer.train_tasks)]  # secrets 1..6
    first = {t.id.split("/")[0]: t for t in trainer._play(jobs, 1.0)}
    assert first["train-2-0"].failure == "agent raised RuntimeError: agent worker process exited with status -9 during the episode"
    assert first["train-4-0"].failure == "the agent's reward must be a number, not str"
    assert first["train-5-0"].failure == "agent raised ValueError: five is not allowed"
    # Episodes that had finished before the kill kept their results; those still running failed with it.
    assert all(first[k].failure in (None, first["train-2-0"].failure) for k in ("train-1-0", "train-3-0", "train-6-0"))
    second = {t.id.split("/")[0]: t for t in trainer._play([j for j in jobs if j[1].id != "train-2-0"], 1.0)}
    assert [second[k].final_reward for k in ("train-1-0", "train-3-0", "train-6-0")] == [1.0, 1.0, 1.0]
    assert all(second[k].failure is None for k in ("train-1-0", "train-3-0", "train-6-0"))
    trainer.rollout_executor.close()


def test_workers_train_exactly_like_threads(tmp_path):
    common = ["trainer.steps=2", "trainer.batch_size=8", "algorithm.group_size=8", "trainer.eval_episodes=12",
              "agent.options={max_number: 6, max_turns: 3}", "agent.entrypoint=agent_lightning.examples.guess_number_agent:solve"]
    _trainer(tmp_path, common, "threads").run()
    _trainer(tmp_path, [*common, "agent.workers=1"], "workers").run()
    threads, workers = ([json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
                        for d in ("threads", "workers"))
    assert [m["step"] for m in threads] == [m["step"] for m in workers] == [0, 1, 2]
    for t, w in zip(threads, workers):
        shared = [k for k in t if not (k.startswith("time/") or k.endswith("time_s") or k.endswith("per_s")
                                       or k.endswith("agent/batch_size"))]
        assert {"train/reward_mean", "train/pg_loss", "eval/success_rate"} & set(shared)
        for key in shared:
            assert math.isclose(w[key], t[key], rel_tol=1e-5, abs_tol=1e-6), (t["step"], key, t[key], w[key])


def test_an_agent_only_this_process_knows_cannot_run_in_workers(tmp_path):
    from agent_lightning.hookspecs import hookimpl

    class LocalAgent:
        @hookimpl
        def register_agents(self, register):
            register("local-only", lambda: (lambda task, llm: 1.0))

    config = load_config("quickstart-agent", ["agent.entrypoint=null", "agent.name=local-only", "agent.options={}",
                                              "agent.workers=1"])
    with pytest.raises(ConfigError, match="agent.workers: agent 'local-only' is registered in the trainer's process only"):
        Trainer(config, tmp_path / "run", plugin_manager=build_plugin_manager(extra_plugins=[("local", LocalAgent())]))
