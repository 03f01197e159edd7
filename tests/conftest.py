"""Shared fixtures: tiny configs built in code, run directories, plugin isolation."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Triton reads TRITON_INTERPRET when @triton.jit decorates a kernel, i.e. when
# agent_lightning.kernels is first imported — which any test module (not only tests/ops) may
# trigger through agent_lightning.ops. Without a GPU, interpret: set it before any test module
# is imported. With a GPU the variable is left alone and the kernels are compiled.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


def pytest_configure(config):
    """The suite's models are tiny: one intra-op thread each is fastest, and keeps two
    cores free of oversubscription when subprocesses run beside the test process."""
    import torch

    torch.set_num_threads(1)


def tiny_config_data(**sections):
    """A quickstart-shaped config small enough for a test (a few seconds per step)."""
    data = {
        "model": {"preset": "tiny", "preset_options": {"hidden_size": 32, "num_layers": 1, "num_heads": 2}},
        "backend": {"name": "transformers", "device": "cpu"},
        "environment": {"name": "guess-number", "max_number": 6, "max_turns": 3},
        "reward": {"name": "env-reward"},
        "algorithm": {"name": "grpo", "group_size": 4, "lr": 0.003},
        "sampling": {"max_new_tokens": 1, "max_turns": 3},
        "trainer": {"steps": 2, "batch_size": 4, "eval_episodes": 8, "seed": 0, "log_trajectories": 2},
        "trackers": ["jsonl"],
    }
    for name, value in sections.items():
        same_component = value.get("name", data.get(name, {}).get("name")) == data.get(name, {}).get("name") if isinstance(value, dict) and isinstance(data.get(name), dict) else False
        if same_component:
            data[name] = {**data[name], **value}
        else:
            data[name] = value
    return data


@pytest.fixture
def tiny_config_dict():
    """``tiny_config_data`` as a fixture (test modules must not import from conftest:
    several conftest.py files share that module name)."""
    return tiny_config_data


@pytest.fixture
def tiny_config():
    from agent_lightning.config import validate

    def make(**sections):
        return validate(tiny_config_data(**sections))

    return make


@pytest.fixture
def cli_env():
    """Environment for subprocess runs of the CLI (one thread: tests share two cores)."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def alightning():
    """Command prefix that runs the installed CLI with this interpreter."""
    return [sys.executable, "-m", "agent_lightning.cli"]
