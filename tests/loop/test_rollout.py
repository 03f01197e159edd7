"""Token-in/token-out rollouts and per-episode failure isolation, on a real tiny policy."""

from __future__ import annotations

import concurrent.futures as futures
import dataclasses
import math
import threading
import time

import pytest

from agent_lightning.hookspecs import hookimpl
from agent_lightning.loop.batch import InvariantError, check_invariants
from agent_lightning.loop.rollout import EnvPool, play
from agent_lightning.loop.trainer import Trainer, TrainingAborted
from agent_lightning.plugins import build_plugin_manager
from agent_lightning.types import Observation, StepResult, Task


@pytest.fixture(scope="module")
def backend():
    from agent_lightning.backends.transformers.backend import TransformersBackend
    from agent_lightning.config import BackendConfig, ModelConfig

    return TransformersBackend(ModelConfig(preset="tiny", preset_options={"hidden_size": 32, "num_layers": 1, "num_heads": 2}),
                               BackendConfig(device="cpu"), seed=0)


def _episodes(backend, env_factory, n=6, timeout=5.0, **sampling):
    from agent_lightning.config import SamplingConfig

    env = env_factory()
    tasks = env.tasks("train")
    pool = EnvPool(env_factory)
    jobs = [(f"ep{i}", tasks[i % len(tasks)], i) for i in range(n)]
    with futures.ThreadPoolExecutor(4) as executor:
        return play(backend, pool, jobs, sampling=SamplingConfig(**{"max_new_tokens": 3, "max_turns": 4, **sampling}),
                    temperature=1.0, step_timeout_s=timeout,
                    policy_version=0, executor=executor)


def test_episodes_that_start_from_the_same_messages_encode_them_once(backend, monkeypatch):
    from agent_lightning.envs.guess_number import GuessNumberEnv

    calls = []
    original = backend.encode_prompt
    monkeypatch.setattr(backend, "encode_prompt", lambda messages, **kw: calls.append(messages) or original(messages, **kw))
    trajs = _episodes(backend, lambda: GuessNumberEnv(max_number=6, max_turns=4), n=12)
    distinct = {repr(t.task.prompt) for t in trajs}
    assert len(calls) == len(distinct) < len(trajs)
    for traj in trajs:  # each episode still has its own, correct prompt
        assert list(traj.prompt_token_ids) == list(original(traj.task.prompt))


def test_stream_is_prompt_then_sampled_ids_then_observation_tokens(backend):
    from agent_lightning.envs.guess_number import GuessNumberEnv

    trajs = _episodes(backend, lambda: GuessNumberEnv(max_number=6, max_turns=4))
    check_invariants(trajs, vocab_size=len(backend.tokenizer), decode=backend.decode)
    for traj in trajs:
        expected = list(backend.encode_prompt(traj.task.prompt))
        assert list(traj.prompt_token_ids) == expected
        for turn in traj.turns:
            expected += list(turn.action_token_ids) + list(turn.observation_token_ids)
            assert turn.action == backend.decode(turn.action_token_ids)
        assert traj.token_ids == expected
        mask = traj.policy_mask
        assert sum(mask) == sum(len(t.action_token_ids) for t in traj.turns)
        # Observation tokens render the environment's hint in the chat template.
        for turn in traj.turns[:-1]:
            text = backend.tokenizer.decode(list(turn.observation_token_ids))
            assert "<|user|>" in text and text.rstrip().endswith("<|assistant|>")


def test_sampling_logprobs_match_training_recomputation(backend):
    from agent_lightning.envs.guess_number import GuessNumberEnv
    from agent_lightning.loop.batch import pack_trajectories

    trajs = [t for t in _episodes(backend, lambda: GuessNumberEnv(max_number=6, max_turns=4)) if t.turns]
    batch = pack_trajectories(trajs, [[0.0] * t.num_policy_tokens for t in trajs])
    logp, _ = backend.token_logprobs(batch, temperature=1.0)
    assert logp.shape == batch.sampling_logprobs.shape
    assert (logp.detach() - batch.sampling_logprobs).abs().max() < 1e-4


def test_invariant_violation_names_the_trajectory(backend):
    from agent_lightning.envs.guess_number import GuessNumberEnv

    traj = _episodes(backend, lambda: GuessNumberEnv(max_number=6, max_turns=2), n=1)[0]
    retokenised = dataclasses.replace(traj.turns[0], action=traj.turns[0].action + " extra")
    broken = dataclasses.replace(traj, turns=(retokenised, *traj.turns[1:]))
    with pytest.raises(InvariantError, match="trajectory 'ep0' turn 0: the action text is not the decoding"):
        check_invariants([broken], vocab_size=len(backend.tokenizer), decode=backend.decode)
    bad_lp = dataclasses.replace(traj.turns[0], action_logprobs=(math.nan,) * len(traj.turns[0].action_token_ids))
    with pytest.raises(InvariantError, match="'ep0' turn 0: a sampling log-prob is not a finite value"):
        check_invariants([dataclasses.replace(traj, turns=(bad_lp,))], vocab_size=len(backend.tokenizer))
    out_of_vocab = dataclasses.replace(traj, prompt_token_ids=(10_000,) + traj.prompt_token_ids)
    with pytest.raises(InvariantError, match="token id 10000 is outside the vocabulary"):
        check_invariants([out_of_vocab], vocab_size=len(backend.tokenizer))


class FlakyEnv:
    """Raises on the step of secret 2, hangs on secret 3, behaves otherwise."""

    description = "test env"

    def __init__(self):
        self.secret = None

    def tasks(self, split):
        return [Task(id=f"{split}-{i}", prompt=({"role": "user", "content": "guess"},), reference={"secret": i}, split=split)
                for i in (1, 2, 3, 4)]

    def reset(self, task):
        self.secret = task.reference["secret"]
        return Observation(task.prompt)

    def step(self, action):
        if self.secret == 2:
            raise ConnectionError("backend service went away")
        if self.secret == 3:
            time.sleep(3)
        return StepResult(Observation.user("again"), reward=1.0, done=False, info={"success": False})

    def close(self):
        pass


def test_env_that_raises_or_hangs_fails_only_that_episode(backend):
    trajs = _episodes(backend, FlakyEnv, n=4, timeout=0.5)
    failures = {t.task.reference["secret"]: t.failure for t in trajs}
    assert failures[1] is None and failures[4] is None
    assert failures[2] == "environment step raised ConnectionError: backend service went away"
    assert failures[3] == "environment step timed out"
    assert len([t for t in trajs if t.failure is None][0].turns) == 4


class InlineEnv(FlakyEnv):
    """Declares ``inline``: records the thread of every call; raises on the reset of secret 4."""

    inline = True
    threads: set = set()

    def reset(self, task):
        InlineEnv.threads.add(threading.get_ident())
        if task.reference["secret"] == 4:
            raise KeyError("no such secret")
        return super().reset(task)

    def step(self, action):
        InlineEnv.threads.add(threading.get_ident())
        if self.secret == 3:  # an inline env has no step timeout: it must not hang, so it does not here
            return StepResult(None, reward=0.0, done=True, info={"success": True})
        return super().step(action)


def test_an_inline_env_is_stepped_in_the_loops_thread_and_still_fails_only_that_episode(backend):
    from agent_lightning.loop.rollout import runs_inline

    InlineEnv.threads = set()
    trajs = _episodes(backend, InlineEnv, n=4, timeout=0.5)
    assert InlineEnv.threads == {threading.get_ident()}
    failures = {t.task.reference["secret"]: t.failure for t in trajs}
    assert failures[1] is None and failures[3] is None
    assert failures[2] == "environment step raised ConnectionError: backend service went away"
    assert failures[4] == "environment reset raised KeyError: 'no such secret'"
    assert len([t for t in trajs if t.task.reference["secret"] == 1][0].turns) == 4
    assert runs_inline(InlineEnv()) and not runs_inline(FlakyEnv())


class FlakyPlugin:
    @hookimpl
    def register_environments(self, register):
        register("flaky", FlakyEnv)

    @hookimpl
    def register_rewards(self, register):
        def nan_for_secret_4():
            return lambda traj: math.nan if traj.task.reference["secret"] == 4 else 1.0

        register("nan-sometimes", nan_for_secret_4)


def test_run_survives_failed_episodes_and_counts_them(tiny_config, tmp_path):
    from agent_lightning.metrics import read_metrics

    pm = build_plugin_manager(autoload=False, extra_plugins=[("flaky", FlakyPlugin())])
    config = tiny_config(environment={"name": "flaky"}, reward={"name": "nan-sometimes"},
                         trainer={"steps": 2, "batch_size": 4, "step_timeout_s": 0.5, "max_failure_rate": 0.9, "eval_episodes": 4},
                         sampling={"max_turns": 2})
    result = Trainer(config, tmp_path / "run", plugin_manager=pm).run()
    assert result.steps == 2
    train = [r for r in read_metrics(tmp_path / "run") if "train/failed_episodes" in r]
    # Each step plays every task 4 times: secrets 2 (raises), 3 (hangs), 4 (NaN reward) fail.
    assert [r["train/failed_episodes"] for r in train] == [12.0, 12.0]
    assert all(r["train/episodes"] == 16.0 for r in train)
    lines = (tmp_path / "run" / "trajectories" / "step-1.jsonl").read_text()
    assert "reward failed: ValueError: reward is nan" in lines or "environment step" in lines


def test_run_aborts_past_the_failure_rate(tiny_config, tmp_path):
    pm = build_plugin_manager(autoload=False, extra_plugins=[("flaky", FlakyPlugin())])
    config = tiny_config(environment={"name": "flaky"}, reward={"name": "nan-sometimes"},
                         trainer={"steps": 2, "step_timeout_s": 0.5, "max_failure_rate": 0.5, "eval_episodes": 4},
                         sampling={"max_turns": 2})
    with pytest.raises(TrainingAborted, match=r"step 1: 12 of 16 episodes failed, more than trainer.max_failure_rate=0.5; reasons: environment step raised ConnectionError"):
        Trainer(config, tmp_path / "run", plugin_manager=pm).run()
