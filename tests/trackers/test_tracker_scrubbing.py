"""What the trackers share: secret scrubbing, config flattening, missing-library errors."""

from __future__ import annotations

import copy

import pytest

from agent_lightning.trackers._flatten import (MASK, flat_config, flatten, is_secret_key, numeric_metrics, scrub,
                                               secret_values, trajectories_due)


@pytest.mark.parametrize("key", ["api_key", "WANDB_API_KEY", "hf_token", "hfToken", "client_secret", "db_password",
                                 "apiKey", "token", "Authorization"])
def test_secret_keys_are_recognised(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["max_new_tokens", "keys", "pad_token_id", "secret_number", "tokenizer", "keep_checkpoints",
                                 "monkey"])
def test_ordinary_keys_are_not_secrets(key):
    assert not is_secret_key(key)


def test_scrub_masks_secret_keys_url_passwords_and_secret_environment_values():
    env_secret = "sk-live-0123456789abcdef"
    config = {
        "environment": {"name": "api", "api_key": "abc123", "base_url": "https://alice:hunter2pw@example.com/v1",
                        "note": f"uses {env_secret} inline"},
        "trackers": [{"name": "wandb", "auth_token": "t0k3n"}, {"name": "jsonl"}],
        "sampling": {"max_new_tokens": 16, "stop": ["</s>"]},
        "empty_password": "",
    }
    original = copy.deepcopy(config)
    out = scrub(config, environ={"OPENAI_API_KEY": env_secret, "TOKENIZERS_PARALLELISM": "false", "HOME": "/root"})
    assert config == original  # a copy: the trainer's config is untouched
    assert out["environment"] == {"name": "api", "api_key": MASK, "base_url": f"https://alice:{MASK}@example.com/v1",
                                  "note": f"uses {MASK} inline"}
    assert out["trackers"] == [{"name": "wandb", "auth_token": MASK}, {"name": "jsonl"}]
    assert out["sampling"] == {"max_new_tokens": 16, "stop": ["</s>"]}
    assert out["empty_password"] == ""  # nothing to hide
    text = repr(out)
    for secret in ("abc123", "hunter2pw", env_secret, "t0k3n"):
        assert secret not in text


def test_secret_environment_values_need_a_secret_name_and_some_length():
    environ = {"WANDB_API_KEY": "x" * 40, "MLFLOW_TRACKING_TOKEN": "tok-12345678", "TOKENIZERS_PARALLELISM": "false",
               "PATH": "/usr/bin:/bin/long/enough", "SHORT_KEY": "1234"}
    assert set(secret_values(environ)) == {"x" * 40, "tok-12345678"}


def test_flatten_dots_nested_keys_and_keeps_lists_readable():
    flat = flatten({"model": {"lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}, "preset_options": {}},
                    "trackers": [{"name": "console"}, {"name": "mlflow", "log_checkpoints": True}],
                    "trainer": {"steps": 3, "output_dir": None}})
    assert flat == {"model.lora.r": 4, "model.lora.target_modules": '["q_proj", "v_proj"]', "model.preset_options": "{}",
                    "trackers.0.name": "console", "trackers.1.name": "mlflow", "trackers.1.log_checkpoints": True,
                    "trainer.steps": 3, "trainer.output_dir": None}


def test_flat_config_scrubs_before_flattening():
    flat = flat_config({"backend": {"hub": {"hf_token": "hf_abcdefghijkl"}}}, environ={})
    assert flat == {"backend.hub.hf_token": MASK}


def test_numeric_metrics_keeps_numbers_only():
    assert numeric_metrics({"a": 1, "b": 2.5, "c": True, "d": None, "e": "text", "f": float("nan")}) == {
        "a": 1.0, "b": 2.5, "c": 1.0, "f": pytest.approx(float("nan"), nan_ok=True)}


@pytest.mark.parametrize("every, eval_every, due", [(None, 5, [5, 10, 12]), (None, 0, list(range(1, 13))),
                                                     (4, 5, [4, 8, 12]), (0, 5, [])])
def test_trajectories_are_due_on_schedule_and_at_the_last_step(every, eval_every, due):
    config = {"trainer": {"steps": 12, "eval_every": eval_every}}
    assert [s for s in range(1, 13) if trajectories_due(s, every, config)] == due


def test_no_secret_reaches_any_tracker_file(make_tracker, mlflow_store, read_wandb, tmp_path, monkeypatch):
    """A W&B API key in the environment and a token in the config: after the three trackers
    logged config, metrics and trajectories, no byte under the run directory holds either."""
    api_key = "wk-0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", api_key)
    monkeypatch.setenv("WANDB_MODE", "offline")  # a key means online: keep the test off the network
    config_token = "hf_configtoken_987654321"
    config = {"model": {"name_or_path": "org/model", "hub_token": config_token}, "trainer": {"steps": 1}}
    run_dir = tmp_path / "run"
    mlflow_store(run_dir)
    trackers = [make_tracker(name, run_dir) for name in ("mlflow", "wandb", "tensorboard")]
    for tracker in trackers:
        tracker.log_config(config)
        tracker.log_trajectories(1, [{"id": "t", "prompt": f"the key is {api_key}", "turns": [], "reward": 0.0}])
        tracker.log_metrics(1, {"train/reward_mean": 0.5})
        tracker.close()
    (wandb_run,) = read_wandb(run_dir)  # waits until W&B has written the whole offline run
    assert wandb_run["config"]["model"]["hub_token"] == "***"
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.name.startswith("events.out") for p in files)
    assert any(p.parent.name == "trajectories" for p in files)  # the MLflow artifact was written
    for path in files:
        data = path.read_bytes()
        assert api_key.encode() not in data, path
        assert config_token.encode() not in data, path


@pytest.mark.parametrize("tracker", ["mlflow", "wandb", "tensorboard"])
def test_a_missing_library_is_a_config_error_before_training(make_tracker, tmp_path, monkeypatch, tracker):
    import sys

    from agent_lightning.config import ConfigError

    monkeypatch.setitem(sys.modules, tracker, None)  # how Python marks a module as unimportable
    with pytest.raises(ConfigError, match=rf"^trackers\[{tracker}\]: the {tracker} package is not installed "
                                          rf"\(pip install 'agent-lightning\[{tracker}\]'\)$"):
        make_tracker(tracker, tmp_path)
