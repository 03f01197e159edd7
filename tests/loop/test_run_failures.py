"""What a run does when numbers or the disk go bad: non-finite updates are skipped and
counted (too many in a row abort), and a checkpoint that cannot be written leaves the
previous one intact (abort, or warn and go on)."""

from __future__ import annotations

import errno
import logging

import pytest
import torch
from safetensors.torch import load_file

from agent_lightning.backends.transformers.backend import TransformersBackend
from agent_lightning.loop import checkpoint as ckpt
from agent_lightning.loop.trainer import Trainer, TrainingAborted
from agent_lightning.metrics import read_metrics


def _nan_logprobs_from(monkeypatch, steps: set[int] | int) -> dict:
    """Make the policy's training log-probs NaN during the given training steps (1-based), on both
    paths to a loss: ``token_logprobs`` and ``token_loss`` (which the policy-gradient losses take)."""
    state = {"step": 0}
    original, original_loss = TransformersBackend.token_logprobs, TransformersBackend.token_loss

    def bad():
        hit = state["step"] in steps if isinstance(steps, set) else state["step"] >= steps
        return hit and torch.is_grad_enabled()

    def poisoned(self, batch, **kwargs):
        logp, *rest = original(self, batch, **kwargs)
        return (logp * float("nan") if bad() else logp, *rest)

    def poisoned_loss(self, batch, loss_of, **kwargs):
        if bad():
            return original_loss(self, batch, lambda logp, entropy: loss_of(logp * float("nan"), entropy), **kwargs)
        return original_loss(self, batch, loss_of, **kwargs)

    monkeypatch.setattr(TransformersBackend, "token_logprobs", poisoned)
    monkeypatch.setattr(TransformersBackend, "token_loss", poisoned_loss)
    original_step = Trainer.train_step

    def counting(self):
        state["step"] = self.step + 1
        return original_step(self)

    monkeypatch.setattr(Trainer, "train_step", counting)
    return state


def test_a_nan_loss_skips_the_update_and_is_counted(tiny_config, tmp_path, monkeypatch, caplog):
    _nan_logprobs_from(monkeypatch, {2})
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="agent_lightning"):
        Trainer(tiny_config(trainer={"steps": 3, "checkpoint_every": 1, "eval_episodes": 4}), run_dir).run()
    by_step = {r["step"]: r for r in read_metrics(run_dir) if "train/skipped_updates" in r}
    assert {s: r["train/skipped_updates"] for s, r in by_step.items()} == {1: 0.0, 2: 1.0, 3: 0.0}
    assert "train/updates" not in by_step[2]
    assert any("step 2: 1 of 1 optimizer updates skipped" in r.getMessage() for r in caplog.records)
    folder = run_dir / "checkpoints"
    before, after, later = (load_file(str(folder / f"step-{s}" / "model.safetensors")) for s in (1, 2, 3))
    assert all(torch.equal(before[k], after[k]) for k in before)  # no optimizer step at step 2
    assert not all(torch.equal(after[k], later[k]) for k in after)  # step 3 trained again
    assert all(bool(torch.isfinite(v).all()) for v in later.values())


def test_too_many_skipped_updates_in_a_row_abort_with_the_last_good_checkpoint(tiny_config, tmp_path, monkeypatch):
    _nan_logprobs_from(monkeypatch, 2)  # from step 2 on
    run_dir = tmp_path / "run"
    config = tiny_config(trainer={"steps": 8, "checkpoint_every": 1, "eval_episodes": 4, "max_skipped_updates": 2})
    with pytest.raises(TrainingAborted, match=r"step 4: 3 optimizer updates in a row .*max_skipped_updates=2\); "
                                              r"the last good checkpoint is .*step-3"):
        Trainer(config, run_dir).run()
    assert [s for s, _ in ckpt.list_checkpoints(run_dir)] == [1, 2, 3]
    for _, folder in ckpt.list_checkpoints(run_dir):
        ckpt.verify_checkpoint(folder)


def _cli_run(config: dict, tmp_path, capsys) -> tuple[int, list[str]]:
    """``alightning run CONFIG`` in this process: the exit code and the ``error:`` lines."""
    import yaml

    from agent_lightning.cli.main import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["run", str(path), "--output-dir", str(tmp_path / "run")])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def test_cli_abort_for_non_finite_updates_is_one_line_exit_1(tiny_config_dict, tmp_path, monkeypatch, capsys):
    _nan_logprobs_from(monkeypatch, 1)
    code, errors = _cli_run(tiny_config_dict(trainer={"steps": 5, "eval_episodes": 4, "max_skipped_updates": 0}),
                            tmp_path, capsys)
    assert code == 1 and len(errors) == 1 and "non-finite loss or gradient norm" in errors[0]


def _full_disk_at(monkeypatch, failing_step: int) -> None:
    """``save_state`` of the trainer's checkpoint hits a full disk at ``failing_step``, after
    part of the checkpoint is already written."""
    original = ckpt.save_state

    def save_state(state, stem):
        if stem.name == "trainer_state" and state["sampler"] is not None and _step[0] == failing_step:
            stem.with_suffix(".safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(state, stem)

    _step = [0]
    original_save = Trainer.save_checkpoint

    def save_checkpoint(self):
        _step[0] = self.step
        return original_save(self)

    monkeypatch.setattr(ckpt, "save_state", save_state)
    monkeypatch.setattr(Trainer, "save_checkpoint", save_checkpoint)


def test_disk_full_aborts_and_the_previous_checkpoint_is_intact_and_picked(tiny_config, tmp_path, monkeypatch):
    _full_disk_at(monkeypatch, 2)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingAborted, match=r"writing checkpoint step-2 .* No space left on device; "
                                              r"the last good checkpoint is .*step-1"):
        Trainer(tiny_config(trainer={"steps": 3, "checkpoint_every": 1, "eval_episodes": 4}), run_dir).run()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-1"]  # no half-written folder
    assert ckpt.latest_checkpoint(run_dir)[0] == 1
    ckpt.verify_checkpoint(run_dir / "checkpoints" / "step-1")


def test_disk_full_with_checkpoint_errors_warn_goes_on(tiny_config, tmp_path, monkeypatch, caplog):
    _full_disk_at(monkeypatch, 2)
    run_dir = tmp_path / "run"
    config = tiny_config(trainer={"steps": 3, "checkpoint_every": 1, "eval_episodes": 4, "checkpoint_errors": "warn"})
    with caplog.at_level(logging.WARNING, logger="agent_lightning"):
        result = Trainer(config, run_dir).run()
    assert result.steps == 3
    assert [s for s, _ in ckpt.list_checkpoints(run_dir)] == [1, 3]
    assert any("No space left on device; training goes on (trainer.checkpoint_errors=warn)" in r.getMessage()
               for r in caplog.records)


def test_cli_disk_full_is_one_line_exit_1(tiny_config_dict, tmp_path, monkeypatch, capsys):
    _full_disk_at(monkeypatch, 1)
    code, errors = _cli_run(tiny_config_dict(trainer={"steps": 2, "checkpoint_every": 1, "eval_episodes": 4}),
                            tmp_path, capsys)
    assert code == 1 and len(errors) == 1
    assert "No space left on device" in errors[0] and "no earlier checkpoint" in errors[0]
