"""A tiny trained run shared by the evaluation and report tests (trained once per session)."""

from __future__ import annotations

import shutil

import pytest

TINY_RUN = {
    "model": {"preset": "tiny", "preset_options": {"hidden_size": 32, "num_layers": 1, "num_heads": 2}},
    "backend": {"name": "transformers", "device": "cpu", "threads": 1},
    # The penalty gives GRPO a signal from the first step, so the two checkpoints differ from the base.
    "environment": {"name": "guess-number", "max_number": 6, "max_turns": 3, "wasted_guess_penalty": 0.5},
    "reward": {"name": "env-reward"},
    "algorithm": {"name": "grpo", "group_size": 4, "lr": 0.1},
    "sampling": {"max_new_tokens": 1, "max_turns": 3},
    "trainer": {"steps": 2, "batch_size": 4, "eval_every": 1, "eval_episodes": 12, "checkpoint_every": 1,
                "seed": 0, "log_trajectories": 2},
    "trackers": ["jsonl"],
}


@pytest.fixture(scope="session")
def al_eval_trained_run(tmp_path_factory):
    """A pristine 2-step run directory with checkpoints step-1 and step-2 (copy it before writing)."""
    from agent_lightning.config import validate
    from agent_lightning.loop.trainer import Trainer

    run_dir = tmp_path_factory.mktemp("eval-run") / "run"
    Trainer(validate(TINY_RUN), run_dir).run()
    return run_dir


@pytest.fixture(scope="session")
def al_eval_evaluated_run(al_eval_trained_run, tmp_path_factory):
    """A copy of the trained run after ``evaluate_run`` (base + both checkpoints)."""
    from agent_lightning.evaluation.harness import evaluate_run

    run_dir = tmp_path_factory.mktemp("evaluated") / "run"
    shutil.copytree(al_eval_trained_run, run_dir)
    evaluate_run(run_dir, samples=2)
    return run_dir


@pytest.fixture
def al_eval_run_copy(al_eval_trained_run, tmp_path):
    """A private copy of the trained run."""
    run_dir = tmp_path / "run"
    shutil.copytree(al_eval_trained_run, run_dir)
    return run_dir
