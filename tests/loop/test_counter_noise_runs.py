"""``sampling.noise: counter`` in whole runs: reproducible, different from the generator noise,
and a bad value is named."""

from __future__ import annotations

import json

import pytest

from agent_lightning.config import ConfigError, load_config
from agent_lightning.loop.trainer import Trainer


def _tokens(run_dir):
    return [json.loads(line)["token_ids"] for line in (run_dir / "trajectories" / "step-1.jsonl").read_text().splitlines()]


def _run(tmp_path, name, noise):
    overrides = ["trainer.steps=1", "trainer.eval_every=0", "trainer.checkpoint_every=0", "trainer.batch_size=8",
                 "trainer.log_trajectories=64", "trackers=[jsonl]", f"sampling.noise={noise}"]
    Trainer(load_config("quickstart", overrides, environ={}), tmp_path / name).run()
    metrics = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return _tokens(tmp_path / name), [m for m in metrics if m["step"] == 1][0]


def test_counter_noise_runs_repeat_exactly_and_differ_from_generator_noise(tmp_path):
    first, metrics = _run(tmp_path, "a", "counter")
    again, metrics_again = _run(tmp_path, "b", "counter")
    other, _ = _run(tmp_path, "c", "generator")
    assert len(first) == 64 and first == again
    assert metrics["train/pg_loss"] == metrics_again["train/pg_loss"]
    assert first != other


def test_a_bad_noise_value_is_named():
    with pytest.raises(ConfigError, match="sampling.noise"):
        load_config("quickstart", ["sampling.noise=philox"], environ={})
