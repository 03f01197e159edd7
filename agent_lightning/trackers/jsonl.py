"""``metrics.jsonl``: one JSON object per logged step, the run directory's source of truth."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from agent_lightning.hookspecs import hookimpl

METRICS_FILE = "metrics.jsonl"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; null keeps the line parseable
    return value


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of a run's ``metrics.jsonl``, in file order."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Drop records with ``step`` beyond ``step`` (left by an interrupted run before resuming),
    so the file reads as one uninterrupted run."""
    path = Path(run_dir) / METRICS_FILE
    if path.is_file():
        kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))


class JsonlTracker:
    """Appends ``{"step": int, **metrics}`` lines to ``<run_dir>/metrics.jsonl``."""

    description = "metrics.jsonl in the run directory"

    def __init__(self, run_dir: str):
        self.path = Path(run_dir) / METRICS_FILE
        self._handle = open(self.path, "a", buffering=1)

    def log_config(self, config: Mapping[str, Any]) -> None:
        return None  # config.yaml is written by the trainer

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        record = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
        self._handle.write(json.dumps(record) + "\n")

    def log_artifact(self, path: str, name: str | None = None) -> None:
        return None

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()


@hookimpl
def register_trackers(register):
    register("jsonl", JsonlTracker)
