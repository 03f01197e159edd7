"""Count down from a start number, one number per turn.

Registered through the ``agent_lightning`` entry point, exactly like any outside plugin.
"""

from __future__ import annotations

import re

from agent_lightning.hookspecs import hookimpl
from agent_lightning.types import Observation, StepResult, Task

_INTEGER = re.compile(r"-?\d+")


class CountdownEnv:
    """Reply with the next number of a count-down each turn until reaching 1."""

    description = "count down to 1, one number per turn (example plugin)"

    def __init__(self, max_start: int = 6):
        if max_start < 2:
            raise ValueError(f"environment.max_start must be at least 2, got {max_start}")
        self.max_start = max_start
        self._expected = 0
        self._start = 0

    def tasks(self, split: str) -> list[Task]:
        starts = range(2, self.max_start + 1)
        return [
            Task(id=f"{split}-{start}", split=split, reference={"start": start},
                 prompt=({"role": "user", "content": f"{start}"},))
            for start in starts
        ]

    def reset(self, task: Task) -> Observation:
        self._start = int(task.reference["start"])
        self._expected = self._start - 1
        return Observation(task.prompt)

    def step(self, action: str) -> StepResult:
        match = _INTEGER.search(action)
        value = int(match.group()) if match else None
        if value != self._expected:
            done_so_far = self._start - 1 - self._expected
            return StepResult(None, done=True, info={"success": False, "progress": done_so_far})
        self._expected -= 1
        if self._expected == 0:
            return StepResult(None, reward=1.0, done=True, info={"success": True, "progress": self._start - 1})
        return StepResult(Observation.user(str(value)), info={"success": False})

    def close(self) -> None:
        self._expected = 0


def countdown_progress():
    """Fraction of the count-down the agent completed (1.0 for reaching 1)."""

    def reward(trajectory) -> float:
        start = int(trajectory.task.reference["start"])
        if not trajectory.turns:
            return 0.0
        # A wrong reply reports the progress made; an episode cut short made len(turns).
        progress = trajectory.turns[-1].info.get("progress", len(trajectory.turns))
        return min(1.0, progress / (start - 1))

    return reward


countdown_progress.description = "fraction of the count-down completed"


@hookimpl
def register_environments(register):
    register("countdown", CountdownEnv)


@hookimpl
def register_rewards(register):
    register("countdown-progress", countdown_progress)
