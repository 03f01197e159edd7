"""Checkpoints: atomic publication, no pickle, and exact resume."""

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


@pytest.mark.parametrize("lora", [False, True])
def test_stop_and_resume_logs_the_same_metrics_as_an_uninterrupted_run(tiny_config, tmp_path, lora):
    model = {"lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}} if lora else {}
    config = tiny_config(model=model, trainer={"steps": 4, "eval_every": 2, "checkpoint_every": 0, "eval_episodes": 6},
                         algorithm={"minibatches": 2})
    Trainer(config, tmp_path / "full").run()
    Trainer(config, tmp_path / "split").run(until_step=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "split")] == [2]
    # A fresh process would build a fresh Trainer from the run directory: do the same.
    Trainer(config, tmp_path / "split").run(resume=True)
    full, split = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "split")
    assert [r["step"] for r in split] == [0, 1, 2, 3, 4]
    assert _deterministic(split) == _deterministic(full)
    weights = "adapter.safetensors" if lora else "model.safetensors"
    assert (tmp_path / "split" / "checkpoints" / "step-4" / weights).is_file()


def test_checkpoint_files_hold_no_pickle(tiny_config, tmp_path):
    Trainer(tiny_config(trainer={"steps": 1, "eval_episodes": 4}), tmp_path / "run").run()
    folder = tmp_path / "run" / "checkpoints" / "step-1"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["backend.json", "backend.safetensors", "manifest.json", "model.safetensors", "trainer.json",
                     "trainer_state.json", "trainer_state.safetensors"]
    from safetensors import safe_open

    for path in folder.iterdir():  # every file is plain JSON or safetensors: nothing is unpickled
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            with safe_open(str(path), framework="pt") as handle:
                assert list(handle.keys())
    state = json.loads((folder / "backend.json").read_text())
    assert "optimizer" in state and "scheduler" in state and "generator" in state


def test_interrupted_save_is_never_picked(tmp_path):
    def good(folder):
        (folder / "trainer.json").write_text("{}")

    def dies(folder):
        (folder / "trainer.json").write_text("{}")
        raise KeyboardInterrupt  # killed half-way

    ckpt.write_checkpoint(tmp_path, 1, good, keep=3)
    with pytest.raises(KeyboardInterrupt):
        ckpt.write_checkpoint(tmp_path, 2, dies, keep=3)
    assert ckpt.latest_checkpoint(tmp_path)[0] == 1
    assert any(p.name.startswith(".tmp-step-2") for p in (tmp_path / "checkpoints").iterdir())


def test_old_checkpoints_are_pruned(tmp_path):
    for step in range(1, 6):
        ckpt.write_checkpoint(tmp_path, step, lambda f: (f / "trainer.json").write_text("{}"), keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [4, 5]


def test_state_round_trip_without_pickle(tmp_path):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=0.1)
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()
    state = {"optimizer": opt.state_dict(), "rng": torch.random.get_rng_state(), "t": (1, 2.5, "x", None)}
    ckpt.save_state(state, tmp_path / "s")
    back = ckpt.load_state(tmp_path / "s")
    assert back["t"] == (1, 2.5, "x", None)
    assert torch.equal(back["rng"], state["rng"])
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    fresh = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=0.1)
    fresh.load_state_dict(back["optimizer"])
    with pytest.raises(TypeError, match="cannot be stored without pickle"):
        ckpt.save_state({"bad": object()}, tmp_path / "bad")


def test_cli_resume_continues_a_run(alightning, cli_env, tmp_path, tiny_config_dict):
    import subprocess

    import yaml

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(trainer={"steps": 4, "eval_every": 2, "eval_episodes": 6})))

    def run(*args):
        result = subprocess.run([*alightning, "run", *args], capture_output=True, text=True, env=cli_env, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        return result

    run(str(config), "--output-dir", str(tmp_path / "full"))
    run(str(config), "trainer.steps=2", "--output-dir", str(tmp_path / "split"))
    resumed = run("--resume", str(tmp_path / "split"), "trainer.steps=4")
    assert f"run directory: {tmp_path / 'split'}" in resumed.stdout
    full, split = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "split")
    assert [r["step"] for r in split] == [0, 1, 2, 3, 4]
    assert _deterministic(split) == _deterministic(full)
    assert yaml.safe_load((tmp_path / "split" / "config.yaml").read_text())["trainer"]["steps"] == 4
