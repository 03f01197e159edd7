"""RLOO: leave-one-out baselines (with the sequence KL in the reward) by hand, the
REINFORCE gradient, registration, and learning on the quickstart game."""

from __future__ import annotations

import pytest
import torch

from agent_lightning.algorithms.rloo import RLOO
from agent_lightning.types import Task, Trajectory, Turn

TASK = Task(id="t", prompt=({"role": "user", "content": "x"},))


def _traj(tid, group, reward, lps):
    turns = tuple(Turn(action="a", action_token_ids=(5,), action_logprobs=(lp,), observation_token_ids=(9,))
                  for lp in lps)
    return Trajectory(id=tid, task=TASK, group=group, prompt_token_ids=(1, 2), turns=turns, final_reward=reward)


TRAJECTORIES = [_traj("a", 0, 1.0, [-1.0, -1.0]), _traj("b", 0, 0.0, [-1.0]), _traj("c", 0, 0.0, [-1.0]),
                _traj("d", 1, 1.0, [-1.0])]


class FakeBackend:
    def __init__(self, current, reference=None):
        self.current, self.reference = current, reference or {}
        self.leaf = None

    def token_logprobs(self, batch, *, temperature, with_entropy=False, reference=False):
        source = self.reference if reference else self.current
        self.leaf = torch.tensor([lp for tid in batch.trajectory_ids for lp in source[tid]], requires_grad=not reference)
        return self.leaf, torch.zeros_like(self.leaf)


def test_leave_one_out_advantages_by_hand():
    algo = RLOO(group_size=3)
    batch, _ = algo.advantages(FakeBackend({}), algo.prepare(TRAJECTORIES))
    # group 0 rewards 1, 0, 0: a = 1 - mean(0, 0) = 1; b = c = 0 - mean(1, 0) = -0.5; d is alone: 0.
    assert batch.advantages.tolist() == pytest.approx([1.0, 1.0, -0.5, -0.5, 0.0])


def test_sequence_kl_is_subtracted_from_the_reward_before_the_baseline():
    backend = FakeBackend({}, reference={"a": [-1.5, -1.0], "b": [-0.5], "c": [-1.0], "d": [-1.0]})
    algo = RLOO(group_size=3, kl_coef=0.5)
    batch, info = algo.advantages(backend, algo.prepare(TRAJECTORIES))
    # sequence k1 sums: a 0.5 + 0, b -0.5, c 0, d 0 -> scores 0.75, 0.25, 0 (group 0) and 1 (group 1)
    # a: 0.75 - (0.25 + 0) / 2 = 0.625; b: 0.25 - (0.75 + 0) / 2 = -0.125; c: 0 - (0.75 + 0.25) / 2 = -0.5
    assert batch.advantages.tolist() == pytest.approx([0.625, 0.625, -0.125, -0.5, 0.0])
    assert info["kl_reward"] == pytest.approx(0.0)
    in_loss = RLOO(group_size=3, kl_coef=0.5, kl_mode="loss")
    batch, info = in_loss.advantages(backend, in_loss.prepare(TRAJECTORIES))
    assert batch.advantages.tolist() == pytest.approx([1.0, 1.0, -0.5, -0.5, 0.0])
    assert "kl_reward" not in info


def test_on_policy_loss_is_the_reinforce_gradient():
    algo = RLOO(group_size=3)
    backend = FakeBackend({"a": [-1.0, -1.0], "b": [-1.0], "c": [-1.0], "d": [-1.0]})
    batch, _ = algo.advantages(backend, algo.prepare(TRAJECTORIES))
    loss, stats = algo.loss(backend, batch, norm_tokens=2)
    # ratio 1 everywhere: loss = mean(-A), gradient = -A / N per token
    assert float(loss.detach()) == pytest.approx(-(1.0 + 1.0 - 0.5 - 0.5 + 0.0) / 5)
    loss.backward()
    assert backend.leaf.grad.tolist() == pytest.approx([-0.2, -0.2, 0.1, 0.1, 0.0])


def test_registered_and_groups_of_one_are_rejected():
    from agent_lightning.config import ConfigError
    from agent_lightning.plugins import get_plugin_manager

    registry = get_plugin_manager().registries["algorithm"]
    assert {"ppo", "rloo", "reinforce++", "grpo"} <= set(registry.names())
    with pytest.raises(ConfigError, match=r"algorithm.group_size"):
        RLOO(group_size=1)
