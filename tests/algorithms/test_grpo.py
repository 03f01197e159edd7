"""GRPO advantages and loss against values computed by hand."""

from __future__ import annotations

import pytest
import torch

from agent_lightning.algorithms.grpo import GRPO
from agent_lightning.types import Task, Trajectory, Turn

TASK = Task(id="t", prompt=({"role": "user", "content": "x"},))


def _traj(tid, group, reward, action_ids, sampling_lps, obs=(9,)):
    turns = tuple(Turn(action="a", action_token_ids=(a,), action_logprobs=(lp,), observation_token_ids=obs)
                  for a, lp in zip(action_ids, sampling_lps))
    return Trajectory(id=tid, task=TASK, group=group, prompt_token_ids=(1, 2), turns=turns, final_reward=reward)


class FakeBackend:
    """Returns fixed 'current' log-probs per trajectory, as a leaf tensor we can inspect."""

    def __init__(self, current):
        self.current = current
        self.leaf = None

    def token_logprobs(self, batch, *, temperature, with_entropy=False, reference=False):
        values = [lp for tid in batch.trajectory_ids for lp in self.current[tid]]
        self.leaf = torch.tensor(values, requires_grad=True)
        return self.leaf, torch.zeros_like(self.leaf)


def test_group_advantages_grpo_and_drgrpo_by_hand():
    trajs = [_traj("a", 0, 1.0, [5], [-1.0]), _traj("b", 0, 0.0, [5], [-1.0]),
             _traj("c", 1, 2.0, [5], [-1.0]), _traj("d", 1, 2.0, [5], [-1.0]), _traj("e", 1, 5.0, [5], [-1.0])]
    batch = GRPO(group_size=2).prepare(trajs)
    # group 0: mean 0.5, unbiased std 0.70711 -> +-0.70711; group 1: mean 3, std sqrt(3) -> -0.57735, -0.57735, 1.1547
    assert batch.advantages.tolist() == pytest.approx([0.707106, -0.707106, -0.577350, -0.577350, 1.154700], abs=1e-5)
    batch = GRPO(group_size=2, advantage="drgrpo").prepare(trajs)
    assert batch.advantages.tolist() == pytest.approx([0.5, -0.5, -1.0, -1.0, 2.0])


def test_failed_episodes_are_left_out_of_groups_and_loss():
    good = [_traj("a", 0, 1.0, [5], [-1.0]), _traj("b", 0, 0.0, [5], [-1.0])]
    failed = Trajectory(id="f", task=TASK, group=0, prompt_token_ids=(1,), turns=good[0].turns,
                        final_reward=100.0, failure="environment step timed out")
    batch = GRPO().prepare(good + [failed])
    assert batch.trajectory_ids == ["a", "b"]
    assert batch.advantages.tolist() == pytest.approx([0.707106, -0.707106], abs=1e-5)


@pytest.mark.parametrize("aggregation, expected", [
    ("token-mean", (-0.781474 - 0.428882 + 0.781474) / 3),
    ("seq-mean-token-mean", ((-0.781474 - 0.428882) / 2 + 0.781474) / 2),
    ("seq-mean-token-sum", ((-0.781474 - 0.428882) + 0.781474) / (2 * 2)),
])
def test_clipped_loss_by_hand(aggregation, expected):
    # Trajectory a (A=+0.70711): ratios exp(0.1)=1.10517 (inside [0.8, 1.28]) and exp(-0.5)=0.60653
    # (below 0.8: min(0.60653*A, 0.8*A) keeps the unclipped 0.42888). Trajectory b (A=-0.70711):
    # ratio 1.10517 -> pg = +0.78147.
    trajs = [_traj("a", 0, 1.0, [5, 6], [-1.0, -2.0]), _traj("b", 0, 0.0, [7], [-0.5])]
    algo = GRPO(clip_low=0.2, clip_high=0.28, loss_aggregation=aggregation)
    batch = algo.prepare(trajs)
    backend = FakeBackend({"a": [-0.9, -2.5], "b": [-0.4]})
    loss, stats = algo.loss(backend, batch, norm_tokens=2)
    assert float(loss.detach()) == pytest.approx(expected, abs=1e-5)
    loss.backward()
    # Gradient of the surrogate: -A * ratio where unclipped (scaled by the aggregation weights).
    grad = backend.leaf.grad.tolist()
    weights = {"token-mean": [1 / 3] * 3, "seq-mean-token-mean": [0.25, 0.25, 0.5],
               "seq-mean-token-sum": [0.25, 0.25, 0.25]}[aggregation]
    manual = [-0.707107 * 1.105171 * weights[0], -0.707107 * 0.606531 * weights[1], 0.707107 * 1.105171 * weights[2]]
    assert grad == pytest.approx(manual, abs=1e-5)
    assert float(stats["clip_fraction"]) == pytest.approx(1 / 3)


def test_clipping_stops_the_gradient_outside_the_trust_region():
    trajs = [_traj("a", 0, 1.0, [5], [-1.0]), _traj("b", 0, 0.0, [7], [-1.0])]
    algo = GRPO(clip_low=0.2, clip_high=0.2)
    batch = algo.prepare(trajs)
    backend = FakeBackend({"a": [-0.5], "b": [-0.5]})  # ratio e^0.5=1.6487 for both
    loss, _ = algo.loss(backend, batch, norm_tokens=1)
    # a: A>0, ratio above 1.2 -> clipped, no gradient; b: A<0 -> min picks unclipped ratio*A, gradient flows.
    assert float(loss.detach()) == pytest.approx((-1.2 * 0.707107 + 1.648721 * 0.707107) / 2, abs=1e-5)
    loss.backward()
    assert backend.leaf.grad.tolist() == pytest.approx([0.0, 0.707107 * 1.648721 / 2], abs=1e-5)


def test_unknown_option_names_the_key():
    from agent_lightning.config import ConfigError

    with pytest.raises(ConfigError, match=r"unknown key 'algorithm.clip' \(allowed: "):
        GRPO(clip=0.1)


def test_filter_groups_leaves_out_groups_with_equal_rewards():
    trajs = [_traj("a", 0, 1.0, [5], [-1.0]), _traj("b", 0, 1.0, [5], [-1.0]),
             _traj("c", 1, 0.0, [5], [-1.0]), _traj("d", 1, 1.0, [5], [-1.0])]
    algo = GRPO(group_size=2, filter_groups=True)
    batch = algo.prepare(trajs)
    assert batch.trajectory_ids == ["c", "d"]
    assert batch.advantages.tolist() == pytest.approx([-0.707106, 0.707106], abs=1e-5)
    # The unfiltered run keeps all four; the kept fraction of groups is reported with the update.
    assert GRPO(group_size=2).prepare(trajs).trajectory_ids == ["a", "b", "c", "d"]
    assert algo._kept_fraction == 0.5


def test_filter_groups_with_nothing_informative_skips_the_update():
    algo = GRPO(group_size=2, filter_groups=True)
    assert algo.prepare([_traj("a", 0, 0.0, [5], [-1.0]), _traj("b", 0, 0.0, [5], [-1.0])]) is None
    assert algo.update(object(), None) == {"groups_kept_fraction": 0.0}
    assert algo.update(object(), None) == {}  # reported once per prepare
