"""A resumed run continues the same MLflow and W&B runs, with monotonic steps, and TensorBoard
shows the resumed values: after a crash as well as after a clean stop."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from agent_lightning.loop.trainer import Trainer
from agent_lightning.metrics import read_metrics

WALL_CLOCK = ("time/", "train/tokens_per_s", "eval/time_s")


@pytest.mark.slow
def test_resume_after_a_crash_continues_the_same_runs_with_monotonic_steps(tiny_config, mlflow_store, read_wandb,
                                                                           read_tensorboard, tmp_path, recwarn):
    run_dir = tmp_path / "run"
    client = mlflow_store(run_dir)
    config = tiny_config(trainer={"steps": 4, "checkpoint_every": 2, "eval_episodes": 6},
                         trackers=["jsonl", "mlflow", "wandb", "tensorboard"])
    Trainer(config, run_dir).run(until_step=3)  # checkpoints at 2 and 3
    first_ids = {name: json.loads((run_dir / f"{name}_run.json").read_text())["run_id"] for name in ("mlflow", "wandb")}
    # The process dies after logging step 3, before publishing its checkpoint: the run
    # directory is left with checkpoint 2 and trackers that already hold step 3.
    shutil.rmtree(run_dir / "checkpoints" / "step-3")
    Trainer(config, run_dir).run(resume=True)
    assert not [str(w.message) for w in recwarn if "tracker '" in str(w.message)]

    records = {r["step"]: r for r in read_metrics(run_dir)}
    assert sorted(records) == [0, 1, 2, 3, 4]

    def expected(key, deterministic_only=True):
        return [(s, r[key]) for s, r in sorted(records.items())
                if key in r and not (deterministic_only and key.startswith(WALL_CLOCK) and s == 3)]

    # MLflow: one run, continued; each step once, in order
    assert json.loads((run_dir / "mlflow_run.json").read_text())["run_id"] == first_ids["mlflow"]
    (run,) = client.search_runs([client.get_experiment_by_name("agent-lightning").experiment_id])
    assert run.info.run_id == first_ids["mlflow"] and run.info.status == "FINISHED"
    for key in ("train/reward_mean", "train/entropy", "eval/success_rate", "time/update_s"):
        history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        assert [s for s, _ in history] == [s for s, _ in expected(key, deterministic_only=False)], key
        assert [h for h in history if h[0] != 3 or not key.startswith(WALL_CLOCK)] == expected(key), key

    # W&B: two offline segments of the same run id; the steps read straight through
    segments = read_wandb(run_dir)
    assert [s["id"] for s in segments] == [first_ids["wandb"]] * 2
    rows = [row for segment in segments for row in segment["history"]]
    for key in ("train/reward_mean", "train/entropy", "eval/success_rate"):
        assert [(row["step"], row[key]) for row in rows if key in row] == expected(key), key

    # TensorBoard: the purge marker drops the crashed process's step 3; the resumed values show
    events = read_tensorboard(run_dir / "tensorboard")
    for key in ("train/reward_mean", "time/update_s", "eval/success_rate"):
        assert [(e.step, e.value) for e in events.Scalars(key)] == [
            (s, np.float32(v)) for s, v in expected(key, deterministic_only=False)], key
