"""Acceptance: a run with a replay buffer, stopped and resumed, logs the same metrics and ends
with the same weights as the uninterrupted run (CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from agent_lightning.loop import checkpoint as ckpt
from agent_lightning.loop.trainer import Trainer
from agent_lightning.metrics import read_metrics

WALL_CLOCK = ("time/", "train/tokens_per_s", "eval/time_s")


def _deterministic(records):
    return [{k: v for k, v in r.items() if not k.startswith(WALL_CLOCK)} for r in records]


def _weights(run_dir, step):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "checkpoints" / f"step-{step}" / "model.safetensors"))


@pytest.mark.slow
def test_resume_with_a_replay_buffer_matches_the_uninterrupted_run(tiny_config, tmp_path):
    # Two optimizer steps per training step, so replayed groups are 2-4 policy versions old and
    # their importance weights differ from 1; truncation at 1.0 makes some of them truncate.
    # Rewarded for replying with a number (any): a random-init policy does in about half of its turns,
    # so every step's groups differ and the policy really moves (a won game of guess-number is rare
    # enough at first that whether the first steps update at all hangs on the sampler's rounding).
    config = tiny_config(trainer={"steps": 4, "eval_every": 2, "eval_episodes": 6,
                                  "replay": {"capacity_steps": 2, "replay_ratio": 1.0, "is_truncation": 1.0}},
                         algorithm={"minibatches": 2}, reward={"name": "format", "pattern": "[0-9]", "turns": "all"})
    Trainer(config, tmp_path / "full").run()
    Trainer(config, tmp_path / "split").run(until_step=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "split")] == [2]
    saved = json.loads((tmp_path / "split" / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in saved["replay"]["entries"]] == [0, 1]
    Trainer(config, tmp_path / "split").run(resume=True)

    full, split = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "split")
    assert [r["step"] for r in split] == [0, 1, 2, 3, 4]
    assert _deterministic(split) == _deterministic(full)
    assert all(r["train/grad_norm"] > 0 for r in full[1:])  # every step moved the policy
    # The buffer was in use after the resume point: replayed groups, weights that are not all 1.
    for record in full[3:]:
        assert record["replay/fraction"] == 0.5
        assert record["replay/staleness_mean"] >= 2.0
        assert record["replay/is_weight_mean"] < 1.0
    assert any(r["replay/is_truncated_fraction"] > 0 for r in full[2:])
    full_weights, split_weights = _weights(tmp_path / "full", 4), _weights(tmp_path / "split", 4)
    assert full_weights.keys() == split_weights.keys()
    assert all(torch.equal(full_weights[k], split_weights[k]) for k in full_weights)


@pytest.mark.slow
def test_resume_without_the_buffer_state_would_diverge(tiny_config, tmp_path):
    """The check above can fail: drop the buffer from the checkpoint and step 3 replays nothing."""
    config = tiny_config(trainer={"steps": 3, "eval_episodes": 4,
                                  "replay": {"capacity_steps": 2, "replay_ratio": 1.0}})
    Trainer(config, tmp_path / "run").run(until_step=2)
    stem = tmp_path / "run" / "checkpoints" / "step-2" / "trainer_state"
    state = ckpt.load_state(stem)
    assert state["replay"]["entries"]
    state["replay"] = {}
    ckpt.save_state(state, stem)
    (stem.parent / ckpt.MANIFEST).unlink()
    ckpt.write_manifest(stem.parent, 2)  # a checkpoint written without the buffer, not a damaged one
    Trainer(config, tmp_path / "run").run(resume=True)
    step3 = read_metrics(tmp_path / "run")[-1]
    assert step3["step"] == 3
    assert step3["replay/fraction"] == 0.0
    assert step3["replay/size"] == 16.0  # only step 3's own groups
