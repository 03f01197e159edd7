"""The W&B tracker in offline mode: the offline run directory holds what was logged."""

from __future__ import annotations

import json

import pytest

CONFIG = {"trainer": {"steps": 2, "eval_every": 0}, "algorithm": {"name": "grpo", "lr": 0.001},
          "environment": {"name": "api", "client_secret": "do-not-log-me"}}


def _steps(history, key):
    return [(row["step"], row[key]) for row in history if key in row]


def test_offline_run_in_the_run_directory_holds_config_metrics_and_a_trajectory_table(make_tracker, read_wandb,
                                                                                       tmp_path):
    run_dir = tmp_path / "run-b"
    tracker = make_tracker("wandb", run_dir)
    assert tracker.mode == "offline"  # no WANDB_API_KEY
    tracker.log_config(CONFIG)
    tracker.log_metrics(0, {"eval/success_rate": 0.25})
    record = {"id": "g/0", "task": "g", "reward": 1.0, "success": True, "failure": None, "prompt": "Guess a number",
              "turns": [{"action": "3", "observation": "higher than 3"}, {"action": "5", "observation": ""}]}
    tracker.log_trajectories(1, [record])
    tracker.log_metrics(1, {"train/reward_mean": 0.125, "train/episodes": 16, "note": "dropped"})
    tracker.log_metrics(2, {"train/reward_mean": 0.5, "train/episodes": 16, "eval/success_rate": 0.75})
    tracker.close()

    (run,) = read_wandb(run_dir)
    assert run["id"] == json.loads((run_dir / "wandb_run.json").read_text())["run_id"]
    assert run["project"] == "agent-lightning" and run["name"] == "run-b"
    assert run["config"]["algorithm"] == {"name": "grpo", "lr": 0.001}
    assert run["config"]["environment"] == {"name": "api", "client_secret": "***"}
    history = run["history"]
    assert _steps(history, "train/reward_mean") == [(1, 0.125), (2, 0.5)]
    assert _steps(history, "eval/success_rate") == [(0, 0.25), (2, 0.75)]
    assert not any("note" in row for row in history)
    (table_row,) = [row for row in history if "trajectories" in row]
    assert table_row["step"] == 1 and table_row["train/reward_mean"] == 0.125  # one row per step
    table = json.loads((run["folder"] / "files" / table_row["trajectories"]["path"]).read_text())
    assert table["columns"] == ["step", "id", "task", "reward", "success", "failure", "conversation"]
    (row,) = table["data"]
    assert row[:6] == [1, "g/0", "g", 1.0, True, None]
    assert row[6].splitlines() == ["[prompt] Guess a number", "[policy] 3", "[env] higher than 3", "[policy] 5",
                                   "[reward] 1.0  success=True"]


def test_names_come_from_wandb_variables_and_options_override_them(make_tracker, read_wandb, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "env-project")
    monkeypatch.setenv("WANDB_NAME", "env-name")
    monkeypatch.setenv("WANDB_TAGS", "a,b")
    monkeypatch.setenv("WANDB_RUN_GROUP", "env-group")
    for folder, options in (("from-env", {}), ("from-options", {"project": "opt-project", "name": "opt-name",
                                                                 "tags": ["x"], "group": "opt-group", "notes": "hi"})):
        tracker = make_tracker("wandb", tmp_path / folder, **options)
        tracker.log_config({})
        tracker.log_metrics(1, {"train/reward_mean": 1.0})
        tracker.close()
    (env_run,) = read_wandb(tmp_path / "from-env")
    (opt_run,) = read_wandb(tmp_path / "from-options")
    assert (env_run["project"], env_run["name"], env_run["tags"], env_run["group"]) == ("env-project", "env-name",
                                                                                         ["a", "b"], "env-group")
    assert (opt_run["project"], opt_run["name"], opt_run["tags"], opt_run["group"], opt_run["notes"]) == (
        "opt-project", "opt-name", ["x"], "opt-group", "hi")


@pytest.mark.parametrize("environ, option, mode", [({}, None, "offline"), ({"WANDB_API_KEY": "k" * 40}, None, "online"),
                                                   ({"WANDB_API_KEY": "k" * 40, "WANDB_MODE": "offline"}, None, "offline"),
                                                   ({"WANDB_API_KEY": "k" * 40}, "disabled", "disabled")])
def test_mode_is_online_only_with_an_api_key(make_tracker, tmp_path, monkeypatch, environ, option, mode):
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    tracker = make_tracker("wandb", tmp_path, **({"mode": option} if option else {}))
    assert tracker.mode == mode
