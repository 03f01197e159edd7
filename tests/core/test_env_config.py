"""Environment variables: precedence command line > environment > file > defaults."""

from __future__ import annotations

import subprocess

from agent_lightning.config import explain, load_config


def test_precedence_cli_over_env_over_file_over_default(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("environment: {name: guess-number}\ntrainer: {steps: 5, checkpoint_every: 2, output_dir: from-file}\n")
    env = {"ALIGHTNING_STEPS": "9", "ALIGHTNING_CHECKPOINT_EVERY": "3", "ALIGHTNING_TRACKERS": "console,jsonl"}
    config = load_config(str(path), ["trainer.steps=11"], environ=env)
    assert config.trainer.steps == 11                 # command line beats environment
    assert config.trainer.checkpoint_every == 3       # environment beats file
    assert config.trainer.output_dir == "from-file"   # file beats default
    assert config.trainer.eval_every == 0             # default
    assert [t.name for t in config.trackers] == ["console", "jsonl"]
    sources = {path_: where for path_, _, where in explain(str(path), ["trainer.steps=11"], environ=env)}
    assert sources["trainer.steps"] == "command line"
    assert sources["trainer.checkpoint_every"] == "env ALIGHTNING_CHECKPOINT_EVERY"
    assert sources["trainer.output_dir"] == f"file {path}"
    assert sources["trainer.eval_every"] == "default"
    assert sources["trackers"] == "env ALIGHTNING_TRACKERS"


def test_bad_environment_value_is_a_config_error():
    import pytest

    from agent_lightning.config import ConfigError

    with pytest.raises(ConfigError, match="invalid value 'gpu' for 'backend.device'"):
        load_config(None, [], environ={"ALIGHTNING_DEVICE": "gpu"})


def test_config_show_marks_sources_and_masks_secrets(alightning, cli_env):
    env = {**cli_env, "ALIGHTNING_DEVICE": "cpu", "WANDB_API_KEY": "sekrit-123", "WANDB_PROJECT": "demo",
           "MLFLOW_TRACKING_URI": "sqlite:///x.db"}
    out = subprocess.run([*alightning, "config", "show", "trainer.steps=7"], capture_output=True, text=True,
                         env=env, timeout=120, check=True).stdout
    lines = {line.split(":", 1)[0]: line for line in out.splitlines() if not line.startswith("#")}
    assert lines["trainer.steps"].endswith("# command line") and "7" in lines["trainer.steps"]
    assert lines["backend.device"].endswith("# env ALIGHTNING_DEVICE")
    assert lines["environment.max_number"].endswith("# preset quickstart")
    assert lines["trainer.keep_checkpoints"].endswith("# default")
    assert "sekrit-123" not in out and "WANDB_API_KEY=***" in out
    assert "WANDB_PROJECT=demo" in out and "MLFLOW_TRACKING_URI=sqlite:///x.db" in out
