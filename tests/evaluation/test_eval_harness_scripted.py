"""The evaluation harness on a scripted, deterministic policy whose every number is known.

The run is guess-number over secrets 1..6 with three turns, where the environment raises
on the second step of secret 6. The "policy" is a backend plugin with one parameter read
from the checkpoint, ``skill``:

* skill 0 (the base model and ``step-3``): episode ``i`` of an evaluation is sample
  ``s = i // 6`` of secret ``i % 6 + 1``; it guesses ``s % 3 + 1`` on every turn, ignoring
  the hints. So secrets 1..3 are each found by 2 of their 6 samples, on the first turn.
* skill 1 (``step-5``): binary search from the hints: 3, then 1 or 5, then 2 or 4; it finds
  every secret (1 to 3 turns) except 6, whose environment raises on the second step.

Tokens: a prompt is 5 tokens, an action 1, an observation 3 (none after the last turn).
"""

from __future__ import annotations

import json
import re

import pytest

from agent_lightning.config import dump_yaml, validate
from agent_lightning.envs.guess_number import GuessNumberEnv
from agent_lightning.evaluation.harness import evaluate_run
from agent_lightning.evaluation.stats import wilson_interval
from agent_lightning.hookspecs import hookimpl
from agent_lightning.loop import checkpoint as ckpt
from agent_lightning.types import Generation

PROMPT, SEP, HIGHER, LOWER, INVALID, VOCAB = 90, 91, 92, 93, 94, 100
LOGGED: list[tuple[str, int, dict]] = []


class FlakyGuess(GuessNumberEnv):
    def step(self, action):
        if self._secret == 6 and self._turn == 1:
            raise RuntimeError("flaky")
        return super().step(action)


class ScriptedBackend:
    """A backend without weights: its whole policy is ``skill`` (checkpointed as JSON)."""

    def __init__(self, model_config, backend_config, *, seed=0):
        self.skill = 0
        self.version = 0
        self.vocab_size = VOCAB

    def encode_prompt(self, messages):
        return [PROMPT] * 5

    def encode_observation(self, messages, *, after_stop):
        text = messages[-1]["content"]
        match = re.match(r"(higher|lower) than (\d+)", text)
        if match is None:
            return [SEP, INVALID, INVALID]
        return [SEP, HIGHER if match.group(1) == "higher" else LOWER, int(match.group(2))]

    def decode(self, token_ids):
        return " ".join(str(t) for t in token_ids)

    def _guess(self, row, context, first_turn_batch):
        turns = (len(context) - 5) // 4
        if self.skill == 0:
            return (row // 6) % 3 + 1 if first_turn_batch else context[5]
        low, high = 1, 6
        for t in range(turns):
            guess, hint = context[5 + 4 * t], context[5 + 4 * t + 2]
            low, high = (guess + 1, high) if hint == HIGHER else (low, guess - 1)
        return (low + high) // 2

    def generate(self, prompts, *, temperature, top_p=1.0, max_new_tokens, generator=None):
        first = all(len(p) == 5 for p in prompts)
        return [Generation(token_ids=(self._guess(row, list(p), first),), logprobs=(0.0,), finish_reason="length")
                for row, p in enumerate(prompts)]

    def save(self, directory):
        raise AssertionError("evaluation never writes checkpoints")

    def load(self, directory):
        with open(f"{directory}/policy.json") as handle:
            self.skill = json.load(handle)["skill"]


class NoopAlgorithm:
    group_size = 1

    def setup(self, backend, *, total_steps, temperature):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class RecordingTracker:
    def __init__(self, run_dir):
        pass

    def log_config(self, config):
        LOGGED.append(("config", -1, dict(config)))

    def log_metrics(self, step, metrics):
        LOGGED.append(("metrics", step, dict(metrics)))

    def log_artifact(self, path, name=None):
        LOGGED.append(("artifact", -1, {"path": path, "name": name}))

    def close(self):
        LOGGED.append(("close", -1, {}))


class ScriptedPlugin:
    @hookimpl
    def register_environments(self, register):
        register("flaky-guess", FlakyGuess)

    @hookimpl
    def register_backends(self, register):
        register("scripted", ScriptedBackend)

    @hookimpl
    def register_algorithms(self, register):
        register("noop", NoopAlgorithm)

    @hookimpl
    def register_trackers(self, register):
        register("recording", RecordingTracker)


@pytest.fixture
def scripted_run(tmp_path, al_plugin_manager):
    import agent_lightning.rewards.env_rewards as env_rewards

    config = validate({
        "model": {}, "backend": {"name": "scripted"},
        "environment": {"name": "flaky-guess", "max_number": 6, "max_turns": 3},
        "reward": {"name": "env-reward"}, "algorithm": {"name": "noop"},
        "sampling": {"max_new_tokens": 1, "max_turns": 3},
        "trainer": {"eval_episodes": 36, "seed": 0},
        "trackers": ["recording"],
    })
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(dump_yaml(config))
    for step, skill in ((3, 0), (5, 1)):
        folder = run_dir / "checkpoints" / f"step-{step}"
        folder.mkdir(parents=True)
        (folder / "policy.json").write_text(json.dumps({"skill": skill}))
        (folder / "trainer.json").write_text(json.dumps({"step": step}))
        ckpt.write_manifest(folder, step)
    LOGGED.clear()
    return run_dir, al_plugin_manager(ScriptedPlugin(), env_rewards)


def test_every_number_of_a_scripted_policy(scripted_run, tmp_path):
    run_dir, pm = scripted_run
    doc = evaluate_run(run_dir, samples=6, json_path=tmp_path / "copy.json", plugin_manager=pm)
    base, step3, step5 = doc["checkpoints"]
    assert [r["step"] for r in doc["checkpoints"]] == [0, 3, 5]
    assert base["checkpoint"] is None and step5["checkpoint"].endswith("step-5")
    assert doc["settings"]["episodes"] == 36 and doc["settings"]["samples"] == 6

    # skill 0: 6 of 36 solved (secrets 1..3, two samples each), secret 6 fails on every sample.
    for r in (base, step3):
        assert (r["episodes"], r["tasks"], r["successes"]) == (36, 6, 6)
        assert r["success_rate"] == pytest.approx(1 / 6)
        assert r["success_ci"] == [pytest.approx(0.078704, abs=1e-6), pytest.approx(0.318908, abs=1e-6)]
        assert r["success_ci"] == list(wilson_interval(6, 36))
        assert r["mean_reward"] == pytest.approx(6 / 30)  # over the 30 healthy episodes
        # pass@k per solved task: 1 - C(4,k)/C(6,k) = 1/3, 0.6, 14/15, 1; unsolved tasks 0; mean of 6 tasks.
        assert r["pass_at_k"] == {"1": pytest.approx(1 / 6), "2": pytest.approx(0.3),
                                  "4": pytest.approx(14 / 30), "6": pytest.approx(0.5)}
        # turns: 6 solved x 1, 24 unsolved x 3, 6 failed x 1 (the turn before the raise).
        assert r["mean_turns"] == pytest.approx((6 * 1 + 24 * 3 + 6 * 1) / 36)
        # tokens: solved 5+1, unsolved 5+3+2*3, failed 5+1+3.
        assert r["tokens_per_episode"] == pytest.approx((6 * 6 + 24 * 14 + 6 * 9) / 36)
        assert r["policy_tokens_per_episode"] == pytest.approx((6 + 72 + 6) / 36)
        assert r["failed_episodes"] == 6
        assert r["outcomes"] == {"no success": 24, "environment step raised RuntimeError: flaky": 6}

    # skill 1: binary search finds secrets 1..5 (turns 2, 3, 1, 3, 2), secret 6 fails.
    assert step5["successes"] == 30 and step5["success_rate"] == pytest.approx(5 / 6)
    assert step5["success_ci"] == list(wilson_interval(30, 36))
    assert step5["mean_reward"] == pytest.approx(1.0)
    assert step5["pass_at_k"] == {k: pytest.approx(5 / 6) for k in ("1", "2", "4", "6")}
    assert step5["mean_turns"] == pytest.approx((2 + 3 + 1 + 3 + 2 + 1) / 6)
    assert step5["tokens_per_episode"] == pytest.approx((10 + 14 + 6 + 14 + 10 + 9) / 6)
    assert step5["outcomes"] == {"environment step raised RuntimeError: flaky": 6}

    # The same document on disk, in --json, and in the run's trackers at each checkpoint's step.
    on_disk = json.loads((run_dir / "eval" / "results.json").read_text())
    assert on_disk == json.loads((tmp_path / "copy.json").read_text()) == json.loads(json.dumps(doc))
    logged = {step: m for kind, step, m in LOGGED if kind == "metrics"}
    assert sorted(logged) == [0, 3, 5]
    assert logged[5]["ckpt_eval/success_rate"] == pytest.approx(5 / 6)
    assert logged[0]["ckpt_eval/pass_at_4"] == pytest.approx(14 / 30)
    assert logged[0]["ckpt_eval/success_ci_low"] == pytest.approx(base["success_ci"][0])
    assert ("artifact", -1, {"path": str(run_dir / "eval" / "results.json"), "name": "eval/results.json"}) in LOGGED
    assert LOGGED[-1][0] == "close"


def test_one_checkpoint_merges_with_earlier_results_of_the_same_settings(scripted_run):
    run_dir, pm = scripted_run
    evaluate_run(run_dir, samples=2, plugin_manager=pm, log_trackers=False)
    (run_dir / "checkpoints" / "step-5" / "policy.json").write_text(json.dumps({"skill": 0}))
    (run_dir / "checkpoints" / "step-5" / ckpt.MANIFEST).unlink()
    ckpt.write_manifest(run_dir / "checkpoints" / "step-5", 5)  # re-saved with other weights
    doc = evaluate_run(run_dir / "checkpoints" / "step-5", samples=2, plugin_manager=pm, log_trackers=False)
    by_step = {r["step"]: r for r in doc["checkpoints"]}
    assert sorted(by_step) == [0, 3, 5]
    assert by_step[5]["success_rate"] == pytest.approx(1 / 6)  # re-evaluated with the new weights
    assert by_step[5]["checkpoint"].endswith("step-5")
    assert not LOGGED  # log_trackers=False
    # Other settings replace the file instead of mixing incomparable rows.
    doc = evaluate_run(run_dir / "checkpoints" / "step-5", samples=1, episodes=6, plugin_manager=pm, log_trackers=False)
    assert [r["step"] for r in doc["checkpoints"]] == [0, 5]
    assert doc["settings"]["episodes"] == 6
    assert json.loads((run_dir / "eval" / "results.json").read_text())["settings"]["samples"] == 1


def test_episode_count_covers_k_samples_of_every_task(scripted_run):
    run_dir, pm = scripted_run
    doc = evaluate_run(run_dir, samples=3, episodes=10, plugin_manager=pm, log_trackers=False)
    assert doc["settings"]["episodes"] == 18  # 3 samples x 6 tasks > 10
    assert all(r["episodes"] == 18 for r in doc["checkpoints"])
    doc = evaluate_run(run_dir, split="train", episodes=7, plugin_manager=pm, log_trackers=False)
    assert doc["settings"]["split"] == "train" and doc["checkpoints"][0]["episodes"] == 7
    assert doc["checkpoints"][0]["tasks"] == 6  # round-robin: 7 episodes over 6 train tasks


def test_bad_targets_and_options_are_one_line_errors(scripted_run, tmp_path):
    from agent_lightning.config import ConfigError

    run_dir, pm = scripted_run
    with pytest.raises(ConfigError, match="no config.yaml"):
        evaluate_run(tmp_path / "nowhere", plugin_manager=pm)
    with pytest.raises(ConfigError, match="--split: 'test'"):
        evaluate_run(run_dir, split="test", plugin_manager=pm)
    with pytest.raises(ConfigError, match="only environment"):
        evaluate_run(run_dir, overrides=["model.preset=tiny"], plugin_manager=pm)
    with pytest.raises(ConfigError, match="unknown environment 'nope'"):
        evaluate_run(run_dir, env="nope", plugin_manager=pm)
