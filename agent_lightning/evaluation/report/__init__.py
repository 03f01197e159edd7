"""Run reports: PNG plots and a one-page self-contained HTML summary (``alightning report``),
and trajectories in the terminal (``alightning show``).

    write_report(run_dir)  ->  <run>/report/{reward,success,kl,entropy,loss,tokens_per_s,
                                eval_checkpoints}.png (those with data) + report.html
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_lightning.evaluation.report.plots import Plot


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    plots: list[Plot]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_report(run_dir: str | Path, output_dir: str | Path | None = None, trajectories: int = 3) -> ReportFiles:
    """Write the plots and ``report.html`` of a run into ``output_dir`` (default ``<run>/report``).

    Args:
        run_dir: A run directory (``config.yaml``, ``metrics.jsonl``; ``eval/results.json``
            and ``trajectories/`` when present).
        trajectories: Trajectories shown from the first and from the last logged step.
    """
    from agent_lightning import progress
    from agent_lightning.config import ConfigError
    from agent_lightning.evaluation.harness import RESULTS_FILE
    from agent_lightning.evaluation.report.html import render
    from agent_lightning.evaluation.report.plots import write_plots
    from agent_lightning.evaluation.report.trajectories import load_trajectories, trajectory_steps
    from agent_lightning.metrics import read_metrics

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no config.yaml)")
    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("alightning report draws its plots with matplotlib: pip install 'agent-lightning[report]'")
    folder = Path(output_dir) if output_dir is not None else run_dir / "report"
    records = read_metrics(run_dir)
    results = _read_json(run_dir / RESULTS_FILE)
    info = _read_json(run_dir / "run_info.json") or {}
    with progress.task("writing report plots"):
        plots = write_plots(records, results, folder)
    steps = trajectory_steps(run_dir)
    groups = []
    for step in dict.fromkeys(steps[:1] + steps[-1:]):
        groups.append(load_trajectories(run_dir, step))
    groups = [(step, recs[:trajectories]) for step, recs in groups]
    page = render(title=f"agent-lightning run {run_dir.resolve().name}",
                  subtitle=f"{run_dir.resolve()} · report written {time.strftime('%Y-%m-%d %H:%M:%S')}",
                  records=records, results=results, info=info, plots=plots, trajectories=groups,
                  config_text=(run_dir / "config.yaml").read_text())
    html_path = folder / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return ReportFiles(html_path, plots)
