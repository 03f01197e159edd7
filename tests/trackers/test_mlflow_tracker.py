"""The MLflow tracker against a real local store, read back with MLflow's own client."""

from __future__ import annotations

import json
import math
import sys

import pytest
import yaml

from agent_lightning.config import ConfigError

CONFIG = {
    "model": {"preset": "tiny", "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}},
    "environment": {"name": "api", "api_key": "env-secret-value"},
    "trainer": {"steps": 3, "eval_every": 0},
    "trackers": [{"name": "jsonl"}, {"name": "mlflow", "log_checkpoints": True}],
}

STEPS = {
    0: {"eval/success_rate": 0.25, "eval/mean_reward": 0.5},
    1: {"train/reward_mean": 0.125, "train/kl": 0.0, "train/episodes": 16, "note": "text is not a metric"},
    2: {"train/reward_mean": 0.375, "train/kl": 1.5e-3, "train/episodes": 16},
    3: {"train/reward_mean": 0.625, "train/kl": 2.25e-3, "train/episodes": 16, "eval/success_rate": 0.5},
}


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))]


def test_params_metrics_and_artifacts_reach_the_store(make_tracker, mlflow_store, tmp_path):
    run_dir = tmp_path / "run-a"
    client = mlflow_store(run_dir)
    checkpoint = run_dir / "checkpoints" / "step-3"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer.json").write_text('{"step": 3}')
    report = run_dir / "eval.json"
    report.write_text('{"success": 0.5}')

    tracker = make_tracker("mlflow", run_dir, log_checkpoints=True, tags={"team": "rl"})
    tracker.log_config(CONFIG)
    for step, metrics in STEPS.items():
        if step:
            tracker.log_trajectories(step, [{"id": f"t{step}", "prompt": "guess", "turns": [], "reward": 1.0}])
        tracker.log_metrics(step, metrics)
    tracker.log_checkpoint(3, str(checkpoint))
    tracker.log_artifact(str(report), "eval/results.json")
    tracker.log_artifact(str(report))
    tracker.close()

    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    (found,) = client.search_runs([client.get_experiment_by_name("agent-lightning").experiment_id])
    assert found.info.run_id == run_id
    assert found.info.status == "FINISHED"
    assert found.info.run_name == "run-a"
    assert found.data.tags["team"] == "rl"
    params = found.data.params
    assert params["model.preset"] == "tiny"
    assert params["model.lora.target_modules"] == '["q_proj", "v_proj"]'
    assert params["trainer.steps"] == "3"
    assert params["trackers.1.log_checkpoints"] == "True"
    assert params["environment.api_key"] == "***"

    assert _history(client, run_id, "train/reward_mean") == [(1, 0.125), (2, 0.375), (3, 0.625)]
    assert _history(client, run_id, "train/kl") == [(1, 0.0), (2, 1.5e-3), (3, 2.25e-3)]
    assert _history(client, run_id, "eval/success_rate") == [(0, 0.25), (3, 0.5)]
    assert "note" not in found.data.metrics

    def files(path=None):
        return sorted(f.path for f in client.list_artifacts(run_id, path))

    assert files() == ["checkpoints", "config.yaml", "eval", "eval.json", "trajectories"]
    assert files("trajectories") == [f"trajectories/step-{s}.jsonl" for s in (1, 2, 3)]
    assert files("checkpoints/step-3") == ["checkpoints/step-3/trainer.json"]
    assert files("eval") == ["eval/results.json"]
    logged_config = yaml.safe_load(client.download_artifacts(run_id, "config.yaml", str(tmp_path / "dl")) and
                                   (tmp_path / "dl" / "config.yaml").read_text())
    assert logged_config["environment"] == {"name": "api", "api_key": "***"}
    assert logged_config["model"] == CONFIG["model"]
    # the default store and its artifacts live inside the run directory
    assert (run_dir / "mlartifacts").is_dir()
    assert not (tmp_path / "mlruns").exists()


def test_tracking_uri_variable_and_options_choose_store_experiment_and_name(make_tracker, mlflow_store, tmp_path,
                                                                           monkeypatch):
    shared = tmp_path / "shared"
    client = mlflow_store(shared)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{shared / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    for name, options in (("run-x", {}), ("run-y", {"experiment": "from-option", "run_name": "named"})):
        tracker = make_tracker("mlflow", tmp_path / name, **options)
        tracker.log_config({"trainer": {"steps": 1}})
        tracker.log_metrics(1, {"train/reward_mean": 1.0})
        tracker.close()
        assert not (tmp_path / name / "mlflow.db").exists()
    by_experiment = {e: [r.info.run_name for r in client.search_runs([client.get_experiment_by_name(e).experiment_id])]
                     for e in ("from-env", "from-option")}
    assert by_experiment == {"from-env": ["run-x"], "from-option": ["named"]}


def test_non_finite_metrics_are_logged(make_tracker, mlflow_store, tmp_path):
    client = mlflow_store(tmp_path / "run")
    tracker = make_tracker("mlflow", tmp_path / "run")
    tracker.log_config({})
    tracker.log_metrics(1, {"train/kl": float("nan"), "train/grad_norm": float("inf")})
    tracker.close()
    run_id = tracker.state.run_id
    assert math.isnan(client.get_metric_history(run_id, "train/kl")[0].value)
    assert client.get_metric_history(run_id, "train/grad_norm")[0].value >= sys.float_info.max  # MLflow clamps inf


def test_unknown_option_is_a_config_error_naming_the_key(make_tracker, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'trackers\[mlflow\]\.trackinguri'"):
        make_tracker("mlflow", tmp_path, trackinguri="http://x")


def test_construction_contacts_nothing(make_tracker, tmp_path):
    """An unreachable server must cost only this tracker: the trainer builds trackers outside
    the fan-out's protection, so the constructor may not touch the store."""
    make_tracker("mlflow", tmp_path / "run", tracking_uri="http://127.0.0.1:9")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []


def test_an_unreachable_server_is_given_up_at_once_with_its_password_masked(make_tracker, tmp_path, monkeypatch):
    import socket

    # without the probe MLflow's own client would be used: with no retries, it raises MlflowException
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tracker = make_tracker("mlflow", tmp_path, tracking_uri=f"http://bob:s3cret@127.0.0.1:{port}")
    with pytest.raises(ConnectionError, match=rf"^MLflow tracking server http://bob:\*\*\*@127.0.0.1:{port} unreachable"):
        tracker.log_config({})
