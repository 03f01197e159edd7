"""Scoring finished episodes, one at a time, so that a bad reward fails one episode only."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, Sequence

from agent_lightning.types import RewardResult, Trajectory


def score(trajectories: Sequence[Trajectory], reward: Callable[[Trajectory], Any]) -> list[Trajectory]:
    """Trajectories with ``final_reward`` set; a reward that raises or returns a non-finite
    or non-numeric value marks that episode failed with the reason."""
    batched = _batch_scores(trajectories, reward)
    out = []
    for index, traj in enumerate(trajectories):
        if traj.failure is not None:
            out.append(traj)
            continue
        try:
            value = batched[index] if index in batched else reward(traj)
            if isinstance(value, BaseException):
                raise value
            components: dict[str, float] = {}
            if isinstance(value, RewardResult):
                components = {k: float(v) for k, v in value.components.items()}
                value = value.total
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"reward is {value}")
            out.append(dataclasses.replace(traj, final_reward=value, reward_components=components))
        except Exception as exc:  # noqa: BLE001 - any reward error fails this episode only
            reason = str(exc).splitlines()[0] if str(exc) else ""
            out.append(dataclasses.replace(traj, failure=f"reward failed: {type(exc).__name__}: {reason}".rstrip(": ")))
    return out


def _batch_scores(trajectories: Sequence[Trajectory], reward: Any) -> dict[int, Any]:
    """A reward with a ``batch(trajectories) -> list`` method scores every healthy episode in
    one call (an exception instance in the list fails that episode); if the call itself
    raises or miscounts, each episode is scored on its own instead."""
    batch = getattr(reward, "batch", None)
    healthy = [i for i, t in enumerate(trajectories) if t.failure is None]
    if not callable(batch) or not healthy:
        return {}
    try:
        values = list(batch([trajectories[i] for i in healthy]))
    except Exception as exc:  # noqa: BLE001 - fall back to one call per episode
        logging.getLogger("agent_lightning").warning("batched reward failed (%s); scoring one episode at a time",
                                                     type(exc).__name__)
        return {}
    return dict(zip(healthy, values)) if len(values) == len(healthy) else {}


def episode_metrics(trajectories: Sequence[Trajectory], prefix: str) -> dict[str, float]:
    """Success, reward, turns, tokens and failures over a set of episodes, plus the mean of
    every numeric ``info`` value the environment reported (``<prefix>/env/<key>``)."""
    n = len(trajectories)
    healthy = [t for t in trajectories if t.failure is None]
    metrics = {
        f"{prefix}/episodes": float(n),
        f"{prefix}/failed_episodes": float(n - len(healthy)),
        f"{prefix}/success_rate": sum(t.success for t in trajectories) / max(1, n),
        f"{prefix}/mean_reward": sum(t.final_reward for t in healthy) / max(1, len(healthy)),
        f"{prefix}/mean_turns": sum(len(t.turns) for t in trajectories) / max(1, n),
        f"{prefix}/tokens_per_episode": sum(len(t.token_ids) for t in trajectories) / max(1, n),
    }
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for traj in trajectories:
        for turn in traj.turns:
            for key, value in turn.info.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "success":
                    sums[key] = sums.get(key, 0.0) + float(value)
                    counts[key] = counts.get(key, 0) + 1
    metrics.update({f"{prefix}/env/{k}": sums[k] / counts[k] for k in sums})
    return metrics
