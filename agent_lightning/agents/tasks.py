"""Tasks for agents: JSONL files (one JSON object per line) or an environment's task list.

A JSONL line becomes ``Task(id=line["id"] or "<file stem>-<line number>", prompt=(),
reference=line)``; the agent receives the line itself (with its ``id``). An environment's
task becomes ``{"id", "prompt" (chat messages), "reference" (the environment's reference
data), "split"}``: agents can be trained on the built-in tasks too.
"""

from __future__ import annotations

import json
import random
from typing import Any, Mapping, Sequence

from agent_lightning.config import ConfigError
from agent_lightning.types import Task


class TaskFileError(ConfigError):
    """A task file that cannot be read (names the file and line); the CLI prints it as one line."""


def read_jsonl_tasks(path: str, split: str) -> list[Task]:
    """The tasks of a JSONL file (a path, or ``<package>/<file>`` inside an installed package);
    blank lines are skipped, anything else must be a JSON object."""
    from agent_lightning.config import package_file

    try:
        source = package_file(path, f"agent.{'eval_tasks' if split == 'eval' else 'tasks'}")
    except ValueError as exc:
        raise TaskFileError(str(exc)) from None
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TaskFileError(f"agent tasks: cannot read {path} ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise TaskFileError(f"agent tasks: {path} is not UTF-8 text") from None
    tasks, seen = [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise TaskFileError(f"agent tasks: {path} line {number} is not valid JSON ({getattr(exc, 'msg', 'too deep')})") from None
        if not isinstance(item, dict):
            raise TaskFileError(f"agent tasks: {path} line {number} must be a JSON object, not {type(item).__name__}")
        task_id = str(item.get("id", f"{source.stem}-{number}"))
        if task_id in seen:
            raise TaskFileError(f"agent tasks: {path} line {number} repeats the id '{task_id}'")
        seen.add(task_id)
        tasks.append(Task(id=task_id, prompt=(), reference={**item, "id": task_id}, split=split))
    if not tasks:
        raise TaskFileError(f"agent tasks: {path} holds no task")
    return tasks


def split_held_out(tasks: Sequence[Task], fraction: float, seed: int) -> tuple[list[Task], list[Task]]:
    """``(train, eval)``: a seeded ``fraction`` of ``tasks`` held out (at least one when > 0)."""
    if fraction <= 0:
        return list(tasks), []
    order = list(range(len(tasks)))
    random.Random(seed).shuffle(order)
    count = max(1, round(fraction * len(tasks)))
    if count >= len(tasks):
        raise TaskFileError(f"agent.held_out={fraction} leaves no training task out of {len(tasks)}")
    held = set(order[:count])
    return ([t for i, t in enumerate(tasks) if i not in held],
            [Task(t.id, t.prompt, t.reference, "eval") for i, t in enumerate(tasks) if i in held])


def task_payload(task: Task) -> dict[str, Any]:
    """What the agent receives for ``task`` (see the module docstring)."""
    if not task.prompt and "id" in task.reference:  # a JSONL task: the line itself
        return json.loads(json.dumps(dict(task.reference)))
    return {"id": task.id, "prompt": [dict(m) for m in task.prompt], "reference": _plain(task.reference),
            "split": task.split}


def _plain(value: Any) -> Any:
    """``value`` as JSON data (mappings and sequences copied; other values by ``str``)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def run_tasks(agent: Any, environment: Any, seed: int) -> tuple[list[Task], list[Task]]:
    """``(train, eval)`` tasks of an agent run: ``agent.tasks`` / ``agent.eval_tasks`` /
    ``agent.held_out`` (the ``agent`` config section), else ``environment``'s task lists."""
    if agent.tasks is None:
        return list(environment.tasks("train")), list(environment.tasks("eval"))
    train = read_jsonl_tasks(agent.tasks, "train")
    if agent.eval_tasks is not None:
        return train, read_jsonl_tasks(agent.eval_tasks, "eval")
    return split_held_out(train, agent.held_out, seed)
