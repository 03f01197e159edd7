"""The repository's ``kernels/`` folder never shadows Hugging Face's ``kernels`` package.

transformers imports ``kernels`` (a dependency since 5.x). A process whose current
directory is the repository root has that directory first on ``sys.path``
(``python -m``, ``torchrun -m``, Ray workers), so an importable ``kernels`` package there
would be imported instead and break transformers. These tests start each entry point from
the repository root, with Hugging Face's ``kernels`` installed (the ``dev`` extra names it).
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMALL = ["trainer.eval_episodes=2", "trainer.batch_size=2", "algorithm.group_size=2", "trackers=[jsonl]"]


def _run_from_repo_root(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env, timeout=timeout)


def test_hugging_face_kernels_is_installed_and_the_folder_has_no_init():
    assert importlib.metadata.version("kernels")  # the dev extra installs it: the tests below need it
    assert (REPO / "kernels").is_dir() and not (REPO / "kernels" / "__init__.py").exists()


def test_import_kernels_from_the_repository_root_finds_hugging_faces(cli_env):
    probe = ("import kernels, transformers, json; "
             "from transformers import AutoModelForCausalLM; "
             "import agent_lightning.kernels as ours; "
             "print(json.dumps([kernels.__file__, ours.__file__]))")
    result = _run_from_repo_root([sys.executable, "-c", probe], cli_env)
    assert result.returncode == 0, result.stderr[-2000:]
    theirs, ours = json.loads(result.stdout.strip().splitlines()[-1])
    installed = Path(str(importlib.metadata.distribution("kernels").locate_file("kernels/__init__.py"))).resolve()
    assert theirs is not None and Path(theirs).resolve() == installed, theirs
    assert Path(ours).resolve() == REPO / "kernels" / "triton" / "__init__.py"


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_python_dash_m_cli_runs_the_quickstart_from_the_repository_root(cli_env, tmp_path):
    run_dir = tmp_path / "qs"
    result = _run_from_repo_root([sys.executable, "-m", "agent_lightning.cli", "run", "quickstart", "trainer.steps=1",
                                  *SMALL, "--output-dir", str(run_dir)], cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["step"] for r in _metrics(run_dir) if "train/reward_mean" in r] == [1]


@pytest.mark.slow
def test_torchrun_dash_m_from_the_repository_root(cli_env, tmp_path):
    run_dir = tmp_path / "dp"
    result = _run_from_repo_root([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                  "-m", "agent_lightning.cli", "run", "quickstart", "trainer.steps=1", *SMALL,
                                  "--output-dir", str(run_dir)], cli_env)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    assert [r["step"] for r in _metrics(run_dir) if "train/reward_mean" in r] == [1]


@pytest.mark.slow
def test_ray_workers_started_from_the_repository_root(cli_env, tmp_path):
    run_dir = tmp_path / "ray"
    result = _run_from_repo_root([sys.executable, "-m", "agent_lightning.cli", "run", "quickstart", "trainer.steps=1",
                                  *SMALL, "trainer.executor.name=ray", "trainer.executor.workers=1",
                                  "--output-dir", str(run_dir)], cli_env)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    assert [r["step"] for r in _metrics(run_dir) if "train/reward_mean" in r] == [1]
