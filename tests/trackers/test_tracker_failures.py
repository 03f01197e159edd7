"""A tracker that fails for real (server unreachable, disk full) is disabled with a warning
naming it; training goes on and the other trackers keep logging."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from agent_lightning.loop.trainer import Trainer


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to fill a disk")
def test_unreachable_mlflow_and_full_disk_cost_only_their_trackers(tiny_config, read_tensorboard, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast instead of minutes of backoff
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.symlink("/dev/full", run_dir / "metrics.jsonl")  # every write to metrics.jsonl: ENOSPC
    config = tiny_config(trainer={"steps": 2, "eval_episodes": 4},
                         trackers=["jsonl", {"name": "mlflow", "tracking_uri": f"http://127.0.0.1:{_closed_port()}"},
                                   "tensorboard"])
    with pytest.warns(UserWarning) as caught:
        result = Trainer(config, run_dir).run()

    assert result.steps == 2
    messages = [str(w.message) for w in caught if "tracker '" in str(w.message)]
    assert len(messages) == 2, messages
    assert messages[0].startswith("tracker 'mlflow' failed in log_config"), messages
    assert messages[1].startswith("tracker 'jsonl' failed in log_metrics (OSError"), messages
    assert "No space left on device" in messages[1]
    events = read_tensorboard(run_dir / "tensorboard")
    assert [e.step for e in events.Scalars("train/reward_mean")] == [1, 2]
    assert [e.step for e in events.Scalars("eval/success_rate")] == [0, 2]
    assert (run_dir / "checkpoints" / "step-2").is_dir()
