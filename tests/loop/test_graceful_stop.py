"""SIGTERM / SIGINT through the real CLI: finish the step, checkpoint, flush, exit 143 / 130,
and ``--resume`` continues with nothing lost."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent_lightning.loop import checkpoint as ckpt
from agent_lightning.loop import stopping

WALL_CLOCK = ("time/", "train/tokens_per_s", "eval/time_s")
RUN = ["run", "quickstart", "trainer.steps=14", "trainer.eval_every=7", "trainer.checkpoint_every=5",
       "trainer.eval_episodes=8", "trackers=[console,jsonl]"]


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def _deterministic(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(WALL_CLOCK)} for r in records]


def _default_signals() -> None:
    """In the child before exec: SIGINT/SIGTERM at their defaults. A suite started in the
    background by a shell without job control has SIGINT ignored, and a run that starts with
    a signal ignored keeps ignoring it (``stopping``)."""
    for sig in stopping.SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


_STARTED: list[subprocess.Popen] = []


def _popen(command: list[str], env: dict) -> subprocess.Popen:
    """A child that is killed, with everything it started, after the test if the test left it
    running (a failure path)."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_signals)
    _STARTED.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _reap():
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            # torchrun starts its ranks in sessions of their own: kill them by ancestry.
            family, todo = [], [proc.pid]
            while todo:
                pid = todo.pop()
                family.append(pid)
                todo.extend(_children(pid))
            for pid in family:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _start(alightning, cli_env, run_dir: Path, *extra: str) -> subprocess.Popen:
    return _popen([*alightning, *RUN, *extra, "--output-dir", str(run_dir)], cli_env)


def _wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r["step"] >= step for r in _records(run_dir)):
            return
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout} s")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from agent_lightning.cli.main import main

    run_dir = tmp_path_factory.mktemp("full") / "run"
    assert main([*RUN, "trackers=[jsonl]", "--output-dir", str(run_dir)]) == 0
    return _records(run_dir)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_checkpoints_the_step_and_resume_equals_an_uninterrupted_run(alightning, cli_env, tmp_path, uninterrupted,
                                                                             signum, code):
    run_dir = tmp_path / "run"
    proc = _start(alightning, cli_env, run_dir)
    _wait_for_step(proc, run_dir, 2)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err
    stopped = max(r["step"] for r in _records(run_dir))  # the tracker was flushed up to the interrupted step
    assert 2 <= stopped < 14
    assert [s for s, _ in ckpt.list_checkpoints(run_dir)][-1] == stopped
    ckpt.verify_checkpoint(run_dir / "checkpoints" / f"step-{stopped}")
    last = out.strip().splitlines()[-1]
    assert last == (f"stopped by {signal.Signals(signum).name} after step {stopped} (checkpoint "
                    f"{run_dir / 'checkpoints' / f'step-{stopped}'}); resume with: alightning run --resume {run_dir}")

    resumed = subprocess.run([*alightning, "run", "--resume", str(run_dir)], env=cli_env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    records = _records(run_dir)
    assert [r["step"] for r in records] == [r["step"] for r in uninterrupted]
    assert _deterministic(records) == _deterministic(uninterrupted)


def test_a_second_sigint_stops_at_once(alightning, cli_env, tmp_path):
    run_dir = tmp_path / "run"
    # A long rollout per step, so that both signals land inside one step.
    proc = _start(alightning, cli_env, run_dir, "trainer.batch_size=256", "trainer.checkpoint_every=0")
    _wait_for_step(proc, run_dir, 1)
    lines: list[str] = []
    out: list[str] = []
    readers = [threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True),
               threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)]
    for reader in readers:
        reader.start()
    proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 60
    while not any("SIGINT received" in line for line in lines):  # the first one was handled
        assert time.monotonic() < deadline and proc.poll() is None, lines[-5:]
        time.sleep(0.01)
    time.sleep(stopping.REPEAT_WINDOW_S + 0.1)  # a repeat within the window counts as the same request
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:  # _reap kills it
        raise AssertionError("the second SIGINT did not stop the run within 120 s:\n" + "".join(lines[-30:])) from None
    for reader in readers:
        reader.join(timeout=10)
    assert proc.returncode == 130, "".join(lines[-30:])
    assert lines[-1].strip() == "interrupted"
    assert not any("resume with" in line for line in out)  # it did not go on to write a checkpoint
    assert ckpt.list_checkpoints(run_dir) == []


@pytest.fixture
def default_handlers():
    """Python's own SIGINT/SIGTERM handlers for the test, whatever the suite was started with
    (a shell without job control starts background jobs with SIGINT ignored)."""
    saved = {sig: signal.getsignal(sig) for sig in stopping.SIGNALS}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield {sig: signal.getsignal(sig) for sig in stopping.SIGNALS}
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_stop_signal_takes_a_quick_repeat_as_the_same_request_and_a_later_one_as_the_second(monkeypatch,
                                                                                             default_handlers):
    clock = [100.0]
    monkeypatch.setattr(stopping.time, "monotonic", lambda: clock[0])
    with stopping.StopSignal(announce=False) as stop:
        assert all(signal.getsignal(sig) == stop._handle for sig in stopping.SIGNALS)
        signal.raise_signal(signal.SIGINT)  # handled: no KeyboardInterrupt
        assert stop.signum == signal.SIGINT
        clock[0] += stopping.REPEAT_WINDOW_S / 2
        signal.raise_signal(signal.SIGINT)  # forwarded by torchrun: the same request
        assert stop.signum == signal.SIGINT
        clock[0] += stopping.REPEAT_WINDOW_S
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # the second: at once
    assert {sig: signal.getsignal(sig) for sig in stopping.SIGNALS} == default_handlers  # restored


def test_a_signal_ignored_at_the_start_stays_ignored(default_handlers):
    """``nohup``-style: SIGINT was SIG_IGN when the run started, so Ctrl-C does not stop it;
    SIGTERM still asks for a graceful stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with stopping.StopSignal(announce=False) as stop:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.raise_signal(signal.SIGINT)
        assert stop.signum is None
        signal.raise_signal(signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_stop_signal_codes():
    assert stopping.exit_code(signal.SIGTERM) == 143 and stopping.exit_code(signal.SIGINT) == 130
    assert stopping.signal_name(signal.SIGTERM) == "SIGTERM"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_under_torchrun_every_rank_stops_after_the_same_step(cli_env, tmp_path):
    """SIGTERM reaches one rank only; both stop after the same step and rank 0 saves it."""
    run_dir = tmp_path / "dp"
    proc = _popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   "-m", "agent_lightning.cli", *RUN, "trainer.steps=40", "--output-dir", str(run_dir)], cli_env)
    _wait_for_step(proc, run_dir, 2)
    workers = sorted(_children(proc.pid))
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGTERM)  # the rank started last: not rank 0, most likely
    out, err = proc.communicate(timeout=180)
    stopped = max(r["step"] for r in _records(run_dir))
    assert stopped < 40, "the run was not stopped"
    assert [s for s, _ in ckpt.list_checkpoints(run_dir)][-1] == stopped
    assert f"stopped by SIGTERM after step {stopped}" in out, (out[-2000:], err[-2000:])


def test_a_signal_during_start_up_stops_before_the_first_evaluation(tiny_config, tmp_path):
    from agent_lightning.loop.trainer import Trainer

    signals = stopping.StopSignal(announce=False)
    signals.signum = signal.SIGTERM  # arrived while the model was loading
    result = Trainer(tiny_config(), tmp_path / "run").run(signals=signals)
    assert (result.stopped_by, result.steps, result.checkpoint) == (signal.SIGTERM, 0, None)
    assert _records(tmp_path / "run") == [] and ckpt.list_checkpoints(tmp_path / "run") == []
    assert (tmp_path / "run" / "config.yaml").is_file()  # so that --resume starts it afresh
