"""Statistics of an evaluation: success with a Wilson interval, unbiased pass@k, and the
per-episode averages, computed from scored trajectories.

Everything here is plain Python over ``Trajectory`` objects (no torch), so the numbers can
be checked by hand.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Sequence

from agent_lightning.types import Trajectory

Z_95 = 1.959963984540054
"""The two-sided 95 % standard normal quantile."""


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n``.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 or n
    successes. ``n == 0`` gives the uninformative ``(0.0, 1.0)``.
    """
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: successes={successes} is not between 0 and n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # At 0 (n) successes the bound is exactly 0 (1); computed, it misses by rounding.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from ``n`` samples of one task, ``c`` of them correct:
    ``1 - C(n - c, k) / C(n, k)`` (the chance that ``k`` samples drawn without replacement
    from the ``n`` include a correct one)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # The product form avoids huge binomials: C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i).
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def pass_ks(samples: int) -> list[int]:
    """The k reported for ``samples`` samples per task: 1, powers of two below, and ``samples``."""
    ks = {1, samples}
    k = 2
    while k < samples:
        ks.add(k)
        k *= 2
    return sorted(ks)


def unsuccessful_reason(traj: Trajectory) -> str | None:
    """Why an episode did not succeed: its failure (environment error, timeout, reward
    error...), ``"no success"`` for a healthy episode that ended unsolved, ``None`` if it
    succeeded."""
    if traj.failure is not None:
        return traj.failure
    return None if traj.success else "no success"


def summarize(trajectories: Sequence[Trajectory], *, samples: int = 1) -> dict[str, Any]:
    """The numbers of one evaluation of one policy.

    Args:
        trajectories: Scored episodes; several may share a task (``traj.task.id``).
        samples: ``k`` of the reported pass@k; every task needs at least ``k`` episodes.

    Returns:
        ``episodes``, ``successes``, ``success_rate`` (failed episodes count as unsolved),
        ``success_ci`` (95 % Wilson, ``[low, high]``), ``mean_reward`` (over healthy
        episodes, as in training metrics), ``pass_at_k`` (``{"1": ..., str(k): ...}``, the
        unbiased estimator per task averaged over tasks), ``tasks``, ``mean_turns``,
        ``tokens_per_episode`` (whole stream: prompt, actions and observations),
        ``policy_tokens_per_episode``, ``failed_episodes`` and ``outcomes`` (count per
        reason an episode did not succeed, see ``unsuccessful_reason``).
    """
    n = len(trajectories)
    successes = sum(1 for t in trajectories if t.success)
    healthy = [t for t in trajectories if t.failure is None]
    per_task: dict[str, list[bool]] = {}
    for traj in trajectories:
        per_task.setdefault(traj.task.id, []).append(bool(traj.success))
    short = {task: len(v) for task, v in per_task.items() if len(v) < samples}
    if short:
        task, count = next(iter(short.items()))
        raise ValueError(f"pass@{samples} needs {samples} episodes of every task; task '{task}' has {count}")
    pass_at = {
        str(k): sum(pass_at_k(len(v), sum(v), k) for v in per_task.values()) / max(1, len(per_task))
        for k in pass_ks(samples)
    } if n else {}
    low, high = wilson_interval(successes, n)
    reasons = Counter(r for r in map(unsuccessful_reason, trajectories) if r is not None)
    return {
        "episodes": n,
        "tasks": len(per_task),
        "successes": successes,
        "success_rate": successes / n if n else 0.0,
        "success_ci": [low, high],
        "mean_reward": sum(t.final_reward for t in healthy) / len(healthy) if healthy else 0.0,
        "pass_at_k": pass_at,
        "mean_turns": sum(len(t.turns) for t in trajectories) / n if n else 0.0,
        "tokens_per_episode": sum(len(t.token_ids) for t in trajectories) / n if n else 0.0,
        "policy_tokens_per_episode": sum(t.num_policy_tokens for t in trajectories) / n if n else 0.0,
        "failed_episodes": n - len(healthy),
        "outcomes": dict(sorted(reasons.items(), key=lambda item: (-item[1], item[0]))),
    }


def tracker_metrics(result: dict[str, Any], prefix: str = "ckpt_eval") -> dict[str, float]:
    """Flat numeric metrics of one ``summarize`` result for trackers (names without ``@``,
    which MLflow rejects: ``pass_at_4``)."""
    out = {f"{prefix}/{key}": float(result[key]) for key in
           ("episodes", "success_rate", "mean_reward", "mean_turns", "tokens_per_episode",
            "policy_tokens_per_episode", "failed_episodes")}
    out[f"{prefix}/success_ci_low"], out[f"{prefix}/success_ci_high"] = map(float, result["success_ci"])
    out.update({f"{prefix}/pass_at_{k}": float(v) for k, v in result["pass_at_k"].items()})
    return out
