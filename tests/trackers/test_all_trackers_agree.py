"""Acceptance: a short quickstart run with all five trackers; every tracker, read back through
its own format, holds the same per-step metrics as ``metrics.jsonl``."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from agent_lightning.metrics import read_metrics
from agent_lightning.trackers.console import DEFAULT_KEYS, _fmt

WANDB_BOOKKEEPING = {"step", "_step", "_runtime", "_timestamp", "trajectories"}


def _console_lines(stdout: str) -> dict[int, dict[str, str]]:
    """``{step: {metric: printed value}}`` from the console tracker's ``step N  k=v  k=v`` lines
    (read as a token stream: rich wraps long lines at the terminal width)."""
    out: dict[int, dict[str, str]] = {}
    tokens = stdout.split()
    current = None
    for i, token in enumerate(tokens):
        if token == "step" and i + 1 < len(tokens) and tokens[i + 1].isdigit():
            current = out.setdefault(int(tokens[i + 1]), {})
        elif current is not None and "=" in token:
            key, _, value = token.partition("=")
            current[key if "/" in key else f"train/{key}"] = value
        elif not token.isdigit():
            current = None
    return out


@pytest.mark.slow
def test_quickstart_with_five_trackers_logs_the_same_metrics_everywhere(alightning, cli_env, tmp_path, read_wandb,
                                                                        read_tensorboard):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [*alightning, "run", "quickstart", "trainer.steps=3", "trainer.batch_size=4", "trainer.eval_every=2",
         "trainer.eval_episodes=12", "trackers=[console,jsonl,mlflow,wandb,tensorboard]", "--output-dir", str(run_dir)],
        capture_output=True, text=True, env=cli_env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tracker '" not in result.stderr, result.stderr[-3000:]

    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    expected = {}  # metric -> [(step, value)] from metrics.jsonl, the run directory's source of truth
    for record in records:
        for key, value in record.items():
            if key != "step" and value is not None:
                expected.setdefault(key, []).append((record["step"], value))
    assert {"train/reward_mean", "train/pg_loss", "eval/success_rate", "time/update_s"} <= set(expected)

    # console: every step printed, each shown value as formatted from the logged one
    printed = _console_lines(result.stdout)
    assert sorted(printed) == [0, 1, 2, 3]
    for record in records:
        shown = {k: _fmt(record[k]) for k in DEFAULT_KEYS if k in record}
        assert printed[record["step"]] == shown, record["step"]

    # MLflow: the run's metric histories, read from the SQLite store in the run directory
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert set(run.data.metrics) == set(expected)
    for key, values in expected.items():
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == values, key
    assert run.data.params["trainer.steps"] == "3"

    # W&B: the offline run's history rows
    (wandb_run,) = read_wandb(run_dir)
    rows = wandb_run["history"]
    assert set().union(*rows) - WANDB_BOOKKEEPING == set(expected)
    for key, values in expected.items():
        assert [(row["step"], row[key]) for row in rows if key in row] == values, key

    # TensorBoard: scalars (stored as float32)
    events = read_tensorboard(run_dir / "tensorboard")
    assert set(events.Tags()["scalars"]) == set(expected)
    for key, values in expected.items():
        assert [(e.step, e.value) for e in events.Scalars(key)] == [(s, np.float32(v)) for s, v in values], key
