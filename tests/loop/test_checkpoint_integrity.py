"""Checksummed checkpoints: every damage to the newest checkpoint is caught before loading,
resume falls back to the newest intact one, and ``alightning eval`` checks the same way."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from agent_lightning.loop import checkpoint as ckpt
from agent_lightning.loop.trainer import Trainer
from agent_lightning.metrics import read_metrics

WALL_CLOCK = ("time/", "train/tokens_per_s", "eval/time_s")


def _deterministic(records):
    return [{k: v for k, v in r.items() if not k.startswith(WALL_CLOCK)} for r in records]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run with checkpoints at steps 1, 2 and 3 (kept as a template: copy before damaging)."""
    from agent_lightning.config import validate

    data = {
        "model": {"preset": "tiny", "preset_options": {"hidden_size": 32, "num_layers": 1, "num_heads": 2}},
        "backend": {"name": "transformers", "device": "cpu"},
        "environment": {"name": "guess-number", "max_number": 6, "max_turns": 3},
        "algorithm": {"name": "grpo", "group_size": 4, "lr": 0.003},
        "sampling": {"max_new_tokens": 1, "max_turns": 3},
        "trainer": {"steps": 3, "batch_size": 4, "eval_episodes": 4, "checkpoint_every": 1, "seed": 0},
        "trackers": ["jsonl"],
    }
    run_dir = tmp_path_factory.mktemp("template") / "run"
    Trainer(validate(data), run_dir).run()
    assert [s for s, _ in ckpt.list_checkpoints(run_dir)] == [1, 2, 3]
    return run_dir


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def _largest_safetensors(folder: Path) -> Path:
    return max(folder.glob("*.safetensors"), key=lambda p: p.stat().st_size)


def _flip(path: Path, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, min(len(data), middle + count)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_manifest_digest(folder: Path) -> None:
    body = json.loads((folder / "manifest.json").read_text())
    name = sorted(body["files"])[0]
    body["files"][name]["blake2b"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(body))


def _edit_manifest_step(folder: Path) -> None:
    body = json.loads((folder / "manifest.json").read_text())
    body["step"] = 99
    (folder / "manifest.json").write_text(json.dumps(body))


def _drop_manifest_entry(folder: Path) -> None:
    body = json.loads((folder / "manifest.json").read_text())
    body["files"].pop(sorted(body["files"])[0])
    (folder / "manifest.json").write_text(json.dumps(body))


DAMAGE = {
    "flip 64 bytes of the largest safetensors": (lambda f: _flip(_largest_safetensors(f)), "contents changed"),
    "truncate the largest safetensors": (lambda f: _truncate(_largest_safetensors(f)), "truncated"),
    "delete the largest safetensors": (lambda f: _largest_safetensors(f).unlink(), "missing"),
    "flip bytes of trainer_state.json": (lambda f: _flip(f / "trainer_state.json", 4), "contents changed"),
    "delete the manifest": (lambda f: (f / "manifest.json").unlink(), "manifest.json: missing"),
    "edit a digest in the manifest": (_edit_manifest_digest, "manifest.json: edited"),
    "edit the step in the manifest": (_edit_manifest_step, "manifest.json: edited"),
    "drop a file from the manifest": (_drop_manifest_entry, "manifest.json: edited"),
    "truncate the manifest": (lambda f: _truncate(f / "manifest.json"), "manifest.json: edited"),
    "add a file": (lambda f: (f / "extra.bin").write_bytes(b"x"), "not in the checkpoint's manifest"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damage_to_the_newest_checkpoint_is_caught_and_resume_falls_back(run, trained, damage, caplog):
    apply, why = DAMAGE[damage]
    newest = run / "checkpoints" / "step-3"
    apply(newest)
    with pytest.raises(ckpt.CheckpointError, match=why):
        ckpt.verify_checkpoint(newest)
    with caplog.at_level(logging.WARNING, logger="agent_lightning.loop.checkpoint"):
        assert ckpt.latest_checkpoint(run) == (2, run / "checkpoints" / "step-2")
    assert any("step-3" in r.getMessage() and why in r.getMessage() for r in caplog.records)


def test_every_file_of_a_checkpoint_is_covered_by_the_manifest(trained, tmp_path):
    """The corruption corpus: flipped, truncated and deleted, for each file of a checkpoint."""
    source = trained / "checkpoints" / "step-3"
    names = sorted(p.name for p in source.iterdir())
    caught = 0
    for name in names:
        for damage in (lambda p: _flip(p, 8), _truncate, Path.unlink):
            folder = tmp_path / f"c{caught}"
            shutil.copytree(source, folder)
            damage(folder / name)
            with pytest.raises(ckpt.CheckpointError):
                ckpt.verify_checkpoint(folder)
            caught += 1
    assert caught == 3 * len(names) and len(names) == 7


def test_resume_skips_a_damaged_checkpoint_moves_it_aside_and_continues_exactly(run, trained, caplog):
    _flip(run / "checkpoints" / "step-3" / "model.safetensors")
    from agent_lightning.config import read_yaml, validate

    config = validate(read_yaml(str(run / "config.yaml")))
    with caplog.at_level(logging.WARNING):
        Trainer(config, run).run(resume=True)
    assert any("model.safetensors: contents changed" in r.getMessage() for r in caplog.records)
    assert (run / "checkpoints" / ".damaged-step-3").is_dir()  # kept for a look, never picked again
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [1, 2, 3]
    ckpt.verify_checkpoint(run / "checkpoints" / "step-3")  # step 3 trained again and saved
    assert _deterministic(read_metrics(run)) == _deterministic(read_metrics(trained))


def test_no_intact_checkpoint_is_one_line_exit_2(run, alightning, cli_env):
    for step in (1, 2, 3):
        _truncate(_largest_safetensors(run / "checkpoints" / f"step-{step}"))
    result = subprocess.run([*alightning, "run", "--resume", str(run)], capture_output=True, text=True, env=cli_env,
                            timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "no intact checkpoint" in error[0] and "truncated" in error[0]


def test_non_finite_weights_are_an_error_naming_the_file(run):
    import torch
    from safetensors.torch import load_file, save_file

    folder = run / "checkpoints" / "step-3"
    weights = folder / "model.safetensors"
    tensors = load_file(str(weights))
    name = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
    tensors[name][0] = float("nan")
    save_file(tensors, str(weights))
    (folder / "manifest.json").unlink()
    ckpt.write_manifest(folder, 3)  # the digests agree: only the values are wrong
    from agent_lightning.config import read_yaml, validate

    assert not bool(torch.isfinite(load_file(str(weights))[name]).all())
    trainer = Trainer(validate(read_yaml(str(run / "config.yaml"))), run)
    with pytest.raises(ckpt.CheckpointError, match=rf"model\.safetensors: weight '{name}' holds non-finite values"):
        trainer.run(resume=True)


def test_eval_refuses_a_damaged_checkpoint_and_skips_it_in_a_run(run, alightning, cli_env):
    _flip(run / "checkpoints" / "step-3" / "model.safetensors")
    one = subprocess.run([*alightning, "eval", str(run / "checkpoints" / "step-3"), "--episodes", "2", "--no-trackers"],
                         capture_output=True, text=True, env=cli_env, timeout=300)
    assert one.returncode == 2 and "Traceback" not in one.stderr
    assert "model.safetensors: contents changed" in one.stderr.strip().splitlines()[-1]
    whole = subprocess.run([*alightning, "--quiet", "eval", str(run), "--episodes", "2", "--no-trackers"],
                           capture_output=True, text=True, env=cli_env, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert "checkpoint step-3 is damaged and not evaluated" in whole.stderr
    steps = [r["step"] for r in json.loads((run / "eval" / "results.json").read_text())["checkpoints"]]
    assert steps == [0, 1, 2]
