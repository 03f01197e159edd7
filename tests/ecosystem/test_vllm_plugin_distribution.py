"""The ``agent-lightning-vllm`` distribution installs like any outside plugin (without its
vllm dependency here: no GPU) and its own tests pass (the CUDA ones skip with a reason)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "agent-lightning-vllm"


@pytest.fixture(scope="module")
def installed_plugin():
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "install", "-q", "--no-deps", "--no-build-isolation", str(PLUGIN)], check=True, timeout=300)
    yield
    subprocess.run([*pip, "uninstall", "-y", "-q", "agent-lightning-vllm"], check=True, timeout=120)


def test_vllm_backend_is_discovered_through_its_entry_point(installed_plugin):
    from agent_lightning.plugins import build_plugin_manager

    entry = build_plugin_manager().backends.get("vllm")
    assert (entry.source.distribution, entry.source.version, entry.source.plugin) == ("agent-lightning-vllm", "0.1.0", "vllm")
    assert "vLLM generation" in entry.description


@pytest.mark.slow
def test_plugin_own_tests_pass_and_gpu_tests_skip_with_a_reason(installed_plugin):
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(PLUGIN / "tests")],
                            capture_output=True, text=True, timeout=600, cwd=PLUGIN)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    import torch

    if not torch.cuda.is_available():
        assert "needs a CUDA device" in result.stdout
        assert "11 passed, 3 skipped" in result.stdout
