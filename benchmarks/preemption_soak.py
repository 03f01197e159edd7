"""Preemption soak: SIGTERM at random moments, then ``--resume``; the metrics must equal an
uninterrupted run's.

    python benchmarks/preemption_soak.py [--trials 10] [--seed 0] [--steps 48] [--checkpoint-every 20]

Plays the quickstart (CPU, one thread) once without interruption, then ``--trials`` times:
start it, send SIGTERM after a random delay drawn over the whole run (start-up included),
check the exit code (143), that the newest checkpoint is at the last logged step and
verifies against its manifest (a signal during start-up, before the first evaluation, stops
with nothing to save), resume, and compare every deterministic metric of every
step with the uninterrupted run. Prints a table and a JSON summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WALL_CLOCK = ("time/", "train/tokens_per_s", "eval/time_s")


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _deterministic(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(WALL_CLOCK)} for r in records]


def _command(args: argparse.Namespace, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "agent_lightning.cli", "--quiet", "run", "quickstart", f"trainer.steps={args.steps}",
            f"trainer.checkpoint_every={args.checkpoint_every}", "trainer.eval_every=16", "trainer.eval_episodes=16",
            "trackers=[jsonl]", "--output-dir", str(run_dir)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--checkpoint-every", type=int, default=20)
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    rng = random.Random(args.seed)
    from agent_lightning.loop import checkpoint as ckpt

    with tempfile.TemporaryDirectory() as tmp:
        full_dir = Path(tmp) / "full"
        started = time.perf_counter()
        subprocess.run(_command(args, full_dir), env=env, check=True, capture_output=True)
        full_s = time.perf_counter() - started
        full = _deterministic(_records(full_dir))
        rows = []
        for trial in range(args.trials):
            run_dir = Path(tmp) / f"t{trial}"
            delay = rng.uniform(0.0, full_s)
            proc = subprocess.Popen(_command(args, run_dir), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            time.sleep(delay)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=600)
            logged = max((r["step"] for r in _records(run_dir)), default=None)
            found = ckpt.latest_checkpoint(run_dir) if (run_dir / "checkpoints").is_dir() else None
            # A signal during start-up stops before anything is trained: nothing to save.
            at_step = (found is not None and found[0] == logged) or (logged is None and found is None)
            resumed = subprocess.run([sys.executable, "-m", "agent_lightning.cli", "--quiet", "run", "--resume",
                                      str(run_dir)], env=env, capture_output=True)
            equal = resumed.returncode == 0 and _deterministic(_records(run_dir)) == full
            rows.append({"trial": trial, "signal_after_s": round(delay, 2), "exit": proc.returncode,
                         "stopped_after_step": logged, "checkpoint": found[0] if found else None,
                         "checkpoint_at_that_step": at_step, "resume_exit": resumed.returncode,
                         "metrics_equal": equal, "stderr_tail": err.decode()[-300:] if proc.returncode != 143 else ""})
    print(f"uninterrupted run: {args.steps} steps in {full_s:.1f} s")
    print(f"{'trial':>5} {'SIGTERM at s':>12} {'exit':>5} {'stopped after':>13} {'checkpoint':>10} "
          f"{'ckpt = step':>11} {'resume exit':>11} {'metrics equal':>13}")
    for r in rows:
        print(f"{r['trial']:>5} {r['signal_after_s']:>12} {r['exit']:>5} {str(r['stopped_after_step']):>13} "
              f"{str(r['checkpoint']):>10} {str(r['checkpoint_at_that_step']):>11} {r['resume_exit']:>11} "
              f"{str(r['metrics_equal']):>13}")
        if r["stderr_tail"]:
            print("      stderr:", r["stderr_tail"].replace("\n", " | "))
    ok = sum(r["exit"] == 143 and r["checkpoint_at_that_step"] and r["metrics_equal"] for r in rows)
    print(f"{ok} of {len(rows)} trials: exit 143, checkpoint at the interrupted step, resumed metrics equal")
    print(json.dumps({"trials": len(rows), "ok": ok, "full_run_s": round(full_s, 1), "rows": rows}))
    return 0 if ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
