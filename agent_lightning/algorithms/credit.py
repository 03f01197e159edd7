"""Credit for agent episodes: episodes split into segments, and rewards per call.

An agent episode (the policy endpoint) may be several token streams (segments: the agent
rewrote its history) and may carry a reward per call (``Turn.info["call_reward"]``). The
group-relative algorithms then work on *episodes* and *calls*, not on streams:

* an episode's score is the mean of its calls' rewards, where a call without its own reward
  takes the episode's (``final_reward``) — so without per-call rewards the score is the
  episode reward, exactly as for an environment episode;
* the group baseline (mean, and std for ``grpo``) is over the group's episodes, each counted
  once however many segments it has;
* a call's advantage is its own reward against that baseline:
  ``grpo``: ``(c - mean) / (std + eps)``; ``drgrpo``: ``c - mean``; ``rloo``: ``c`` minus the
  mean of the *other* episodes' scores;
* with a per-sequence loss aggregation, each segment's advantages are divided by the
  episode's segment count, so a segmented episode weighs in the loss like an episode of one
  (with ``token-mean`` no scaling is needed: every sampled token is in exactly one segment).

Groups with one episode get advantage 0, as in ``ops.group_advantages``.
"""

from __future__ import annotations

import math
from typing import Sequence

from agent_lightning.types import Trajectory


def is_agent_batch(trajectories: Sequence[Trajectory]) -> bool:
    """Whether these are agent episodes (segments or per-call rewards need this module)."""
    return any("episode" in t.info for t in trajectories)


def call_rewards(trajectory: Trajectory) -> list[float]:
    """One reward per turn (call): its own when the agent gave one, else the episode's."""
    out = []
    for turn in trajectory.turns:
        own = turn.info.get("call_reward") if trajectory.info.get("call_rewards") else None
        out.append(float(own) if own is not None else float(trajectory.final_reward))
    return out


def token_advantages(trajectories: Sequence[Trajectory], mode: str, *, eps: float = 1e-6,
                     per_sequence_loss: bool = False) -> list[list[float]]:
    """Per trajectory, one advantage per policy token (see the module docstring).

    Args:
        trajectories: Healthy trajectories (segments of one episode share ``info["episode"]``
            and ``group``).
        mode: ``"grpo"``, ``"drgrpo"`` or ``"rloo"``.
        per_sequence_loss: The loss averages per sequence: scale segments by ``1 / segments``.
    """
    if mode not in ("grpo", "drgrpo", "rloo"):
        raise ValueError(f"credit.token_advantages: unknown mode {mode!r}; allowed: grpo, drgrpo, rloo")
    per_traj = [call_rewards(t) for t in trajectories]
    episodes: dict[tuple[int, str], list[float]] = {}
    for t, rewards in zip(trajectories, per_traj):
        episodes.setdefault((t.group, str(t.info.get("episode", t.id))), []).extend(rewards)
    scores = {key: sum(v) / len(v) for key, v in episodes.items() if v}
    by_group: dict[int, list[float]] = {}
    for (group, _), score in scores.items():
        by_group.setdefault(group, []).append(score)
    out = []
    for t, rewards in zip(trajectories, per_traj):
        group_scores = by_group.get(t.group, [])
        n = len(group_scores)
        key = (t.group, str(t.info.get("episode", t.id)))
        if n < 2 or key not in scores:
            values = [0.0] * len(rewards)
        else:
            mean = sum(group_scores) / n
            if mode == "rloo":
                others = (sum(group_scores) - scores[key]) / (n - 1)
                values = [c - others for c in rewards]
            elif mode == "drgrpo":
                values = [c - mean for c in rewards]
            else:
                std = math.sqrt(sum((s - mean) ** 2 for s in group_scores) / (n - 1))
                values = [(c - mean) / (std + eps) for c in rewards]
        scale = 1.0 / max(1, int(t.info.get("segments", 1))) if per_sequence_loss else 1.0
        tokens: list[float] = []
        for turn, value in zip(t.turns, values):
            tokens.extend([value * scale] * len(turn.action_token_ids))
        out.append(tokens)
    return out
