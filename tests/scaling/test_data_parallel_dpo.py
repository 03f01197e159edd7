"""Online DPO in 2 gloo processes against 1 process at the same global batch.

DPO goes through the same update loop as the policy-gradient algorithms
(``algorithms.training.optimize``): under ``torchrun`` each rank computes the loss of its
share of each minibatch's pairs only (``distributed.micro_batches``), and the backend's
``optimizer_step`` averages the gradients. One ``torchrun`` launch of ``dpo_dp_worker.py``
runs 3 steps; the 1-process reference trains in this test process. Every step has pairs,
two epochs of three minibatches (uneven shares), and micro-batches of one or two pairs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from agent_lightning.algorithms.dpo import DPO
from agent_lightning.config import validate
from agent_lightning.loop.trainer import Trainer

pytestmark = pytest.mark.slow

TOLERANCE = 1e-6  # as test_data_parallel.py
STEPS, EPOCHS, MINIBATCHES = 3, 2, 3
WORKER = Path(__file__).with_name("dpo_dp_worker.py")
WALL_CLOCK = ("time/", "train/tokens_per_s", "eval/time_s")
EPISODE_KEYS = ("episodes", "failed_episodes", "success_rate", "reward_mean", "mean_reward", "mean_turns",
                "tokens_per_episode", "env/invalid", "env/wasted", "pairs", "skipped_ties")

CONFIG = {
    "model": {"preset": "tiny", "preset_options": {"hidden_size": 32, "num_layers": 1, "num_heads": 2}},
    "backend": {"name": "transformers", "device": "cpu", "threads": 1},
    "environment": {"name": "guess-number", "max_number": 32, "max_turns": 3, "wasted_guess_penalty": 0.1},
    "reward": {"name": "env-reward"},
    "algorithm": {"name": "dpo", "pairs": "online", "group_size": 4, "pairs_per_group": 2, "beta": 0.5,
                  "lr": 0.003, "sft_coef": 0.1, "epochs": EPOCHS, "minibatches": MINIBATCHES,
                  "micro_batch_tokens": 150},
    "sampling": {"max_new_tokens": 1, "max_turns": 3},
    "trainer": {"steps": STEPS, "batch_size": 6, "eval_episodes": 4, "seed": 0, "log_trajectories": 0,
                "checkpoint_every": 0},
    "trackers": ["jsonl"],
}


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The 2-process run: its folder, with ``run/`` and each rank's weights and pair count."""
    import os
    import time

    root = tmp_path_factory.mktemp("dpo-dp")
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    started = time.perf_counter()
    done = subprocess.run([*launch, str(WORKER), str(config_path), str(root)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"torchrun exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    print(f"\n2-process DPO run: {time.perf_counter() - started:.1f} s")
    return root


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The 1-process reference: initial and final weights, run directory, pairs seen by the loss."""
    seen: list[int] = []
    loss = DPO.loss

    def counting(self, backend, pairs):
        seen.append(len(pairs))
        return loss(self, backend, pairs)

    run_dir = tmp_path_factory.mktemp("dpo-single") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DPO, "loss", counting)
        trainer = Trainer(validate(CONFIG), run_dir)
        initial = {k: v.clone() for k, v in trainer.backend.weights_state_dict().items()}
        trainer.run()
    final = {k: v.clone() for k, v in trainer.backend.weights_state_dict().items()}
    return {"initial": initial, "final": final, "run_dir": run_dir, "pairs_seen": sum(seen)}


def test_two_processes_train_the_same_weights_as_one_process(runs, single):
    rank0, rank1 = (_weights(runs / f"rank-{r}.safetensors") for r in (0, 1))
    moved = _max_diff(single["final"], single["initial"])
    assert moved > 1000 * TOLERANCE  # training really moved the weights (the test can fail)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"ranks disagree on {name}"
    diff = _max_diff(rank0, single["final"])
    print(f"\nDPO: max |2-process - 1-process| over all parameters after {STEPS} steps: {diff:.3g} "
          f"(weights moved by up to {moved:.3g})")
    assert diff <= TOLERANCE


def test_rank_zero_logs_the_one_process_metrics(runs, single):
    records, reference = _metrics(runs / "run"), _metrics(single["run_dir"])
    assert [r["step"] for r in records] == list(range(STEPS + 1))
    for mine, theirs in zip(records, reference):
        assert mine.keys() == theirs.keys()
        for key in mine:
            if key.split("/", 1)[-1] in EPISODE_KEYS or key == "step":
                assert mine[key] == theirs[key], key  # built from the gathered rollouts: the same pairs
            elif not key.startswith(WALL_CLOCK):
                assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), key
    assert all(r["train/pairs"] > 0 and r["train/skipped_updates"] == 0 for r in records[1:])


def _share(n: int, rank: int, world: int) -> int:
    """Rows of an ``n``-row minibatch that ``rank`` takes (``distributed.micro_batches``)."""
    return (rank + 1) * n // world - rank * n // world


def test_each_rank_computes_the_loss_of_its_share_of_the_pairs_only(runs, single):
    infos = [json.loads((runs / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [(i["rank"], i["world_size"], i["backend"]) for i in infos] == [(0, 2, "gloo"), (1, 2, "gloo")]
    pairs = [int(r["train/pairs"]) for r in _metrics(runs / "run")[1:]]
    expected = [sum(_share(len(range(n)[m::MINIBATCHES]), rank, 2) for n in pairs for m in range(MINIBATCHES)) * EPOCHS
                for rank in (0, 1)]
    seen = [i["pairs_seen"] for i in infos]
    print(f"\npairs per step {pairs}; loss computed on {seen} pairs by ranks 0, 1; {single['pairs_seen']} in 1 process")
    assert single["pairs_seen"] == sum(pairs) * EPOCHS
    assert seen == expected and sum(seen) == single["pairs_seen"]
    assert all(0 < s < single["pairs_seen"] for s in seen)
    assert any(i["micro_batches"] < s for i, s in zip(infos, seen))  # some micro-batches hold several pairs
