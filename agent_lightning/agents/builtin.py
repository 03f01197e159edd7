"""The built-in agent kinds and the ``agent`` reward, registered through the plugin hooks.

An agent factory (``register_agents``) takes the config's options and returns a callable
``solve(task: dict, llm: LLM) -> result`` (sync or ``async``); third-party agents register
the same way from their own distributions. ``result`` is one of:

* a number: the episode's reward;
* a mapping ``{"reward"?: x, "success"?: bool, "answer"?: str}``;
* ``None``: the reward was posted to the endpoint (``llm.reward``) or comes per call;
* anything else (a string...): an *answer*, which the configured reward plugin scores
  (``exact-match`` and the other matching rewards read it).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any, Callable, Sequence

from agent_lightning.hookspecs import hookimpl
from agent_lightning.types import Trajectory


def load_entrypoint(target: str) -> Callable[..., Any]:
    """The function named ``"package.module:function"`` (modules in the working directory are
    found too); errors name what is missing."""
    if not isinstance(target, str) or target.count(":") != 1:
        raise ValueError(f"agent.entrypoint: expected 'package.module:function', got {target!r}")
    module_name, attr = target.split(":")
    if os.getcwd() not in sys.path:  # as uvicorn does: `my_agent:solve` next to the config works
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"agent.entrypoint: cannot import module '{module_name}' ({exc})") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"agent.entrypoint: module '{module_name}' has no '{attr}'")
    if not callable(fn):
        raise ValueError(f"agent.entrypoint: '{target}' is not callable")
    return fn


def entrypoint_agent(target: str, **options: Any) -> Callable[..., Any]:
    """``agent: {entrypoint: "pkg.mod:solve"}``: a Python function ``solve(task, llm)``;
    extra options are passed to it as keyword arguments."""
    fn = load_entrypoint(target)
    if not options:
        return fn
    if inspect.iscoroutinefunction(fn):
        async def solve_async(task: Any, llm: Any) -> Any:
            return await fn(task, llm, **options)
        return solve_async

    def solve(task: Any, llm: Any) -> Any:
        return fn(task, llm, **options)
    return solve


class CommandAgent:
    """``agent: {command: [...]}``: a program run once per episode, any language.

    Its environment holds ``OPENAI_BASE_URL``, ``OPENAI_API_KEY``, ``OPENAI_MODEL``,
    ``ALIGHTNING_TASK`` (the task as JSON) and ``ALIGHTNING_EPISODE_ID``. It reports its
    reward by posting to ``$OPENAI_BASE_URL/reward`` or by printing it as the last line of
    its standard output (a number or a JSON object as for Python agents). A non-zero exit
    fails the episode with the last line of its standard error. ``sandbox``: run it under
    bubblewrap (:func:`sandboxed`).
    """

    def __init__(self, command: Sequence[str], *, cwd: str | None = None, env: dict[str, str] | None = None,
                 sandbox: bool = False, timeout_s: float | None = None):
        if isinstance(command, str) or not command or not all(isinstance(c, str) and c for c in command):
            raise ValueError(f"agent.command: expected a list of program and arguments, got {command!r}")
        self.command = list(command)
        self.cwd = cwd
        self.env = dict(env or {})
        self.sandbox = bool(sandbox)
        if self.sandbox and shutil.which("bwrap") is None:
            raise ValueError("agent.sandbox: needs bubblewrap (apt-get install bubblewrap)")
        self.timeout_s = timeout_s  # agent.timeout_s: the program is killed at it

    def __call__(self, task: dict, llm: Any) -> Any:
        env = {**os.environ, **self.env, "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": llm.api_key,
               "OPENAI_MODEL": llm.model, "ALIGHTNING_TASK": json.dumps(task), "ALIGHTNING_EPISODE_ID": llm.episode_id}
        with tempfile.TemporaryDirectory(prefix="alightning-agent-") as scratch:
            command, cwd = (sandboxed(self.command, scratch, self.cwd), None) if self.sandbox else (self.command, self.cwd)
            if self.sandbox:
                os.chmod(scratch, 0o777)  # the sandboxed program runs as nobody
            return self._run(command, cwd, env)

    def _run(self, command: list[str], cwd: str | None, env: dict[str, str]) -> Any:
        try:
            proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL, start_new_session=True, text=True, errors="replace")
        except OSError as exc:
            raise RuntimeError(f"agent.command: cannot start {command[0]!r} ({exc.strerror or exc})") from None
        try:
            out, err = proc.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise TimeoutError(f"agent command timed out after {self.timeout_s:.0f} s") from None
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        if proc.returncode != 0:
            last = next((line for line in reversed(err.splitlines()) if line.strip()), "")
            raise RuntimeError(f"agent command exited with status {proc.returncode}: {last[:300]}")
        last = next((line for line in reversed(out.splitlines()) if line.strip()), "")
        try:
            value = json.loads(last) if last else None
        except json.JSONDecodeError:
            return last  # an answer for the reward plugin
        return value


def sandboxed(command: Sequence[str], scratch: str, cwd: str | None) -> list[str]:
    """``command`` under bubblewrap: a read-only view of the host's files (``/tmp`` included: a
    venv may live there), its own writable ``scratch`` folder (its working directory and
    ``TMPDIR``, at the same path; ``cwd``, if given, stays readable at its own path), its own
    PID/IPC/UTS namespaces, user ``nobody``, killed with the trainer. The network is shared: the agent must reach the endpoint on 127.0.0.1. This
    keeps a buggy agent from writing over the run; it does not hide readable files (the code
    environments' sandbox, ``agent_lightning.sandbox``, is the one for untrusted code)."""
    return [shutil.which("bwrap") or "bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--bind", scratch, scratch, "--chdir", scratch, "--setenv", "TMPDIR", scratch,
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-user", "--uid", "65534", "--gid", "65534",
            "--die-with-parent", "--new-session", "--", *command]


def command_agent(command: Sequence[str], **options: Any) -> CommandAgent:
    return CommandAgent(command, **options)


def agent_reward():
    """The ``agent`` reward: what the agent reported (returned, posted or printed)."""

    def reward(trajectory: Trajectory) -> float:
        value = trajectory.info.get("agent_reward")
        if value is None:
            if trajectory.info.get("call_rewards"):
                return 0.0  # the calls carry the rewards
            if "answer" in trajectory.info:
                raise ValueError("the agent returned an answer, not a reward: set reward.name to a reward that "
                                 "scores answers (e.g. exact-match)")
            raise ValueError("the agent reported no reward (return a number, call llm.reward(x), or post to /reward)")
        return float(value)

    return reward


agent_reward.description = "the reward the agent reported (returned, posted or printed)"
command_agent.description = "a program run per episode with OPENAI_BASE_URL / OPENAI_API_KEY / ALIGHTNING_TASK set"
entrypoint_agent.description = "a Python function solve(task, llm), sync or async"


@hookimpl
def register_agents(register):
    register("entrypoint", entrypoint_agent)
    register("command", command_agent)


@hookimpl
def register_rewards(register):
    register("agent", agent_reward)
