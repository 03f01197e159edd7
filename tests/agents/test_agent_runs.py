"""Training runs of agents through the policy endpoint: task sources, rewards (returned,
posted per call, or scored answers), failure isolation, command agents, history breaks."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from agent_lightning.config import ConfigError, load_config
from agent_lightning.loop.trainer import Trainer

HERE = Path(__file__).resolve().parent


def _run(tmp_path, overrides, *, preset="quickstart-agent", run=True):
    config = load_config(preset, ["trainer.steps=1", "trainer.batch_size=4", "algorithm.group_size=2",
                                  "trainer.eval_episodes=4", "trainer.checkpoint_every=0", "trackers=[jsonl]",
                                  "agent.options={}", "trainer.log_trajectories=64", *overrides])
    trainer = Trainer(config, tmp_path / "run")
    if run:
        trainer.run()
    return trainer


def _metrics(tmp_path, step=1):
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    return next(m for m in map(json.loads, lines) if m["step"] == step)


def _records(tmp_path, step=1):
    return [json.loads(line) for line in (tmp_path / "run" / "trajectories" / f"step-{step}.jsonl").read_text().splitlines()]


def _tasks(tmp_path, n=8):
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"q-{i}", "question": str(i % 3), "answer": "1"}) for i in range(n)) + "\n")
    return path


def test_jsonl_tasks_held_out_and_answers_scored_by_the_reward_plugin(tmp_path):
    tasks = _tasks(tmp_path)
    trainer = _run(tmp_path, ["agent.entrypoint=sample_agents:echo_answer", f"agent.tasks={tasks}",
                              "agent.held_out=0.25", "reward.name=exact-match", "environment=null"], run=False)
    assert len(trainer.train_tasks) == 6 and len(trainer.eval_tasks) == 2
    assert {t.split for t in trainer.eval_tasks} == {"eval"}
    assert not {t.id for t in trainer.train_tasks} & {t.id for t in trainer.eval_tasks}
    trainer.run()
    for record in _records(tmp_path):
        # The agent answered the task's own question; exact-match scored that answer.
        question = record["agent"]["answer"]
        assert record["reward"] == (1.0 if question == "1" else 0.0)


def test_per_call_rewards_posted_to_the_endpoint_reach_their_calls(tmp_path):
    trainer = _run(tmp_path, ["agent.entrypoint=sample_agents:rewards_each_call"], run=False)
    jobs = [(f"{t.id}/0", t, 0) for t in trainer.train_tasks[:3]]  # one group of three episodes
    trajectories = trainer._play(jobs, 1.0)
    for traj in trajectories:
        assert traj.failure is None and [t.reward for t in traj.turns] == [1.0, 0.0]
        assert traj.info["call_rewards"] is True and traj.final_reward == 0.0
    from agent_lightning.algorithms import credit

    (first, second), = {tuple(sorted({round(a, 6) for a in adv[:len(t.turns[0].action_token_ids)]}) +
                               sorted({round(a, 6) for a in adv[len(t.turns[0].action_token_ids):]}))
                        for t, adv in zip(trajectories, credit.token_advantages(trajectories, "drgrpo"))}
    assert first == 0.5 and second == -0.5  # each episode: calls 1 and 0 (score 0.5); group baseline 0.5
    trainer.rollout_executor.close()


def test_failing_and_hanging_agents_fail_their_episode_only(tmp_path):
    trainer = _run(tmp_path, ["agent.entrypoint=sample_agents:flaky", "agent.timeout_s=1.5",
                              "trainer.max_failure_rate=1.0", "environment.max_number=6"], run=False)
    jobs = [(f"{t.id}/0", t, i) for i, t in enumerate(trainer.train_tasks)]  # secrets 1..6
    trajectories = {t.id.split("/")[0]: t for t in trainer._play(jobs, 1.0)}
    assert "timed out after 1.5 s" in trajectories["train-3-0"].failure
    assert "agent raised RuntimeError: agent crashed on purpose" == trajectories["train-1-0"].failure
    assert trajectories["train-2-0"].failure is None and trajectories["train-2-0"].final_reward == 1.0
    trainer.rollout_executor.close()


def test_an_async_agent_reports_reward_success_and_answer(tmp_path):
    _run(tmp_path, ["agent.entrypoint=sample_agents:async_agent"])
    metrics = _metrics(tmp_path)
    assert metrics["train/reward_mean"] == 0.5 and metrics["train/success_rate"] == 1.0
    assert metrics["agent/calls"] == 8 and metrics["train/failed_episodes"] == 0


def test_rewritten_history_is_counted_and_explained_in_the_trajectory_file(tmp_path):
    _run(tmp_path, ["agent.entrypoint=sample_agents:summarising"])
    metrics = _metrics(tmp_path)
    assert metrics["agent/prefix_breaks"] == 8 and metrics["agent/segments"] == 16 and metrics["agent/calls"] == 24
    records = _records(tmp_path)
    firsts = [r for r in records if r["agent"]["segment"] == 0]
    assert len(firsts) == 8 and all(r["agent"]["segments"] == 2 for r in records)
    (brk,) = firsts[0]["agent"]["breaks"]
    assert brk["call"] == 2 and "message 1 (user) differs" in brk["reason"]


def test_a_command_agent_in_any_language_reports_through_stdout(tmp_path):
    command = json.dumps([sys.executable, str(HERE / "command_agent.py")])
    trainer = _run(tmp_path, [f"agent.command={command}", "agent.entrypoint=null", "trainer.max_failure_rate=1.0"], run=False)
    jobs = [(f"{t.id}/0", t, i) for i, t in enumerate(trainer.train_tasks)]
    trajectories = {t.id.split("/")[0]: t for t in trainer._play(jobs, 1.0)}
    assert trajectories["train-4-0"].failure == "agent raised RuntimeError: agent command exited with status 3: cannot solve this one"
    assert all(t.final_reward in (1.0, 0.5) and t.failure is None for k, t in trajectories.items() if k != "train-4-0")
    trainer.rollout_executor.close()


def test_agent_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="give exactly one of agent.entrypoint, agent.command or agent.name"):
        load_config("quickstart-agent", ["agent.command=[python, x.py]"])
    with pytest.raises(ConfigError, match="agent.entrypoint: cannot import module 'no_such_module'"):
        Trainer(load_config("quickstart-agent", ["agent.entrypoint=no_such_module:solve", "agent.options={}"]), Path("/tmp/x"))


def test_bad_task_files_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\n[1, 2]\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl line 2 must be a JSON object, not list"):
        Trainer(load_config("quickstart-agent", [f"agent.tasks={bad}", "environment=null"]), tmp_path / "run")


@pytest.mark.parametrize("noise", ["generator", "counter"])
def test_the_agent_quickstart_samples_and_trains_exactly_like_the_environment_quickstart(tmp_path, noise):
    """The guess-number agent (openai SDK) against the endpoint plays the same episodes as the
    environment version: same sampled tokens, same rewards; losses equal up to float noise.
    With either noise: calls batched by arrival sample what lockstep turns sample."""
    # The same settings for both (the agent preset takes fewer tasks per step in bigger groups).
    common = ["trainer.steps=2", "trainer.eval_every=0", "trainer.eval_episodes=30", "trackers=[jsonl]",
              "trainer.checkpoint_every=0", "trainer.batch_size=8", "algorithm.group_size=16", "algorithm.lr=0.002",
              f"sampling.noise={noise}"]
    Trainer(load_config("quickstart", common), tmp_path / "env").run()
    Trainer(load_config("quickstart-agent", common), tmp_path / "agent").run()
    env = [json.loads(x) for x in (tmp_path / "env" / "metrics.jsonl").read_text().splitlines()]
    agent = [json.loads(x) for x in (tmp_path / "agent" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in env] == [m["step"] for m in agent] == [0, 1, 2]
    for e, a in zip(env, agent):
        shared = [k for k in e if k in a and not (k.startswith("time/") or k.endswith("time_s") or k.endswith("per_s"))]
        assert {"train/reward_mean", "train/policy_tokens", "train/pg_loss", "eval/success_rate"} & set(shared)
        for key in shared:
            value = e[key]
            assert math.isclose(a[key], value, rel_tol=1e-5, abs_tol=1e-6), (e["step"], key, value, a[key])
    assert agent[1]["agent/prefix_breaks"] == 0 and agent[1]["agent/calls"] == agent[1]["train/policy_tokens"]


@pytest.mark.skipif(__import__("shutil").which("bwrap") is None, reason="needs bubblewrap (CI installs it)")
def test_a_sandboxed_command_agent_cannot_write_outside_its_scratch_folder(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    victim.chmod(0o666)  # writable by anyone: only the sandbox's read-only view protects it
    command = json.dumps([sys.executable, str(HERE / "writing_agent.py"), str(victim)])
    trainer = _run(tmp_path, [f"agent.command={command}", "agent.entrypoint=null", "agent.sandbox=true"], run=False)
    jobs = [(f"{t.id}/0", t, i) for i, t in enumerate(trainer.train_tasks[:2])]
    trajectories = trainer._play(jobs, 1.0)
    assert [t.failure for t in trajectories] == [None, None], [t.failure for t in trajectories]
    assert all(t.info["agent_reward"] == 1.0 and "uid=65534" in t.info["answer"] for t in trajectories)
    assert all(t.info["answer"].startswith("pid=") and int(t.info["answer"].split()[0][4:]) < 10 for t in trajectories)
    assert victim.read_text() == "original"
    trainer.rollout_executor.close()


def test_only_command_agents_can_be_sandboxed():
    with pytest.raises(ConfigError, match="agent.sandbox: only command agents run sandboxed"):
        load_config("quickstart-agent", ["agent.sandbox=true"])
