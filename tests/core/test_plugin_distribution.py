"""The first-party plugin distribution, installed with pip like any outside plugin."""

from __future__ import annotations

import json
import subprocess
import sys

from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "agent-lightning-countdown"


@pytest.fixture(scope="module")
def installed_plugin():
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "install", "-q", "--no-deps", "--no-build-isolation", str(PLUGIN)], check=True, timeout=300)
    yield
    subprocess.run([*pip, "uninstall", "-y", "-q", "agent-lightning-countdown"], check=True, timeout=120)


def test_discovered_through_its_entry_point(installed_plugin):
    from agent_lightning.plugins import build_plugin_manager

    pm = build_plugin_manager()
    env = pm.environments.get("countdown")
    assert (env.source.distribution, env.source.version, env.source.plugin) == ("agent-lightning-countdown", "0.1.0", "countdown")
    assert pm.rewards.get("countdown-progress").source.distribution == "agent-lightning-countdown"


def test_listed_by_alightning_plugins(installed_plugin, alightning, cli_env):
    out = subprocess.run([*alightning, "plugins"], capture_output=True, text=True, env=cli_env, timeout=120, check=True).stdout
    rows = [line for line in out.splitlines() if "countdown" in line]
    assert any("environment" in r and "agent-lightning-countdown" in r and "0.1.0" in r for r in rows), out
    assert any("reward" in r and "countdown-progress" in r for r in rows), out
    assert any("algorithm" in line and "grpo" in line and "agent-lightning" in line for line in out.splitlines())


def test_usable_in_a_run(installed_plugin, alightning, cli_env, tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [*alightning, "run", "environment.name=countdown", "environment.max_start=4", "reward.name=countdown-progress",
         "trainer.steps=2", "trainer.batch_size=3", "trainer.eval_episodes=3", "algorithm.group_size=2",
         "trackers=[jsonl]", "--output-dir", str(run_dir)],
        capture_output=True, text=True, env=cli_env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"run directory: {run_dir}" in result.stdout
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert records[1]["train/episodes"] == 6.0


def test_plugin_own_tests_pass(installed_plugin):
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PLUGIN / "tests")],
                            capture_output=True, text=True, timeout=300, cwd=PLUGIN)
    assert result.returncode == 0, result.stdout + result.stderr
