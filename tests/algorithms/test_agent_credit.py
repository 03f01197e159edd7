"""Credit for agent episodes: segments weigh like one episode; per-call rewards reach their calls."""

from __future__ import annotations

import math

import pytest
import torch

from agent_lightning import ops
from agent_lightning.algorithms import credit
from agent_lightning.algorithms.grpo import GRPO
from agent_lightning.types import Task, Trajectory, Turn

TASK = Task(id="t", prompt=())


def _traj(episode: str, group: int, reward: float, calls: list[tuple[int, float | None]], *, segment=0, segments=1):
    turns = tuple(Turn(action="x", action_token_ids=tuple(range(n)), action_logprobs=tuple(-0.1 for _ in range(n)),
                       reward=r or 0.0, info={"call_reward": r}) for n, r in calls)
    return Trajectory(id=f"{episode}#{segment}", task=TASK, group=group, prompt_token_ids=(1,), turns=turns,
                      final_reward=reward, info={"episode": episode, "segment": segment, "segments": segments,
                                                 "call_rewards": any(r is not None for _, r in calls)})


def test_without_segments_or_call_rewards_it_is_grpo():
    trajs = [_traj(f"e{i}", i // 4, r, [(2, None), (1, None)]) for i, r in enumerate([1, 0, 0, 1, 0, 0, 0, 1])]
    got = credit.token_advantages(trajs, "grpo")
    expected = ops.group_advantages(torch.tensor([t.final_reward for t in trajs]), torch.tensor([t.group for t in trajs]))
    for tokens, adv in zip(got, expected.tolist()):
        assert tokens == pytest.approx([adv] * 3, abs=1e-5)


def test_a_segmented_episode_counts_once_in_its_group():
    a0 = _traj("a", 0, 1.0, [(2, None)], segment=0, segments=2)
    a1 = _traj("a", 0, 1.0, [(3, None)], segment=1, segments=2)
    b = _traj("b", 0, 0.0, [(2, None)])
    adv = credit.token_advantages([a0, a1, b], "grpo", eps=0.0)
    # Two episodes (1 and 0): mean 0.5, sample std sqrt(0.5). As three sequences it would be 2/3 and 0.577.
    assert adv[0] == pytest.approx([0.5 / math.sqrt(0.5)] * 2)
    assert adv[1] == pytest.approx([0.5 / math.sqrt(0.5)] * 3)
    assert adv[2] == pytest.approx([-0.5 / math.sqrt(0.5)] * 2)
    scaled = credit.token_advantages([a0, a1, b], "drgrpo", per_sequence_loss=True)
    assert scaled[0] == pytest.approx([0.25] * 2) and scaled[2] == pytest.approx([-0.5] * 2)


def test_per_call_rewards_reach_their_own_calls():
    a = _traj("a", 0, 0.0, [(2, 1.0), (1, 0.0)])  # a good first call, a bad second one
    b = _traj("b", 0, 0.0, [(1, 0.0)])
    adv = credit.token_advantages([a, b], "drgrpo")
    # Episode scores: a = mean(1, 0) = 0.5, b = 0; baseline 0.25.
    assert adv[0] == pytest.approx([0.75, 0.75, -0.25]) and adv[1] == pytest.approx([-0.25])
    loo = credit.token_advantages([a, b], "rloo")
    assert loo[0] == pytest.approx([1.0, 1.0, 0.0]) and loo[1] == pytest.approx([-0.5])


def test_grpo_uses_agent_credit_for_agent_episodes():
    a0 = _traj("a", 0, 1.0, [(2, None)], segment=0, segments=2)
    a1 = _traj("a", 0, 1.0, [(3, None)], segment=1, segments=2)
    b = _traj("b", 0, 0.0, [(2, None)])
    batch = GRPO(group_size=2, advantage="drgrpo").prepare([a0, a1, b])
    assert batch.advantages.tolist() == pytest.approx([0.5] * 5 + [-0.5] * 2)
