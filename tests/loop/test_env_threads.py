"""The environment thread pool: futures like ThreadPoolExecutor's, and a call that never
returns never keeps a finished process alive."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from agent_lightning.loop.env_threads import EnvThreadPool
from agent_lightning.metrics import read_metrics


def test_results_exceptions_and_at_most_max_workers_daemon_threads():
    pool = EnvThreadPool(max_workers=3, name="envtest")
    seen: set[str] = set()

    def work(i):
        seen.add(threading.current_thread().name)
        assert threading.current_thread().daemon
        time.sleep(0.01)
        if i == 4:
            raise ConnectionError("backend service went away")
        return i * i

    calls = [pool.submit(work, i) for i in range(10)]
    assert [f.result(timeout=10) for f in calls if f is not calls[4]] == [i * i for i in range(10) if i != 4]
    with pytest.raises(ConnectionError, match="went away"):
        calls[4].result(timeout=10)
    assert seen <= {"envtest_0", "envtest_1", "envtest_2"} and len(pool._threads) == 3
    pool.shutdown(wait=True)
    assert not any(t.is_alive() for t in pool._threads)
    with pytest.raises(RuntimeError, match="EnvThreadPool 'envtest': cannot submit after shutdown"):
        pool.submit(work, 0)
    with pytest.raises(ValueError, match="max_workers must be >= 1"):
        EnvThreadPool(max_workers=0)


def test_shutdown_cancels_what_has_not_started_and_does_not_wait_for_a_running_call():
    pool = EnvThreadPool(max_workers=1)
    release = threading.Event()
    running = pool.submit(release.wait)
    queued = [pool.submit(lambda: 1) for _ in range(3)]
    started = time.monotonic()
    pool.shutdown(wait=False, cancel_futures=True)
    assert time.monotonic() - started < 1.0
    assert all(f.cancelled() for f in queued) and not running.done()
    release.set()
    assert running.result(timeout=10) is True
    pool._threads[0].join(timeout=10)
    assert not pool._threads[0].is_alive()


_STUCK = """
import threading, time
from agent_lightning.loop.env_threads import EnvThreadPool
from agent_lightning.metrics import read_metrics

pool = EnvThreadPool(max_workers=2)
held = threading.Lock()
held.acquire()  # like a lock left held by an interrupt in the main thread: never released
stuck = pool.submit(held.acquire)
hung = pool.submit(threading.Event().wait)  # like an environment step that hangs for ever
time.sleep(0.2)
assert not stuck.done() and not hung.done()
pool.shutdown(wait=False, cancel_futures=True)
print("exiting", flush=True)
"""


def test_a_call_that_never_returns_does_not_keep_the_process_alive(tmp_path):
    script = tmp_path / "stuck.py"
    script.write_text(_STUCK)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "exiting"


_RUN_WITH_A_HANGING_STEP = """
import json, sys, threading
from agent_lightning.config import validate
from agent_lightning.hookspecs import hookimpl
from agent_lightning.loop.trainer import Trainer
from agent_lightning.plugins import build_plugin_manager
from agent_lightning.types import Observation, StepResult, Task


class HangingEnv:
    description = "every step of task 1 hangs for ever"

    def tasks(self, split):
        return [Task(id=f"{split}-{i}", prompt=({"role": "user", "content": "go"},), reference={"i": i}, split=split)
                for i in range(4)]

    def reset(self, task):
        self.i = task.reference["i"]
        return Observation(task.prompt)

    def step(self, action):
        if self.i == 1:
            threading.Event().wait()
        return StepResult(None, reward=1.0, done=True, info={"success": True})

    def close(self):
        pass


class Plugin:
    @hookimpl
    def register_environments(self, register):
        register("hanging", HangingEnv)


config = validate(json.loads(sys.argv[1]))
pm = build_plugin_manager(autoload=False, extra_plugins=[("hanging", Plugin())])
result = Trainer(config, sys.argv[2], plugin_manager=pm).run()
print("steps", result.steps, flush=True)
"""


def test_a_run_with_a_step_that_hangs_for_ever_finishes_and_its_process_exits(tiny_config_dict, tmp_path, cli_env):
    """The hung steps time out (their episodes fail) and the run ends; before the pool's threads
    were daemons, Python's exit then waited for those steps for ever."""
    script = tmp_path / "run_hanging.py"
    script.write_text(_RUN_WITH_A_HANGING_STEP)
    config = tiny_config_dict(environment={"name": "hanging"},
                              trainer={"steps": 1, "batch_size": 4, "step_timeout_s": 0.3, "max_failure_rate": 0.9,
                                       "eval_episodes": 4})
    done = subprocess.run([sys.executable, str(script), json.dumps(config), str(tmp_path / "run")], capture_output=True,
                          text=True, env=cli_env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "steps 1"
    train = [r for r in read_metrics(tmp_path / "run") if "train/failed_episodes" in r]
    assert [r["train/failed_episodes"] for r in train] == [4.0]  # task 1's group of 4 timed out
