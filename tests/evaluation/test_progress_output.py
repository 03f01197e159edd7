"""Progress bars: drawn on a terminal (model loading, evaluation, rollouts), absent with
``--quiet``, when the output is not a terminal, or while another live display runs."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys

import pytest

from agent_lightning import progress

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class _FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal(monkeypatch):
    """Call it in the test body (pytest re-installs its capture between setup and call):
    stdout and stderr then claim to be terminals; returns the stderr buffer."""

    def install() -> _FakeTerminal:
        err = _FakeTerminal()
        monkeypatch.setattr(sys, "stdout", _FakeTerminal())
        monkeypatch.setattr(sys, "stderr", err)
        monkeypatch.setitem(progress._state, "quiet", False)
        return err

    return install


def test_no_terminal_means_no_bars_and_helpers_still_work():
    assert not progress.enabled()  # pytest captures both streams
    with progress.task("anything", total=3) as bar:
        bar.update(advance=1, description="still nothing")
    assert list(progress.track(range(4), "items")) == [0, 1, 2, 3]
    for i in progress.track(iter([5, 6, 7]), "items"):
        if i == 6:
            break


def test_nested_operations_share_one_display(terminal):
    err = terminal()
    with progress.task("outer work", total=2) as outer:
        with progress.task("inner work"):
            pass
        outer.update(advance=1)
        for _ in progress.track(range(2), "third row"):
            pass
    assert progress._state["progress"] is None  # the display stopped with its last row
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", err.getvalue())
    assert "outer work" in text and "inner work" in text and "third row" in text


def test_quiet_and_foreign_live_displays_turn_bars_off(terminal, monkeypatch):
    from rich.console import Console
    from rich.file_proxy import FileProxy

    err = terminal()
    assert progress.enabled()
    monkeypatch.setitem(progress._state, "quiet", True)
    assert not progress.enabled()
    monkeypatch.setitem(progress._state, "quiet", False)
    # The console tracker's training bar (a rich Live) swaps sys.stdout for a FileProxy.
    monkeypatch.setattr(sys, "stdout", FileProxy(Console(file=_FakeTerminal()), sys.stdout))
    assert not progress.enabled()
    with progress.task("hidden"):
        pass
    assert "hidden" not in err.getvalue()


def _run_in_pty(cmd: list[str], env: dict[str, str], timeout: float = 300.0) -> tuple[int, str]:
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        returncode = proc.wait(timeout=timeout)
    finally:
        os.close(master)
    return returncode, b"".join(chunks).decode("utf-8", "replace")


def test_eval_in_a_terminal_shows_bars_and_quiet_hides_them(al_eval_run_copy, alightning, cli_env):
    env = {**cli_env, "TERM": "xterm-256color", "COLUMNS": "140", "LINES": "40"}
    for var in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "TQDM_DISABLE"):
        env.pop(var, None)
    code, out = _run_in_pty([*alightning, "eval", str(al_eval_run_copy), "--no-trackers"], env)
    assert code == 0, out[-2000:]
    plain = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out)
    rows = set(re.findall(rf"[{SPINNER}] ([a-z][\w\- ()]*?) *━", plain))
    assert {"loading model preset tiny", "evaluating base model", "evaluating step-1", "evaluating step-2",
            "playing 12 episodes (turns)"} <= rows, rows
    assert "base (step 0)" in plain  # the table follows the (transient) bars

    one_checkpoint = al_eval_run_copy / "checkpoints" / "step-1"
    code, quiet = _run_in_pty([*alightning, "--quiet", "eval", str(one_checkpoint), "--no-trackers"], env)
    assert code == 0, quiet[-2000:]
    plain = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", quiet)
    assert not re.search(rf"[{SPINNER}]|evaluating|loading model|playing", plain)
    assert "base (step 0)" in plain
