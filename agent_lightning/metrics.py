"""``metrics.jsonl``: one JSON object per logged step, the run directory's source of truth.

The core owns the file's format: the ``jsonl`` tracker writes it through
:class:`MetricsWriter`, the trainer truncates it on resume, and evaluation and reports read
it, so none of them depends on a tracker that a user may block.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

METRICS_FILE = "metrics.jsonl"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; null keeps the line parseable
    return value


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of a run's ``metrics.jsonl``, in file order (``[]`` when there is none)."""
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


class MetricsWriter:
    """Appends ``{"step": int, **metrics}`` lines (NaN/inf written as ``null``), line-buffered."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / METRICS_FILE
        self._handle = open(self.path, "a", buffering=1)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        record = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
        self._handle.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()
