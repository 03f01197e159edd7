"""The ``jsonl`` tracker: ``metrics.jsonl`` in the run directory (format: ``agent_lightning.metrics``)."""

from __future__ import annotations

from typing import Any, Mapping

from agent_lightning.hookspecs import hookimpl
from agent_lightning.metrics import MetricsWriter


class JsonlTracker:
    """Appends ``{"step": int, **metrics}`` lines to ``<run_dir>/metrics.jsonl``."""

    description = "metrics.jsonl in the run directory"

    def __init__(self, run_dir: str):
        self._writer = MetricsWriter(run_dir)
        self.path = self._writer.path

    def log_config(self, config: Mapping[str, Any]) -> None:
        return None  # config.yaml is written by the trainer

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self._writer.write(step, metrics)

    def log_artifact(self, path: str, name: str | None = None) -> None:
        return None

    def close(self) -> None:
        self._writer.close()


@hookimpl
def register_trackers(register):
    register("jsonl", JsonlTracker)
