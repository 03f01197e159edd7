"""Real 2-process gloo runs against a 1-process run at the same global batch.

One ``torchrun`` launch of ``dp_worker.py`` does, for each strategy (``ddp``, ``fsdp``), 4
uninterrupted steps and, in a second run directory, a run stopped after step 2. The
``fsdp`` one is resumed there by a fresh trainer; the ``ddp`` one by the CLI in fresh
processes (``alightning run --nproc 2 --resume``, which goes through ``torchrun -m
agent_lightning.cli``). The 1-process reference trains in this test process. Every step
has reward variance (so a gradient), two minibatches and several micro-batches per rank.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from agent_lightning.config import validate
from agent_lightning.loop import checkpoint as ckpt
from agent_lightning.loop.trainer import Trainer
from agent_lightning.metrics import read_metrics

pytestmark = pytest.mark.slow

TOLERANCE = 1e-6
STEPS, STOP = 4, 2
WORKER = Path(__file__).with_name("dp_worker.py")
WALL_CLOCK = ("time/", "train/tokens_per_s", "eval/time_s")
# Episode statistics are computed from the gathered trajectories: identical to the bit.
EPISODE_KEYS = ("episodes", "failed_episodes", "success_rate", "reward_mean", "mean_reward", "mean_turns",
                "tokens_per_episode", "env/invalid", "env/wasted")

CONFIG = {
    "model": {"preset": "tiny", "preset_options": {"hidden_size": 32, "num_layers": 1, "num_heads": 2}},
    "backend": {"name": "transformers", "device": "cpu", "threads": 1},
    "environment": {"name": "guess-number", "max_number": 32, "max_turns": 3, "wasted_guess_penalty": 0.1},
    "reward": {"name": "env-reward"},
    "algorithm": {"name": "grpo", "group_size": 4, "lr": 0.001, "minibatches": 2, "micro_batch_tokens": 128},
    "sampling": {"max_new_tokens": 1, "max_turns": 3},
    "trainer": {"steps": STEPS, "batch_size": 4, "eval_episodes": 8, "seed": 0, "log_trajectories": 2,
                "checkpoint_every": 2},
    "trackers": ["jsonl"],
}


def _run(command: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command[:6]} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Paths and outputs of the 2-process runs (launched once for the module)."""
    import os

    root = tmp_path_factory.mktemp("dp")
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    _run([*launch, str(WORKER), str(config_path), str(root), str(STOP)], root, env)
    resumed = _run([sys.executable, "-m", "agent_lightning.cli", "run", "--nproc", "2",
                    "--resume", str(root / "ddp" / "resumed")], root, env)
    return {"root": root, "resume_stdout": resumed.stdout}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The 1-process reference: initial and final weights, run directory."""
    config = validate(CONFIG)
    run_dir = tmp_path_factory.mktemp("single") / "run"
    trainer = Trainer(config, run_dir)
    initial = {k: v.clone() for k, v in trainer.backend.weights_state_dict().items()}
    trainer.run()
    final = {k: v.clone() for k, v in trainer.backend.weights_state_dict().items()}
    return {"initial": initial, "final": final, "run_dir": run_dir}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


STRATEGIES = pytest.mark.parametrize("strategy", ["ddp", "fsdp"])


@STRATEGIES
def test_two_processes_train_the_same_parameters_as_one_process(runs, single, strategy):
    rank0, rank1 = (_weights(runs["root"] / strategy / f"rank-{r}.safetensors") for r in (0, 1))
    moved = _max_diff(single["final"], single["initial"])
    assert moved > 1000 * TOLERANCE  # training really moved the weights (the test can fail)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"ranks disagree on {name}"
    diff = _max_diff(rank0, single["final"])
    print(f"\n{strategy}: max |2-process - 1-process| over all parameters after {STEPS} steps: {diff:.3g} "
          f"(weights moved by up to {moved:.3g})")
    assert diff <= TOLERANCE


def _deterministic(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(WALL_CLOCK)} for r in records]


@STRATEGIES
def test_rank_zero_alone_writes_and_logs_the_global_batch(runs, single, strategy):
    root = runs["root"] / strategy
    infos = [json.loads((root / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [(i["rank"], i["world_size"], i["backend"], i["strategy"]) for i in infos] == [
        (0, 2, "gloo", strategy), (1, 2, "gloo", strategy)]
    assert [i["trackers"] for i in infos] == [["jsonl"], []]
    full, reference = root / "full", single["run_dir"]
    records = read_metrics(full)
    assert [r["step"] for r in records] == list(range(STEPS + 1))  # one line per step: one writer
    for mine, theirs in zip(records, read_metrics(reference)):
        assert mine.keys() == theirs.keys()
        for key in mine:
            if key.split("/", 1)[-1] in EPISODE_KEYS or key == "step":
                assert mine[key] == theirs[key], key  # 16 episodes per step, not a rank's 8
            elif not key.startswith(WALL_CLOCK):
                assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), key
    for name in ("trajectories", "checkpoints"):  # same files, nothing left half-written
        assert sorted(p.name for p in (full / name).iterdir()) == sorted(p.name for p in (reference / name).iterdir())
    for path in (full / "trajectories").iterdir():
        assert path.read_text() == (reference / "trajectories" / path.name).read_text()
    assert [s for s, _ in ckpt.list_checkpoints(full)] == [2, 4]


@STRATEGIES
def test_a_resumed_distributed_run_ends_where_the_uninterrupted_one_does(runs, strategy):
    root = runs["root"] / strategy
    resumed, full = root / "resumed", root / "full"
    if strategy == "ddp":  # resumed by the CLI in fresh processes
        assert runs["resume_stdout"].count(f"finished {STEPS} steps") == 1  # printed by rank 0 only
    assert [s for s, _ in ckpt.list_checkpoints(resumed)] == [2, 4]
    diff = _max_diff(_weights(resumed / "checkpoints" / "step-4" / "model.safetensors"),
                     _weights(root / "rank-0.safetensors"))
    print(f"\n{strategy}: max |resumed - uninterrupted| (2 processes): {diff:.3g}")
    assert diff <= TOLERANCE
    assert [r["step"] for r in read_metrics(resumed)] == list(range(STEPS + 1))
    assert _deterministic(read_metrics(resumed)) == _deterministic(read_metrics(full))
