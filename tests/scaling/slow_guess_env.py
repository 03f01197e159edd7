"""A guess-number environment that can be slow and tells when an episode starts.

Imported by Ray workers (the tests put this folder on their ``PYTHONPATH``): a task's
``reference`` may carry ``delay_s`` (sleep before every step) and ``marker`` (a file
touched at reset), so a test knows when a worker is in the middle of its episodes.
"""

from __future__ import annotations

import time
from pathlib import Path

from agent_lightning.envs.guess_number import GuessNumberEnv
from agent_lightning.types import Task


class SlowGuessEnv(GuessNumberEnv):
    def __init__(self, max_number: int = 6, max_turns: int = 3):
        super().__init__(max_number=max_number, max_turns=max_turns)
        self.delay_s = 0.0

    def reset(self, task: Task):
        self.delay_s = float(task.reference.get("delay_s", 0.0))
        marker = task.reference.get("marker")
        if marker:
            Path(marker).touch()
        return super().reset(task)

    def step(self, action: str):
        time.sleep(self.delay_s)
        return super().step(action)


def make_jobs(n: int, *, delay_s: float = 0.0, marker_dir: str | None = None, prefix: str = "ep"):
    """``n`` jobs over secrets 1..6 (two episodes per task, like a GRPO group of 2)."""
    env = SlowGuessEnv()
    prompt = env.tasks("train")[0].prompt
    jobs = []
    for i in range(n):
        secret = i // 2 % 6 + 1
        eid = f"{prefix}-{secret}/{i % 2}-{i}"
        reference = {"secret": secret, "delay_s": delay_s}
        if marker_dir:
            reference["marker"] = str(Path(marker_dir) / f"started-{i}")
        jobs.append((eid, Task(id=f"train-{secret}", prompt=prompt, reference=reference), i // 2))
    return jobs
