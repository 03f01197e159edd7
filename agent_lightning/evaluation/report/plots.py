"""PNG plots of a run with matplotlib's Agg canvas (no display, no pyplot global state).

Training curves come from ``metrics.jsonl``; the checkpoint plot comes from the results
of ``alightning eval`` (``eval/results.json``) with its 95 % Wilson intervals as error bars.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

TRAINING_PLOTS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("reward", "reward", (("train/reward_mean", "train (rollouts)"), ("eval/mean_reward", "held-out eval"))),
    ("success", "success rate", (("train/success_rate", "train (rollouts)"), ("eval/success_rate", "held-out eval"))),
    ("kl", "KL to the reference policy", (("train/kl", "train"),)),
    ("entropy", "policy entropy (nats / token)", (("train/entropy", "train"),)),
    ("loss", "loss", (("train/pg_loss", "policy-gradient loss"), ("train/loss", "loss"))),
    ("tokens_per_s", "throughput (tokens / s)", (("train/tokens_per_s", "train"),)),
)
"""``(file stem, title, ((metric, legend label), ...))`` of the training plots."""

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


@dataclass(frozen=True)
class Plot:
    """A written PNG (``path``) or, when the run logged none of its metrics, ``path=None``."""

    name: str
    title: str
    path: Path | None
    metrics: tuple[str, ...]


def series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of one metric, by step (a step logged twice keeps its last value;
    null and non-finite values are left out)."""
    by_step: dict[int, float] = {}
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            by_step[int(record.get("step", 0))] = float(value)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def _smooth(values: list[float]) -> list[float]:
    """Centred moving average over about 5 % of the points (odd window, edges shrink)."""
    half = max(1, len(values) // 40)
    out = []
    for i in range(len(values)):
        window = values[max(0, i - half): i + half + 1]
        out.append(sum(window) / len(window))
    return out


def _figure(title: str) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, ax


def _save(fig: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, format="png")
    return path


def training_plot(records: Sequence[dict[str, Any]], name: str, title: str,
                  metrics: Sequence[tuple[str, str]], folder: Path) -> Plot:
    """One training plot; dense series are drawn raw (thin) and smoothed, sparse ones
    (held-out evaluations) as markers."""
    found = [(key, label, *series(records, key)) for key, label in metrics]
    found = [f for f in found if f[2]]
    keys = tuple(key for key, _ in metrics)
    if not found:
        return Plot(name, title, None, keys)
    fig, ax = _figure(title)
    for color, (key, label, steps, values) in zip(COLORS, found):
        if len(steps) > 20:
            ax.plot(steps, values, color=color, alpha=0.3, linewidth=0.8)
            ax.plot(steps, _smooth(values), color=color, linewidth=2.0, label=f"{label} (smoothed)")
        else:
            ax.plot(steps, values, color=color, marker="o", linewidth=1.5, label=label)
    ax.legend(loc="best", fontsize="small")
    return Plot(name, title, _save(fig, folder / f"{name}.png"), keys)


def checkpoint_plot(results: dict[str, Any] | None, folder: Path) -> Plot:
    """Success rate per checkpoint (base = step 0) with 95 % Wilson error bars."""
    title = "held-out success by checkpoint (95% CI)"
    rows = (results or {}).get("checkpoints", [])
    if not rows:
        return Plot("eval_checkpoints", title, None, ("eval/results.json",))
    settings = results.get("settings", {})
    steps = [r["step"] for r in rows]
    rates = [r["success_rate"] for r in rows]
    low = [r["success_rate"] - r["success_ci"][0] for r in rows]
    high = [r["success_ci"][1] - r["success_rate"] for r in rows]
    fig, ax = _figure(f"{title}: {settings.get('split', 'eval')} split, {settings.get('episodes', '?')} episodes each")
    ax.errorbar(steps, rates, yerr=[low, high], color=COLORS[0], marker="o", capsize=5, linewidth=1.5)
    for step, rate in zip(steps, rates):
        ax.annotate(f"{rate:.2f}", (step, rate), textcoords="offset points", xytext=(6, -12), fontsize="small")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("success rate")
    return Plot("eval_checkpoints", title, _save(fig, folder / "eval_checkpoints.png"), ("eval/results.json",))


def write_plots(records: Sequence[dict[str, Any]], results: dict[str, Any] | None, folder: Path) -> list[Plot]:
    """Every training plot and the checkpoint plot into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = [training_plot(records, name, title, metrics, folder) for name, title, metrics in TRAINING_PLOTS]
    plots.append(checkpoint_plot(results, folder))
    return plots
