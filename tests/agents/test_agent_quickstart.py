"""The packaged agent quickstart, whole, through the real CLI.

In a file of its own, first in collection order (``tests/agents``): it is the suite's longest
test (~7 minutes on two cores), and pytest-xdist (``--dist loadfile --no-loadscope-reorder``,
``pyproject.toml``) starts it at once on one worker while the other takes the rest of the
suite. Started late, as when its file was scheduled by its number of tests, it ran on alone
at the end of the run.
"""

from __future__ import annotations

import json
import subprocess

import pytest


@pytest.mark.slow
def test_the_agent_quickstart_learns_through_the_cli(alightning, cli_env, tmp_path):
    """The packaged quickstart-agent (openai SDK agents in a worker process), whole: 200 steps
    (held-out 0.02-0.05 -> 0.97-1.00 on six seeds, under 3 minutes each on two cores); by then
    the agent must use the hints far beyond the 0.5 that ignoring them can reach. A shortened
    run would not do: calls share batches by arrival time, so float rounding (and, now and then,
    a sampled token) differs run to run, and at step 125 runs read anywhere from 0.65 to 0.90."""
    run_dir = tmp_path / "qa"
    result = subprocess.run([*alightning, "run", "quickstart-agent", "trainer.eval_every=0",
                             "trainer.checkpoint_every=0", "trackers=[jsonl]", "--output-dir", str(run_dir)],
                            capture_output=True, text=True, env=cli_env, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/success_rate" in r]
    assert [r["step"] for r in evals] == [0, 200]
    start, end = evals[0]["eval/success_rate"], evals[-1]["eval/success_rate"]
    assert start <= 0.4 and end >= 0.8, (start, end)
    assert sum(r.get("agent/prefix_breaks", 0) for r in records) == 0
    assert all(r["train/failed_episodes"] == 0 for r in records if "train/failed_episodes" in r)
