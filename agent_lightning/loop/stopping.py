"""Graceful stop: SIGTERM and the first SIGINT end a run after the current step.

Schedulers (SLURM, Kubernetes, spot preemption) send SIGTERM some seconds before SIGKILL;
people press Ctrl-C. Either way the trainer finishes the step it is in, writes a
checkpoint, flushes its trackers and exits with ``128 + signal`` (143 for SIGTERM, 130 for
SIGINT), so that ``--resume`` continues with nothing lost. A second signal stops at once: a
second SIGINT raises ``KeyboardInterrupt`` where the program is, a second SIGTERM ends the
process with the default action.

One keypress or one scheduler action can reach a process twice within milliseconds: from
the terminal or the scheduler directly, and again forwarded by ``torchrun`` (which passes
the signal it receives on to its workers) or by ``alightning run --nproc``. A repeat within
``REPEAT_WINDOW_S`` of the first signal is therefore taken as the same request, not as the
second one.

Handlers are installed only by the main thread of the main interpreter (Python's rule);
elsewhere :class:`StopSignal` is inert and signals keep their usual effect. A signal that
was already ignored when the run started (``SIG_IGN``: ``nohup``, a job started with ``&``
by a shell without job control) stays ignored, as the one who started the process asked.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)
REPEAT_WINDOW_S = 1.0


def exit_code(signum: int) -> int:
    """The shell's exit status of a process ended by ``signum`` (143 for SIGTERM, 130 for SIGINT)."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopSignal:
    """Context manager that turns the first SIGTERM/SIGINT into a request to stop.

    ``signum`` is the first signal received (``None`` until then); the loop polls it
    between steps.
    """

    def __init__(self, announce: bool = True) -> None:
        self.signum: int | None = None
        self.announce = announce
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            if time.monotonic() - self._first_at < REPEAT_WINDOW_S:
                return  # the same request, forwarded (torchrun, a launcher)
            self._restore()  # the second signal: stop now
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.signum = signum
        self._first_at = time.monotonic()
        if self.announce:
            sys.stderr.write(f"\n{signal_name(signum)} received: finishing the current step, then a checkpoint "
                             f"(send it again to stop at once)\n")
            sys.stderr.flush()
