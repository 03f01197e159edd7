"""Console tracker: a rich progress bar with ETA, one metrics line per step, a summary table."""

from __future__ import annotations

import sys
from typing import Any, Mapping

from agent_lightning.hookspecs import hookimpl

DEFAULT_KEYS = (
    "train/reward_mean", "train/success_rate", "train/pg_loss", "train/entropy", "train/kl",
    "train/failed_episodes", "train/tokens_per_s", "eval/success_rate", "eval/mean_reward",
)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class ConsoleTracker:
    """Progress bar (when the output is a terminal), a metrics line per step, a final table.

    Args:
        run_dir: The run directory (unused; trackers all receive it).
        keys: Metric names shown on each line (default: reward, success, loss, KL...).
        quiet: Only the final table.
    """

    description = "rich progress bar, one metrics line per step, summary table"
    display_only = True  # it prints; results computed after the run (alightning eval) are not sent here

    def __init__(self, run_dir: str = "", keys: list[str] | None = None, quiet: bool = False):
        from rich.console import Console

        self.console = Console(file=sys.stdout, highlight=False)
        self.keys = tuple(keys or DEFAULT_KEYS)
        self.quiet = quiet
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.progress: Any = None
        self.task: Any = None

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Starts the progress bar (terminals only) sized by ``trainer.steps``."""
        total = int(config.get("trainer", {}).get("steps", 0))
        if self.quiet or not self.console.is_terminal or not total:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=self.console, transient=True)
        self.task = self.progress.add_task("train", total=total)
        self.progress.start()

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.first.setdefault(key, value)
                self.last[key] = value
        if self.progress is not None and any(k.startswith("train/") for k in metrics):
            self.progress.update(self.task, completed=step)
        if self.quiet:
            return
        shown = [f"{k.split('/', 1)[-1] if k.startswith('train/') else k}={_fmt(metrics[k])}"
                 for k in self.keys if k in metrics]
        if shown:
            self.console.print(f"step {step:>4}  " + "  ".join(shown))

    def log_artifact(self, path: str, name: str | None = None) -> None:
        return None

    def close(self) -> None:
        from rich.table import Table

        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if not self.last:
            return
        table = Table(title="run summary")
        for column in ("metric", "first", "last"):
            table.add_column(column, justify="right" if column != "metric" else "left")
        for key in sorted(self.last):
            if key.startswith(("train/", "eval/")):
                table.add_row(key, _fmt(self.first[key]), _fmt(self.last[key]))
        self.console.print(table)


@hookimpl
def register_trackers(register):
    register("console", ConsoleTracker)
