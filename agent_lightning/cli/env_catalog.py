"""Library side of ``alightning envs`` and ``alightning try ENV``.

``describe_environments`` lists every registered environment with its one-line
description and task counts; ``play_interactive`` lets a person play one episode in the
terminal, typing the actions a model would write, so environment authors can feel their
environment. Both take their I/O as arguments so the CLI stays thin and tests can drive
them.
"""

from __future__ import annotations

import json
import random
from typing import Any, Callable, NamedTuple, Sequence

from agent_lightning.types import Environment, Message, Observation, Task

MULTILINE_START = "<<<"
MULTILINE_END = ">>>"
QUIT = ("/quit", "/exit")


class EnvironmentRow(NamedTuple):
    """One line of ``alightning envs``; counts are ``None`` when the environment failed to load."""

    name: str
    description: str
    train: int | None
    eval: int | None
    error: str | None = None


def describe_environments(plugin_manager: Any = None) -> list[EnvironmentRow]:
    """Every registered environment, built with default options, with its task counts.

    An environment whose factory or ``tasks`` raises is listed with ``error`` set instead
    of failing the whole listing.
    """
    if plugin_manager is None:
        from agent_lightning.plugins import get_plugin_manager

        plugin_manager = get_plugin_manager()
    rows = []
    for entry in plugin_manager.environments:
        env = None
        try:
            env = entry.factory()
            rows.append(EnvironmentRow(entry.name, entry.description, len(env.tasks("train")), len(env.tasks("eval"))))
        except Exception as exc:  # noqa: BLE001 - reported in the listing
            rows.append(EnvironmentRow(entry.name, entry.description, None, None, f"{type(exc).__name__}: {exc}"))
        finally:
            if env is not None:
                try:
                    env.close()
                except Exception:  # noqa: BLE001 - listing must not fail on a bad close
                    pass
    return rows


def pick_task(env: Environment, *, split: str = "eval", task_id: str | None = None,
              seed: int | None = None) -> Task:
    """The task named ``task_id`` in ``split``, or a random one (``seed`` makes it repeatable)."""
    tasks = list(env.tasks(split))
    if not tasks:
        raise ValueError(f"the environment has no '{split}' tasks")
    if task_id is None:
        return random.Random(seed).choice(tasks)
    for task in tasks:
        if task.id == task_id:
            return task
    sample = ", ".join(t.id for t in tasks[:5])
    raise ValueError(f"no task '{task_id}' in split '{split}' (e.g. {sample})")


class EpisodeSummary(NamedTuple):
    turns: int
    total_reward: float
    success: bool
    finished: bool
    """``False`` when the person quit (or input ended) before the environment said done."""


def format_messages(messages: Sequence[Message]) -> str:
    return "\n".join(f"[{m.get('role', '?')}] {m.get('content', '')}" for m in messages)


def _read_action(input_fn: Callable[[str], str]) -> str | None:
    line = input_fn("action> ")
    if line.strip() in QUIT:
        return None
    if line.strip() != MULTILINE_START:
        return line
    lines = []
    while True:
        more = input_fn("...> ")
        if more.strip() == MULTILINE_END:
            return "\n".join(lines)
        lines.append(more)


def play_interactive(env: Environment, task: Task, *, input_fn: Callable[[str], str] = input,
                     print_fn: Callable[[str], Any] = print, max_turns: int = 100) -> EpisodeSummary:
    """Plays one episode of ``task`` with a person typing the actions.

    Each observation is printed with its role; the person types one action per turn (a
    line; ``<<<`` starts a multi-line action ended by ``>>>``; ``/quit`` stops). After
    each step the reward, ``info`` and next observation are shown. The caller keeps
    ownership of ``env`` (and closes it).
    """
    print_fn(f"task {task.id} ({task.split})")
    print_fn(format_messages(env.reset(task).messages))
    print_fn(f"(one action per turn; '{MULTILINE_START}' ... '{MULTILINE_END}' for several lines; "
             f"'{QUIT[0]}' to stop)")
    total, success = 0.0, False
    for turn in range(1, max_turns + 1):
        try:
            action = _read_action(input_fn)
        except (EOFError, KeyboardInterrupt):
            action = None
        if action is None:
            print_fn("stopped.")
            return EpisodeSummary(turn - 1, total, False, False)
        result = env.step(action)
        total += float(result.reward)
        info = {k: v for k, v in result.info.items()}
        print_fn(f"reward {result.reward:+.3f}  info {json.dumps(info, default=str)}")
        if result.done:
            success = bool(result.info.get("success", False))
            print_fn(f"episode over after {turn} turn(s): total reward {total:.3f}, "
                     f"{'success' if success else 'no success'}")
            return EpisodeSummary(turn, total, success, True)
        if isinstance(result.observation, Observation):
            print_fn(format_messages(result.observation.messages))
    print_fn(f"stopped after {max_turns} turns without the environment finishing.")
    return EpisodeSummary(max_turns, total, success, False)
