"""The packaged quickstart, through the real CLI: it learns (a shortened run)."""

from __future__ import annotations

import json
import subprocess

import pytest


@pytest.mark.slow
def test_quickstart_learns_through_the_cli(alightning, cli_env, tmp_path):
    run_dir = tmp_path / "qs"
    # The full preset runs 250 steps (0.05 -> 0.97 held-out success); 100 steps must already
    # show the policy using the hints well beyond its random start.
    result = subprocess.run([*alightning, "run", "trainer.steps=100", "trainer.eval_every=0", "trackers=[console,jsonl]",
                             "--output-dir", str(run_dir)], capture_output=True, text=True, env=cli_env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0] == f"run directory: {run_dir}"
    assert "training log-probs: fused chunked torch" in result.stdout
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/success_rate" in r]
    assert [r["step"] for r in evals] == [0, 100]
    start, end = evals[0]["eval/success_rate"], evals[-1]["eval/success_rate"]
    assert start <= 0.4
    assert end >= start + 0.3, (start, end)
    assert (run_dir / "checkpoints" / "step-100" / "model.safetensors").is_file()
    assert sorted(p.name for p in (run_dir / "trajectories").iterdir())[:2] == ["step-1.jsonl", "step-10.jsonl"]
    assert json.loads((run_dir / "run_info.json").read_text())["ops/token_logprobs"] == "fused chunked torch"
