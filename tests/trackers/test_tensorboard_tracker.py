"""The TensorBoard tracker: event files read back with TensorBoard's EventAccumulator."""

from __future__ import annotations

import numpy as np


def _text(accumulator, tag):
    return [(event.step, event.tensor_proto.string_val[0].decode()) for event in accumulator.Tensors(tag)]


def test_scalars_and_text_read_back_from_the_event_files(make_tracker, read_tensorboard, tmp_path):
    run_dir = tmp_path / "run"
    tracker = make_tracker("tensorboard", run_dir)
    tracker.log_config({"trainer": {"steps": 2, "eval_every": 0}, "backend": {"hub_token": "hf_secret_value"}})
    tracker.log_metrics(0, {"eval/success_rate": 0.25})
    tracker.log_trajectories(1, [{"prompt": "Guess", "turns": [{"action": "4", "observation": "lower than 4"}],
                                  "reward": 0.0, "success": False}])
    tracker.log_metrics(1, {"train/reward_mean": 0.1, "train/episodes": 16, "note": "dropped"})
    tracker.log_metrics(2, {"train/reward_mean": 0.3, "eval/success_rate": 0.7})
    tracker.close()

    events = read_tensorboard(run_dir / "tensorboard")
    assert sorted(events.Tags()["scalars"]) == ["eval/success_rate", "train/episodes", "train/reward_mean"]
    # event files store float32: the logged value, rounded once
    assert [(e.step, e.value) for e in events.Scalars("train/reward_mean")] == [(1, np.float32(0.1)), (2, np.float32(0.3))]
    assert [(e.step, e.value) for e in events.Scalars("eval/success_rate")] == [(0, 0.25), (2, np.float32(0.7))]
    ((step, config),) = _text(events, "config/text_summary")
    assert step == 0 and "steps: 2" in config and "hub_token: '***'" in config and "hf_secret_value" not in config
    ((step, text),) = _text(events, "trajectories/text_summary")
    assert step == 1 and "[policy] 4" in text and "[env] lower than 4" in text


def test_log_dir_option(make_tracker, read_tensorboard, tmp_path):
    tracker = make_tracker("tensorboard", tmp_path / "run", log_dir=str(tmp_path / "elsewhere"))
    tracker.log_config({})
    tracker.log_metrics(3, {"train/kl": 0.5})
    tracker.close()
    assert [(e.step, e.value) for e in read_tensorboard(tmp_path / "elsewhere").Scalars("train/kl")] == [(3, 0.5)]
    assert not (tmp_path / "run" / "tensorboard").exists()
