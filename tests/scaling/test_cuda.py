"""GPU runs of the data-parallel path; skipped without CUDA.

* NCCL: ``min(2, GPUs)`` ranks on ``cuda:LOCAL_RANK`` (``trainer.distributed.backend: auto``
  picks NCCL for a CUDA policy). With one GPU this is a 1-rank NCCL group: it checks
  process-group start, broadcasts, rank-0 checkpoints and shutdown, not the sharding
  (NCCL refuses two ranks on one device).
* Two gloo ranks sharing one GPU, so that the sharded path runs on CUDA tensors too
  (``ddp`` only: FSDP2's collectives on CUDA tensors over gloo ended both ranks with
  SIGSEGV on torch 2.11 / H200; FSDP on GPUs is meant for NCCL).

Both against a 1-process CUDA run in this test process (float32, 1e-6). Seen on one H200
(torch 2.11): NCCL 1 rank vs 1 process 0; 2 gloo ranks vs 1 process 8.7e-8.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from agent_lightning.config import validate
from agent_lightning.loop.trainer import Trainer

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TOLERANCE = 1e-6
WORKER = Path(__file__).with_name("dp_worker.py")
CONFIG = {
    "model": {"preset": "tiny", "preset_options": {"hidden_size": 32, "num_layers": 1, "num_heads": 2}},
    "backend": {"name": "transformers", "device": "cuda"},
    "environment": {"name": "guess-number", "max_number": 32, "max_turns": 3, "wasted_guess_penalty": 0.1},
    "reward": {"name": "env-reward"},
    "algorithm": {"name": "grpo", "group_size": 4, "lr": 0.001, "minibatches": 2, "micro_batch_tokens": 128},
    "sampling": {"max_new_tokens": 1, "max_turns": 3},
    "trainer": {"steps": 3, "batch_size": 4, "eval_episodes": 8, "seed": 0, "log_trajectories": 2},
    "trackers": ["jsonl"],
}


@pytest.fixture(scope="module")
def single_cuda(tmp_path_factory):
    trainer = Trainer(validate(CONFIG), tmp_path_factory.mktemp("single-cuda") / "run")
    initial = {k: v.clone() for k, v in trainer.backend.weights_state_dict().items()}
    trainer.run()
    return initial, {k: v.clone() for k, v in trainer.backend.weights_state_dict().items()}


def _launch(tmp_path: Path, config: dict, nproc: int, strategies: str) -> list[dict]:
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               str(WORKER), str(config_path), str(tmp_path), "1", strategies]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return [json.loads((tmp_path / strategies / f"rank-{r}.json").read_text()) for r in range(nproc)]


def _check(tmp_path: Path, strategy: str, nproc: int, single_cuda) -> float:
    from safetensors.torch import load_file

    initial, final = single_cuda
    moved = max(float((final[k] - initial[k]).abs().max()) for k in final)
    assert moved > 1000 * TOLERANCE
    diffs = []
    for rank in range(nproc):
        weights = load_file(str(tmp_path / strategy / f"rank-{rank}.safetensors"))
        diffs.append(max(float((weights[k] - final[k].cpu()).abs().max()) for k in final))
    print(f"\nmax |{nproc}-process - 1-process| on CUDA ({strategy}): {max(diffs):.3g} (moved {moved:.3g})")
    return max(diffs)


def test_nccl_ranks_train_like_one_process(tmp_path, single_cuda):
    nproc = min(2, torch.cuda.device_count())
    infos = _launch(tmp_path, CONFIG, nproc, "ddp")
    assert [(i["rank"], i["world_size"], i["backend"]) for i in infos] == [(r, nproc, "nccl") for r in range(nproc)]
    assert _check(tmp_path, "ddp", nproc, single_cuda) <= TOLERANCE


@pytest.mark.parametrize("strategy", ["ddp"])
def test_two_gloo_ranks_on_one_gpu_train_like_one_process(tmp_path, single_cuda, strategy):
    config = copy.deepcopy(CONFIG)
    config["trainer"]["distributed"] = {"backend": "gloo"}
    infos = _launch(tmp_path, config, 2, strategy)
    assert [(i["rank"], i["world_size"], i["backend"]) for i in infos] == [(0, 2, "gloo"), (1, 2, "gloo")]
    assert _check(tmp_path, strategy, 2, single_cuda) <= TOLERANCE
