"""DPO learns: offline on a preference set built here (held-out accuracy), online on the
quickstart game (held-out success), both from a random-init tiny model, seeded."""

from __future__ import annotations

import json

import pytest

from agent_lightning.loop.trainer import Trainer
from agent_lightning.preferences.data import write_preferences
from agent_lightning.presets.guess_number_preferences import build_pairs


def _evals(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "eval/success_rate" in r or "eval/pref_accuracy" in r]


@pytest.mark.slow
def test_offline_dpo_raises_held_out_preference_accuracy(tiny_config, tmp_path):
    data = tmp_path / "prefs.jsonl"
    write_preferences(build_pairs(160, seed=7), data)
    config = tiny_config(
        algorithm={"name": "dpo", "dataset": str(data), "eval_fraction": 0.25, "beta": 0.1, "lr": 0.003,
                   "batch_size": 16},
        trainer={"steps": 40, "eval_every": 0, "eval_episodes": 12},
    )
    result = Trainer(config, tmp_path / "run").run()
    first, last = result.first_eval, result.last_eval
    assert first["eval/pref_pairs"] == last["eval/pref_pairs"] == 40
    # Before any update the policy is its own reference: every held-out margin is exactly 0.
    assert first["eval/pref_accuracy"] == 0.5 and first["eval/pref_margin"] == 0.0
    assert last["eval/pref_accuracy"] >= 0.85, last
    assert last["eval/pref_margin"] > 0.5
    assert last["eval/pref_logp_accuracy"] > first["eval/pref_logp_accuracy"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train/dpo_loss" in r]
    assert len(steps) == 40 and all(r["train/pairs"] == 16 for r in steps)
    assert not any("train/success_rate" in r for r in steps)  # no rollouts were played
    assert steps[-1]["train/dpo_loss"] < steps[0]["train/dpo_loss"] == pytest.approx(0.693147, abs=1e-4)


@pytest.mark.slow
def test_online_dpo_improves_quickstart_held_out_success(tiny_config, tmp_path):
    config = tiny_config(
        algorithm={"name": "dpo", "pairs": "online", "group_size": 16, "pairs_per_group": 8, "beta": 5.0, "lr": 0.003,
                   "reference": "rollout", "minibatches": 4},
        trainer={"steps": 40, "batch_size": 8, "eval_every": 0, "eval_episodes": 60},
    )
    result = Trainer(config, tmp_path / "run").run()
    start, end = result.first_eval["eval/success_rate"], result.last_eval["eval/success_rate"]
    assert start <= 0.15
    assert end >= start + 0.2, (start, end)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train/pairs" in r]
    assert all(r["train/pairs"] + r["train/skipped_ties"] == 8 * 8 for r in steps)
    assert sum(r["train/pairs"] for r in steps) > 0


def test_offline_dpo_resumes_exactly(tiny_config, tmp_path):
    from agent_lightning.metrics import read_metrics

    data = tmp_path / "prefs.jsonl"
    write_preferences(build_pairs(12, seed=2), data)
    config = tiny_config(
        algorithm={"name": "dpo", "dataset": str(data), "eval_fraction": 0.25, "batch_size": 4, "lr": 0.003},
        trainer={"steps": 4, "eval_every": 2, "checkpoint_every": 0, "eval_episodes": 4},
    )
    Trainer(config, tmp_path / "full").run()
    Trainer(config, tmp_path / "split").run(until_step=2)  # 9 training pairs: step 3 starts a new epoch
    Trainer(config, tmp_path / "split").run(resume=True)

    def deterministic(records):
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "eval/time_s"))} for r in records]

    full, split = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "split")
    assert [r["step"] for r in split] == [0, 1, 2, 3, 4]
    assert deterministic(split) == deterministic(full)
    assert full[-1]["train/dpo_loss"] != full[1]["train/dpo_loss"]
