"""Agents in worker processes (``agent.workers: N``): their own interpreters, their own cores.

An agent's own work — its HTTP client (the ``openai`` SDK spends ~1.5 ms of Python per
call), parsing, tools — runs under the trainer's interpreter lock when agents are threads
of the trainer, and competes there with the endpoint that answers them. With workers, each
of ``N`` processes (``python -m agent_lightning.agents.processes``, started fresh: no fork
of a process that holds threads) builds the agent from the same registered name and options
and runs the episodes it is sent, one thread each; the trainer keeps the endpoint, the
ledgers and every decision (timeouts, failures, rewards).

Messages over a private socket pair (pickled, ``multiprocessing.connection``)::

    trainer -> worker   ("init", spec)                   spec: name, options, sys.path
    worker  -> trainer  ("ready",) | ("failed", message)
    trainer -> worker   ("run", job, task, llm)          task: the payload dict; llm: LLM
    worker  -> trainer  ("done", job, "ok", info) | ("done", job, "invalid", message)
                        | ("done", job, "error", (the agent's exception type, message))
    trainer -> worker   None                             exit

A worker that dies fails the episodes it held (with its exit status) and is started again
for the next episode; a worker exits when the trainer's end of the socket closes.
"""

from __future__ import annotations

import concurrent.futures as futures
import itertools
import os
import socket
import subprocess
import sys
import threading
from typing import Any

from agent_lightning.agents.results import InvalidResult


class AgentProcessError(RuntimeError):
    """An agent failed in a worker process: ``kind`` is its exception's type name."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class _Worker:
    """One worker process, its connection and the episodes it holds."""

    def __init__(self, index: int, spec: dict[str, Any], start_timeout_s: float):
        from multiprocessing.connection import Connection

        self.index = index
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "agent_lightning.agents.processes", str(theirs.fileno())],
                                         pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self.pending: dict[int, futures.Future] = {}
        self.lock = threading.Lock()
        self.alive = True
        try:
            self.conn.send(("init", spec))
            if not self.conn.poll(start_timeout_s):
                raise RuntimeError(f"agent worker {index} did not start within {start_timeout_s:.0f} s")
            reply = self.conn.recv()
        except (EOFError, OSError):
            reply = ("failed", f"exited with status {self.proc.wait()}")
        except BaseException:
            self.kill()
            raise
        if reply[0] != "ready":
            self.kill()
            raise RuntimeError(f"agent worker {index}: {reply[1]}")
        self.reader = threading.Thread(target=self._read, name=f"agent-worker-{index}", daemon=True)
        self.reader.start()

    def submit(self, job: int, task: dict, llm: Any) -> futures.Future:
        future: futures.Future = futures.Future()
        with self.lock:
            if not self.alive:
                raise RuntimeError(f"agent worker {self.index} has exited")
            self.pending[job] = future
            try:
                self.conn.send(("run", job, task, llm))
            except (OSError, ValueError) as exc:  # the worker just died: the reader fails the rest
                self.pending.pop(job, None)
                raise RuntimeError(f"agent worker {self.index} has exited ({exc})") from None
        return future

    def _read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                break
            _, job, outcome, value = message
            with self.lock:
                future = self.pending.pop(job, None)
            if future is None:
                continue
            if outcome == "ok":
                future.set_result(value)
            elif outcome == "invalid":
                future.set_exception(InvalidResult(value))
            else:
                future.set_exception(AgentProcessError(*value))
        status = self.proc.wait()
        with self.lock:
            self.alive = False
            pending, self.pending = self.pending, {}
        for future in pending.values():
            future.set_exception(RuntimeError(f"agent worker process exited with status {status} during the episode"))

    def close(self, timeout_s: float = 5.0) -> None:
        with self.lock:
            try:
                if self.alive:
                    self.conn.send(None)
            except (OSError, ValueError):
                pass
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self.conn.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class AgentProcesses:
    """``N`` worker processes running the agent ``name`` (a registered agent kind) with ``options``.

    ``submit(task, llm)`` runs one episode on the worker holding the fewest and returns a
    future of its result as trajectory info (``results.run_agent``, run in the worker); the
    agent's exceptions come back as :class:`AgentProcessError`, results that are not results
    as ``InvalidResult``. A dead worker is replaced at the next submit.
    """

    def __init__(self, name: str, options: dict[str, Any], *, workers: int = 1, start_timeout_s: float = 60.0):
        self.spec = {"name": name, "options": dict(options), "sys_path": list(sys.path)}
        self.start_timeout_s = start_timeout_s
        self._jobs = itertools.count()
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        try:
            for index in range(max(1, workers)):
                self._workers.append(_Worker(index, self.spec, start_timeout_s))
        except BaseException:
            self.close()
            raise

    def submit(self, task: dict, llm: Any) -> futures.Future:
        with self._lock:
            for i, worker in enumerate(self._workers):
                if not worker.alive:
                    worker.close(timeout_s=0.1)
                    self._workers[i] = _Worker(worker.index, self.spec, self.start_timeout_s)
            worker = min(self._workers, key=lambda w: len(w.pending))
            job = next(self._jobs)
        return worker.submit(job, task, llm)

    def close(self) -> None:
        for worker in self._workers:
            worker.close()
        self._workers = []


# ---------------------------------------------------------------------- the worker's side

def _build(spec: dict[str, Any]) -> Any:
    from agent_lightning.plugins import create_component, get_plugin_manager

    known = set(sys.path)
    sys.path[:0] = [p for p in spec["sys_path"] if p not in known]
    return create_component(get_plugin_manager(), "agent", "agent", spec["name"], **spec["options"])


def _run(solve: Any, conn: Any, send_lock: threading.Lock, job: int, task: dict, llm: Any) -> None:
    from agent_lightning.agents.results import run_agent

    try:
        message = ("done", job, "ok", run_agent(solve, task, llm))  # interpreted here: plain numbers and text travel
    except InvalidResult as exc:
        message = ("done", job, "invalid", str(exc))
    except BaseException as exc:  # noqa: BLE001 - the agent's failure fails its episode only
        message = ("done", job, "error", (type(exc).__name__, str(exc)))
    with send_lock:
        try:
            conn.send(message)
        except (OSError, ValueError):
            pass


def serve(conn: Any) -> None:
    """The worker: build the agent, then run each episode it is sent on its own thread."""
    _, spec = conn.recv()
    try:
        solve = _build(spec)
    except BaseException as exc:  # noqa: BLE001 - reported to the trainer, which raises it
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready",))
    send_lock = threading.Lock()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        if message is None:
            break
        _, job, task, llm = message
        threading.Thread(target=_run, args=(solve, conn, send_lock, job, task, llm), daemon=True,
                         name=f"agent-job-{job}").start()


def main() -> None:
    from multiprocessing.connection import Connection

    conn = Connection(int(sys.argv[1]))
    try:
        serve(conn)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # episodes still running (timed out in the trainer) end with the process


if __name__ == "__main__":
    main()
