"""Rewards read from the environment itself."""

from __future__ import annotations

from agent_lightning.hookspecs import hookimpl
from agent_lightning.types import Trajectory


def env_reward(scale: float = 1.0):
    """The sum of the environment's step rewards, times ``scale``."""

    def reward(trajectory: Trajectory) -> float:
        return scale * sum(trajectory.step_rewards)

    return reward


env_reward.description = "sum of the environment's step rewards"  # type: ignore[attr-defined]


def success_reward(success: float = 1.0, failure: float = 0.0):
    """``success`` when the environment reported success on the last step, else ``failure``."""

    def reward(trajectory: Trajectory) -> float:
        return success if trajectory.success else failure

    return reward


success_reward.description = "1 when the environment reports success, else 0"  # type: ignore[attr-defined]


def env_info_reward(key: str, turns: str = "all", scale: float = 1.0, cap: float | None = None):
    """A number the environment reports in each step's ``info`` (e.g. the tool-use
    environment's ``valid_calls``), summed over the chosen turns, capped, times ``scale``.

    Args:
        key: The ``info`` key; a turn without it counts 0, a non-numeric value is an error
            that names the key.
        turns: ``"all"``, ``"first"`` or ``"last"``.
        cap: Upper bound of the sum before scaling (``1`` turns a count into "at least one").
    """
    if turns not in ("all", "first", "last"):
        raise ValueError(f"reward.turns must be 'all', 'first' or 'last', got {turns!r}")

    def reward(trajectory: Trajectory) -> float:
        chosen = list(trajectory.turns)
        chosen = chosen[:1] if turns == "first" else chosen[-1:] if turns == "last" else chosen
        total = 0.0
        for turn in chosen:
            value = turn.info.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"reward env-info: info[{key!r}] is {type(value).__name__}, expected a number")
            total += float(value)
        return scale * (min(total, cap) if cap is not None else total)

    return reward


env_info_reward.description = "a number from the environment's step info (e.g. valid tool calls), summed"  # type: ignore[attr-defined]


@hookimpl
def register_rewards(register):
    register("env-reward", env_reward)
    register("success", success_reward)
    register("env-info", env_info_reward)
