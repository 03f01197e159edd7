"""``alightning report`` (PNG plots, one self-contained HTML page, rendered by headless
Chromium) and ``alightning show`` (trajectories in the terminal)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

TRAINING_PLOTS = ["reward", "success", "entropy", "loss", "tokens_per_s"]


def _pixels(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(np.int64)


def _count_colour(pixels, rgb, tol=6) -> int:
    import numpy as np

    return int((np.abs(pixels - np.array(rgb)).max(axis=-1) <= tol).sum())


@pytest.fixture(scope="module")
def report(al_eval_evaluated_run, tmp_path_factory):
    from agent_lightning.cli.main import main

    out = tmp_path_factory.mktemp("report")
    assert main(["report", str(al_eval_evaluated_run), "--output-dir", str(out), "--trajectories", "2"]) == 0
    return al_eval_evaluated_run, out


def test_report_writes_the_plots(report):
    _, out = report
    names = sorted(p.stem for p in out.glob("*.png"))
    # KL is logged only with algorithm.kl_coef > 0: no plot, and the page says so.
    assert names == sorted(TRAINING_PLOTS + ["eval_checkpoints"])
    for name in names:
        pixels = _pixels(out / f"{name}.png")
        assert pixels.shape == (360, 640, 3), name
        assert pixels.std() > 20, f"{name}.png looks blank"
        assert _count_colour(pixels, (31, 119, 180)) > 50, f"{name}.png has no data line"  # matplotlib's C0 blue


def test_report_html_is_one_self_contained_page(report):
    run_dir, out = report
    page = (out / "report.html").read_text()
    # Nothing is fetched: every src is an inlined PNG, and there is no link, script or url().
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 6 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"<link|<script|url\(|https?://|@import", page)
    # The eval table: base and both checkpoints with their intervals.
    doc = json.loads((run_dir / "eval" / "results.json").read_text())
    for r in doc["checkpoints"]:
        assert f"[{r['success_ci'][0]:.3f}, {r['success_ci'][1]:.3f}]" in page
    assert "base (step 0)" in page and "step 2" in page and "Not in this run: KL" in page
    # Trajectories of the first and last step, as conversations with masked tokens marked.
    shown = [json.loads(line) for step in (1, 2)
             for line in (run_dir / "trajectories" / f"step-{step}.jsonl").read_text().splitlines()[:2]]
    assert "<h3>step 1</h3>" in page and "<h3>step 2</h3>" in page
    assert page.count('<div class="traj') == 4
    # One green bubble per turn (plus the legend's), one green token per policy token, one grey
    # token per masked one.
    assert page.count('<div class="msg policy">') == sum(len(r["turns"]) for r in shown)
    assert page.count('<span class="tok policy">') == sum(sum(r["policy_mask"]) for r in shown)
    assert page.count('<span class="tok masked">') == sum(len(r["policy_mask"]) - sum(r["policy_mask"]) for r in shown)
    for record in shown:
        assert all(f"{html.escape(turn['action'])}</div>" in page for turn in record["turns"])
    assert "&lt;|user|&gt;" in page  # special tokens escaped, not parsed as tags
    assert "wasted_guess_penalty: 0.5" in page  # the config


def test_report_renders_in_headless_chromium(report, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    _, out = report
    shot = tmp_path / "report-screenshot.png"
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,3000",
         (out / "report.html").as_uri()],
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    artifacts = os.environ.get("ALIGHTNING_ARTIFACT_DIR")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / shot.name)
    pixels = _pixels(shot)
    assert pixels.shape == (3000, 1280, 3)
    assert pixels.std() > 20 and len({tuple(p) for p in pixels[::7, ::7].reshape(-1, 3)}) > 100, "blank screenshot"
    # Our page, not an error page: the header band, the plots (decoded inline PNGs) and the
    # green policy bubbles of the trajectories are all on screen.
    assert _count_colour(pixels[:60], (26, 35, 126), tol=2) > 20_000  # header #1a237e
    assert _count_colour(pixels, (31, 119, 180)) > 500  # plot lines
    assert _count_colour(pixels, (200, 230, 201), tol=2) > 2_000  # policy bubbles #c8e6c9


def test_show_prints_trajectories_as_conversations(al_eval_trained_run, capsys):
    from agent_lightning.cli.main import main

    records = [json.loads(line) for line in (al_eval_trained_run / "trajectories" / "step-1.jsonl").read_text().splitlines()]
    assert main(["show", str(al_eval_trained_run), "--step", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"step 1: {len(records)} trajectories")
    assert "\x1b" not in out  # captured, not a terminal
    assert out.count("policy (trained, 1 token): ") == sum(len(r["turns"]) for r in records)
    assert out.count("prompt (masked, 11 tokens): ") == len(records)
    for record in records:
        assert record["id"] in out
        for turn in record["turns"]:
            assert f"policy (trained, 1 token): {turn['action']}" in out
    assert main(["show", str(al_eval_trained_run)]) == 0
    assert capsys.readouterr().out.startswith("step 2: ")  # default: the latest step
    assert main(["show", str(al_eval_trained_run), "--step", "7"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "steps with trajectories: 1, 2" in err and len(err.splitlines()) == 1
