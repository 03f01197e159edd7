"""Seeded, resumable task sampling: a fresh shuffle of the task list every epoch."""

from __future__ import annotations

import random
from typing import Any, Sequence

from agent_lightning.types import Task


class TaskSampler:
    """Yields tasks in a per-epoch shuffled order; its state is two integers."""

    def __init__(self, tasks: Sequence[Task], seed: int):
        if not tasks:
            raise ValueError("the environment has no training tasks")
        self.tasks = list(tasks)
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.tasks)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next(self, count: int) -> list[Task]:
        out = []
        while len(out) < count:
            if self.position == len(self.tasks):
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
            out.append(self.tasks[self._order[self.position]])
            self.position += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)
