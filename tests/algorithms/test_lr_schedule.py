"""The learning-rate schedule spans the whole run, however many optimizer updates a step makes."""

from __future__ import annotations

import json
import math

import pytest

from agent_lightning.config import load_config
from agent_lightning.loop.trainer import Trainer


@pytest.mark.parametrize("minibatches", [1, 4])
def test_a_linear_schedule_reaches_zero_at_the_last_trainer_step(tmp_path, minibatches):
    config = load_config("quickstart", ["trainer.steps=4", "trainer.batch_size=4", "algorithm.group_size=4",
                                        "trainer.eval_every=0", "trainer.eval_episodes=4", "trainer.checkpoint_every=0",
                                        "trackers=[jsonl]", "algorithm.schedule=linear", "algorithm.lr=0.01",
                                        "algorithm.warmup_steps=1", f"algorithm.minibatches={minibatches}"])
    Trainer(config, tmp_path / "run").run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["train/lr"] for r in rows if "train/lr" in r]
    # Updates u = 0..4m-1 (m per step); warmup over the first m: (u+1)/m, then 1 - (u-m)/(3m).
    m = minibatches
    factor = [(u + 1) / m if u < m else 1 - (u - m) / (3 * m) for u in range(4 * m)]
    expected = [0.01 * sum(factor[k * m:(k + 1) * m]) / m for k in range(4)]
    assert len(lrs) == 4
    for got, want in zip(lrs, expected):
        assert math.isclose(got, want, rel_tol=1e-6), (lrs, expected)
