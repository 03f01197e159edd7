"""Replay buffer: what it keeps, what it evicts, seeded draws, importance weights, state."""

from __future__ import annotations

import math

import pytest
import torch

from agent_lightning.algorithms.common import clipped_surrogate
from agent_lightning.algorithms.grpo import GRPO
from agent_lightning.config import ConfigError, ReplayConfig, validate
from agent_lightning.loop import checkpoint as ckpt
from agent_lightning.loop.replay import ReplayBuffer, importance_weights
from agent_lightning.types import Task, Trajectory, Turn

TASKS = [Task(id=f"t{i}", prompt=({"role": "user", "content": f"guess {i}"},), reference={"secret": i}) for i in range(8)]


def _traj(tid, group, reward, lps, *, version=0, task=TASKS[0], failure=None, obs=(9, 10)):
    turns = tuple(Turn(action=f"a{k}", action_token_ids=(5 + k,), action_logprobs=(lp,), observation_token_ids=obs,
                       reward=0.25 * k, info={"invalid": 0.0, "note": "x"})
                  for k, lp in enumerate(lps))
    return Trajectory(id=tid, task=task, group=group, prompt_token_ids=(1, 2, 3), turns=turns, final_reward=reward,
                      reward_components={"env": reward}, success=reward > 0, failure=failure, policy_version=version)


def _step(step, version, groups=2, size=2):
    """One step's fresh trajectories: ``groups`` groups of ``size``; ids name the step."""
    return [_traj(f"s{step}-g{g}/{k}", g, float(k), [-1.0 - 0.1 * k], version=version, task=TASKS[g % 8])
            for g in range(groups) for k in range(size)]


class FakeBackend:
    """``version`` plus fixed current log-probs per episode id (replayed ids map to their source)."""

    def __init__(self, version=0, current=None):
        self.version = version
        self.current = current or {}
        self.modes = []

    def train_mode(self, training):
        self.modes.append(training)

    def token_logprobs(self, batch, *, temperature, with_entropy=False, reference=False):
        assert not torch.is_grad_enabled()
        values = [lp for tid in batch.trajectory_ids for lp in self.current[tid.split("/", 2)[-1]]]
        return torch.tensor(values), None


def _buffer(seed=0, **options):
    return ReplayBuffer(ReplayConfig(**{"capacity_steps": 2, "replay_ratio": 1.0, **options}), seed=seed, temperature=1.0)


def _sources(trajectories):
    return sorted({t.id.split("/")[1] for t in trajectories if t.id.startswith("replay/")})


def test_buffer_keeps_the_last_k_steps_and_replays_only_them():
    buffer = _buffer(capacity_steps=2, replay_ratio=10.0)  # ask for more than the buffer holds: everything
    for step in range(5):
        mixed = buffer.mix(_step(step, version=step), FakeBackend(version=step), step)
        assert _sources(mixed) == [str(s) for s in range(max(0, step - 2), step)]
        assert sorted(buffer.entries) == list(range(max(0, step - 1), step + 1))
        assert buffer.metrics["replay/size"] == 4.0 * len(buffer.entries)
        assert buffer.metrics["replay/fraction"] == pytest.approx(len(mixed[4:]) / len(mixed))
    assert len(mixed) == 4 + 8  # two earlier steps of two groups of two


def test_groups_are_replayed_whole_under_new_labels():
    buffer = _buffer(replay_ratio=0.5)
    buffer.mix(_step(0, 0, groups=4, size=3), FakeBackend(0), 0)
    fresh = _step(1, 1, groups=4, size=3)
    mixed = buffer.mix(fresh, FakeBackend(1), 1)
    replayed = mixed[len(fresh):]
    assert mixed[:len(fresh)] == fresh
    assert len(replayed) == 2 * 3  # round(0.5 * 4 fresh groups) whole groups of 3
    assert sorted({t.group for t in replayed}) == [4, 5]  # after the fresh labels 0..3
    for label in (4, 5):
        members = [t for t in replayed if t.group == label]
        assert len({t.id.split("/")[2].split("/")[0] for t in members}) == 1  # one source group
        assert sorted(t.final_reward for t in members) == [0.0, 1.0, 2.0]
    assert buffer.metrics["replay/staleness_mean"] == 1.0


def test_failed_episodes_are_not_stored():
    buffer = _buffer()
    step0 = _step(0, 0) + [_traj("bad/0", 2, 1.0, [-1.0], failure="environment step timed out")]
    buffer.mix(step0, FakeBackend(0), 0)
    assert len(buffer) == 4
    assert all(t.failure is None for groups in buffer.entries.values() for g in groups for t in g)


def test_stale_policy_versions_are_evicted():
    buffer = _buffer(capacity_steps=5, replay_ratio=10.0, max_staleness=3)
    for step in range(4):  # two optimizer steps per training step: versions 0, 2, 4, 6
        mixed = buffer.mix(_step(step, version=2 * step), FakeBackend(version=2 * step), step)
    # At version 6, versions 0 and 2 are older than 3 versions; only step 2 (version 4) is replayable.
    assert _sources(mixed) == ["2"]
    assert sorted(buffer.entries) == [2, 3]
    assert buffer.metrics["replay/staleness_mean"] == 2.0


def test_sampling_is_seeded_by_seed_and_step():
    def draws(seed):
        buffer = _buffer(seed=seed, capacity_steps=3, replay_ratio=0.25)
        out = []
        for step in range(6):
            mixed = buffer.mix(_step(step, step, groups=8), FakeBackend(step), step)
            out.append([t.id for t in mixed if t.id.startswith("replay/")])
        return out

    first, again, other = draws(0), draws(0), draws(1)
    assert first == again
    assert first != other
    assert all(len(ids) == 2 * 2 for ids in first[1:])  # round(0.25 * 8) groups of 2


def test_importance_weights_by_hand():
    current = torch.tensor([-1.0, -0.5, -2.0, -0.3])
    behaviour = torch.tensor([-1.2, -1.5, -1.0, -0.3])
    weights, truncated = importance_weights(current, behaviour, 2.0)
    # exp(0.2) = 1.221403, exp(1.0) = 2.718282 -> truncated to 2, exp(-1.0) = 0.367879, exp(0) = 1
    assert weights.tolist() == pytest.approx([1.221403, 2.0, 0.367879, 1.0], abs=1e-6)
    assert truncated.tolist() == [False, True, False, False]


def test_weigh_sets_weights_and_anchors_only_replayed_tokens():
    algo = GRPO(group_size=2)
    buffer = _buffer(replay_ratio=0.5, is_truncation=1.5)
    step0 = [_traj("a/0", 0, 1.0, [-1.0, -2.0]), _traj("a/1", 0, 0.0, [-1.2])]
    buffer.mix(step0, FakeBackend(0), 0)
    step1 = [_traj("b/0", 0, 1.0, [-0.7]), _traj("b/1", 0, 0.0, [-0.9])]
    current = {"a/0": [-0.8, -2.5], "a/1": [-0.5]}  # ratios exp(0.2), exp(-0.5); exp(0.7) = 2.01 > 1.5
    backend = FakeBackend(version=1, current=current)
    mixed = buffer.mix(step1, backend, 1)
    batch = buffer.weigh(algo.prepare(mixed), backend)
    assert batch.trajectory_ids == ["b/0", "b/1", "replay/0/a/0", "replay/0/a/1"]
    assert batch.extras["is_weights"].tolist() == pytest.approx([1.0, 1.0, math.exp(0.2), math.exp(-0.5), 1.5], abs=1e-6)
    assert batch.extras["behaviour_logprobs"].tolist() == pytest.approx([-0.7, -0.9, -1.0, -2.0, -1.2])
    assert batch.sampling_logprobs.tolist() == pytest.approx([-0.7, -0.9, -0.8, -2.5, -0.5])
    assert buffer.metrics["replay/is_weight_mean"] == pytest.approx((math.exp(0.2) + math.exp(-0.5) + 1.5) / 3, abs=1e-6)
    assert buffer.metrics["replay/is_truncated_fraction"] == pytest.approx(1 / 3)
    assert backend.modes == [False]  # eval mode for the no-grad pass (the fake has no model to restore)
    # Advantages are recomputed per group over this step's batch: each pair gets +-0.70711.
    assert batch.advantages.tolist() == pytest.approx([0.707107, -0.707107, 0.707107, 0.707107, -0.707107], abs=1e-5)
    sub = batch.select([3, 0])
    assert sub.extras["is_weights"].tolist() == pytest.approx([1.5, 1.0])
    assert batch.select(range(batch.num_sequences)) is batch  # every row in order: nothing to re-pack
    swapped = batch.select([1, 0, 2, 3])
    assert swapped is not batch and swapped.trajectory_ids[:2] == ["b/1", "b/0"]
    assert torch.equal(swapped.select([1, 0, 2, 3]).input_ids, batch.input_ids)


def test_grpo_loss_multiplies_the_importance_weights():
    class Current:
        def token_logprobs(self, batch, *, temperature, with_entropy=False, reference=False):
            leaf = batch.sampling_logprobs.clone().requires_grad_(True)  # ratio 1: pg = -A
            return leaf, torch.zeros_like(leaf)

    algo = GRPO(group_size=2)
    batch = algo.prepare([_traj("a", 0, 1.0, [-1.0]), _traj("b", 0, 0.0, [-1.0])])
    plain, _ = algo.loss(Current(), batch, norm_tokens=1)
    assert float(plain.detach()) == pytest.approx(0.0, abs=1e-6)  # -0.70711 + 0.70711
    batch.extras["is_weights"] = torch.tensor([0.5, 2.0])
    weighted, _ = algo.loss(Current(), batch, norm_tokens=1)
    assert float(weighted.detach()) == pytest.approx((-0.707107 * 0.5 + 0.707107 * 2.0) / 2, abs=1e-5)


def test_shared_surrogate_multiplies_the_importance_weights():
    logp, old, adv = torch.tensor([-1.0, -0.5]), torch.tensor([-1.1, -0.5]), torch.tensor([1.0, -2.0])
    plain, ratio, _ = clipped_surrogate(logp, old, adv, 0.2, 0.2)
    weighted, _, _ = clipped_surrogate(logp, old, adv, 0.2, 0.2, is_weights=torch.tensor([0.25, 3.0]))
    # ratio exp(0.1) = 1.105171 inside the clip range: pg = -1.105171 ; ratio 1: pg = +2
    assert plain.tolist() == pytest.approx([-1.105171, 2.0], abs=1e-6)
    assert weighted.tolist() == pytest.approx([-1.105171 * 0.25, 6.0], abs=1e-6)


def test_state_round_trip_through_a_checkpoint(tmp_path):
    buffer = _buffer(capacity_steps=3, replay_ratio=0.5)
    for step in range(3):
        buffer.mix(_step(step, step, groups=3, size=2), FakeBackend(step), step)
    ckpt.save_state({"replay": buffer.state_dict()}, tmp_path / "state")
    back = _buffer(capacity_steps=3, replay_ratio=0.5)
    back.load_state_dict(ckpt.load_state(tmp_path / "state")["replay"])
    assert back.entries == buffer.entries  # every field of every trajectory, task included
    assert back.entries[2][0][0].turns[0].action_logprobs == (-1.0,)
    nxt = _step(3, 3, groups=3, size=2)
    assert back.mix(nxt, FakeBackend(3), 3) == buffer.mix(nxt, FakeBackend(3), 3)
    empty = _buffer()
    assert empty.state_dict() == {}
    empty.load_state_dict(None)
    assert empty.entries == {}


def test_off_by_default_and_changes_nothing():
    config = validate({"environment": {"name": "guess-number"}})
    assert config.trainer.replay.capacity_steps == 0
    buffer = ReplayBuffer(config.trainer.replay, seed=0, temperature=1.0)
    fresh = _step(0, 0)
    assert buffer.mix(fresh, FakeBackend(0), 0) == fresh
    batch = GRPO(group_size=2).prepare(fresh)
    assert buffer.weigh(batch, FakeBackend(0)) is batch and "is_weights" not in batch.extras
    assert buffer.metrics == {} and buffer.entries == {}


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"trainer\.replay\.is_truncation"):
        validate({"environment": {"name": "guess-number"}, "trainer": {"replay": {"is_truncation": 0}}})
    with pytest.raises(ConfigError, match=r"unknown key 'trainer\.replay\.ratio'"):
        validate({"environment": {"name": "guess-number"}, "trainer": {"replay": {"ratio": 1}}})
