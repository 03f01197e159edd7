"""A tracker's memory inside the run directory: which remote run it writes to, and the last
step it logged, so that a resumed process continues the same run with monotonic steps.

Stored as ``<run_dir>/<name>_run.json`` (``{"run_id": "...", "last_step": 7}``), replaced
atomically after every logged step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class RunState:
    """The persisted run id and high-water step of one tracker in one run directory.

    When a run resumes from the checkpoint at step ``N`` after the crashed process had
    already logged steps up to ``M > N``, the steps ``N+1..M`` are logged again by the new
    process. Stores that cannot rewrite history (MLflow, W&B) skip them instead, keeping
    the values first logged: :meth:`should_log` answers False for those steps.
    """

    def __init__(self, run_dir: str | Path, name: str):
        self.path = Path(run_dir) / f"{name}_run.json"
        data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.run_id: str | None = data.get("run_id")
        self.last_step: int = int(data.get("last_step", -1))
        self._replay: tuple[int, int] | None = None

    def resume(self, step: int) -> None:
        """The trainer continues from the checkpoint at ``step``."""
        if self.last_step > step:
            self._replay = (step, self.last_step)

    def start(self, run_id: str) -> None:
        """A new remote run: nothing of it is logged yet, so nothing is skipped."""
        self.run_id, self.last_step, self._replay = run_id, -1, None
        self.save()

    def should_log(self, step: int) -> bool:
        """False for a step the interrupted process already logged past the checkpoint."""
        return self._replay is None or not (self._replay[0] < step <= self._replay[1])

    def logged(self, step: int) -> None:
        """Record that ``step`` reached the store."""
        if step > self.last_step:
            self.last_step = step
            self.save()

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"run_id": self.run_id, "last_step": self.last_step}))
        os.replace(tmp, self.path)
