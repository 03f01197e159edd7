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


@hookimpl
def register_rewards(register):
    register("env-reward", env_reward)
    register("success", success_reward)
