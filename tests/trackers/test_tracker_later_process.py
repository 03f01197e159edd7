"""A later process on a finished run directory (``alightning eval`` logging checkpoint
results) writes into the same MLflow, W&B and TensorBoard runs, without calling
``log_config`` first."""

from __future__ import annotations

import json


def test_metrics_and_artifacts_logged_later_join_the_training_runs(make_tracker, mlflow_store, read_wandb,
                                                                    read_tensorboard, tmp_path):
    run_dir = tmp_path / "run"
    client = mlflow_store(run_dir)
    for name in ("mlflow", "wandb", "tensorboard"):  # the training process
        tracker = make_tracker(name, run_dir)
        tracker.log_config({"trainer": {"steps": 2}})
        tracker.log_metrics(1, {"train/reward_mean": 0.5})
        tracker.log_metrics(2, {"train/reward_mean": 0.75})
        tracker.close()
    results = run_dir / "eval_results.json"
    results.write_text(json.dumps({"checkpoints": [0, 2]}))
    for name in ("mlflow", "wandb", "tensorboard"):  # the evaluation process: metrics at past steps
        tracker = make_tracker(name, run_dir)
        tracker.log_metrics(0, {"ckpt_eval/success_rate": 0.125})
        tracker.log_metrics(2, {"ckpt_eval/success_rate": 0.875})
        tracker.log_artifact(str(results), "eval/results.json")
        tracker.close()

    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    (run,) = client.search_runs([client.get_experiment_by_name("agent-lightning").experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    history = sorted(client.get_metric_history(run_id, "ckpt_eval/success_rate"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(0, 0.125), (2, 0.875)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/reward_mean")] == [(1, 0.5), (2, 0.75)]
    assert [f.path for f in client.list_artifacts(run_id, "eval")] == ["eval/results.json"]

    training, evaluation = read_wandb(run_dir)
    assert evaluation["id"] == training["id"]
    assert [(r["step"], r["ckpt_eval/success_rate"]) for r in evaluation["history"]
            if "ckpt_eval/success_rate" in r] == [(0, 0.125), (2, 0.875)]

    events = read_tensorboard(run_dir / "tensorboard")
    assert [(e.step, e.value) for e in events.Scalars("ckpt_eval/success_rate")] == [(0, 0.125), (2, 0.875)]
    assert [e.step for e in events.Scalars("train/reward_mean")] == [1, 2]
