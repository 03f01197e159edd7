"""REINFORCE++: KL-penalised per-token rewards, returns-to-go through the masks and global
batch normalisation by hand, the group-mean baseline, and learning on the quickstart game."""

from __future__ import annotations

import statistics

import pytest
import torch

from agent_lightning.algorithms.reinforce_pp import ReinforcePP
from agent_lightning.types import Task, Trajectory, Turn

TASK = Task(id="t", prompt=({"role": "user", "content": "x"},))


def _turn(ids, lps, obs=(), reward=0.0):
    return Turn(action="a", action_token_ids=tuple(ids), action_logprobs=tuple(lps),
                observation_token_ids=tuple(obs), reward=reward)


def _trajectories():
    # a: two sampled tokens, two observation tokens, one sampled token; b: one sampled token.
    a = Trajectory(id="a", task=TASK, group=0, prompt_token_ids=(1, 2), final_reward=1.0,
                   turns=(_turn([5, 6], [-1.0, -1.0], obs=(9, 9), reward=0.5), _turn([7], [-1.0])))
    b = Trajectory(id="b", task=TASK, group=0, prompt_token_ids=(1,), final_reward=0.0,
                   turns=(_turn([8], [-0.5]),))
    return [a, b]


class FakeBackend:
    def __init__(self, reference):
        self.reference = reference

    def token_logprobs(self, batch, *, temperature, with_entropy=False, reference=False):
        assert reference, "only the reference pass happens before the update"
        out = torch.tensor([lp for tid in batch.trajectory_ids for lp in self.reference[tid]])
        return out, None


REFERENCE = {"a": [-1.5, -1.0, -0.5], "b": [-0.7]}


def test_kl_in_reward_returns_to_go_and_global_whitening_by_hand():
    algo = ReinforcePP(kl_coef=0.1)
    batch, info = algo.advantages(FakeBackend(REFERENCE), algo.prepare(_trajectories()))
    # k1 = sampled - ref: a [0.5, 0, -0.5], b [0.2] -> rewards a [-0.05, 0, 1 + 0.05], b [-0.02]
    # returns-to-go (gamma 1; the observation tokens add nothing): a [1.0, 1.05, 1.05], b [-0.02]
    returns = [1.0, 1.05, 1.05, -0.02]
    assert batch.extras["returns"].tolist() == pytest.approx(returns, abs=1e-6)
    mean, std = statistics.mean(returns), statistics.stdev(returns)
    assert batch.advantages.tolist() == pytest.approx([(g - mean) / std for g in returns], abs=1e-5)
    assert info["kl_reward"] == pytest.approx(0.05)  # mean k1 = (0.5 + 0 - 0.5 + 0.2) / 4


def test_group_mean_baseline_step_rewards_and_discount():
    algo = ReinforcePP(kl_coef=0.0, baseline="group-mean", step_rewards=True, gamma=0.5)
    batch = algo.prepare(_trajectories())
    assert batch.extras["turn_rewards"].tolist() == [0.0, 0.5, 0.0, 0.0]  # a's first turn earned 0.5
    batch, _ = algo.advantages(None, batch)  # no KL: the backend is not needed
    # finals 1 and 0 in one group -> 0.5 and -0.5, on each sequence's last token
    assert batch.extras["token_rewards"].tolist() == pytest.approx([0.0, 0.5, 0.5, -0.5])
    returns = [0.5 * 0.5 + 0.25 * 0.5, 0.5 + 0.5 * 0.5, 0.5, -0.5]
    assert batch.extras["returns"].tolist() == pytest.approx(returns)


def test_defaults_put_the_kl_in_the_reward():
    config = ReinforcePP().config
    assert (config.kl_coef, config.kl_mode, config.group_size) == (0.01, "reward", 1)
