"""Conformance checks any environment or reward plugin can run from its own tests.

Two lines in a plugin's test file::

    from agent_lightning.testing import check_environment
    def test_conformance(): check_environment(MyEnv, max_turns=4)

``check_environment(factory, **options)`` builds environments with ``factory(**options)``
and asserts the ``agent_lightning.types.Environment`` contract:

* ``tasks("train")`` and ``tasks("eval")`` are non-empty, hold ``Task`` objects with ids
  unique within the split, disjoint between the splits, and ``task.split`` set;
* ``reset`` returns an ``Observation`` of chat messages (``role``/``content`` strings);
* ``step`` returns a ``StepResult`` for arbitrary strings (empty, garbage, huge, unicode,
  other environments' syntax) without raising, with a finite reward, a bool ``done``, a
  mapping ``info`` and, while not done, an ``Observation``;
* every episode ends within ``step_budget`` steps of such actions;
* determinism: two instances built with the same options play the same actions to the
  same observations, rewards, ``done`` flags and ``info["success"]``;
* every observation (the first included) fits ``observation_char_budget`` characters and,
  given a ``tokenizer``, ``observation_token_budget`` tokens;
* ``close()`` may be called twice in a row, and on an instance that never played.

``check_reward(factory, tasks=..., **options)`` asserts that the reward returns a finite
float or ``RewardResult`` on varied trajectories (no turns, garbage, long ones), the same
value twice for the same trajectory. A violation raises ``ConformanceError`` (an
``AssertionError``) naming the check, the task and the action.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

from agent_lightning.types import Observation, RewardResult, StepResult, Task, Trajectory, Turn

ROLES = ("system", "user", "assistant", "tool")

DEFAULT_ACTIONS: tuple[str, ...] = (
    "",
    "garbage !@#$%^&*() ]]] {{{",
    "\x00\n\t\r",
    "1",
    "42",
    "answer \"0\"",
    "done",
    "click 1",
    "GET /",
    "<tool_call>{\"name\": \"nope\", \"arguments\": {}}</tool_call>",
    "```python\ndef f(*a):\n    return None\n```",
    "\u00e9\u6f22\u5b57 \U0001f642 " * 20,
    "x" * 5000,
)
"""Actions played by default: junk of every shape plus other environments' syntax."""


class ConformanceError(AssertionError):
    """An environment or reward broke the plugin contract."""


def _fail(what: str, message: str) -> None:
    raise ConformanceError(f"{what}: {message}")


def _count_tokens(tokenizer: Any, text: str) -> int:
    encode = getattr(tokenizer, "encode", tokenizer)
    return len(encode(text))


def _check_observation(what: str, obs: Any, char_budget: int, tokenizer: Any, token_budget: int | None) -> None:
    if not isinstance(obs, Observation):
        _fail(what, f"expected an Observation, got {type(obs).__name__}")
    if not isinstance(obs.messages, tuple) or not obs.messages:
        _fail(what, f"Observation.messages must be a non-empty tuple, got {obs.messages!r:.80}")
    for message in obs.messages:
        if not isinstance(message, Mapping) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            _fail(what, f"each message needs a role in {ROLES} and a string content, got {message!r:.120}")
    text = "".join(m["content"] for m in obs.messages)
    if len(text) > char_budget:
        _fail(what, f"observation has {len(text)} characters, over the budget of {char_budget}")
    if tokenizer is not None and token_budget is not None:
        n = _count_tokens(tokenizer, text)
        if n > token_budget:
            _fail(what, f"observation has {n} tokens, over the budget of {token_budget}")


def _check_step(what: str, result: Any) -> None:
    if not isinstance(result, StepResult):
        _fail(what, f"step must return a StepResult, got {type(result).__name__}")
    if isinstance(result.reward, bool) or not isinstance(result.reward, (int, float)) or not math.isfinite(result.reward):
        _fail(what, f"reward must be a finite number, got {result.reward!r}")
    if not isinstance(result.done, bool):
        _fail(what, f"done must be a bool, got {result.done!r}")
    if not isinstance(result.info, Mapping):
        _fail(what, f"info must be a mapping, got {type(result.info).__name__}")
    if "success" in result.info and not isinstance(result.info["success"], bool):
        _fail(what, f"info['success'] must be a bool, got {result.info['success']!r}")
    if not result.done and not isinstance(result.observation, Observation):
        _fail(what, "a step that is not done must return an Observation")


def _play(env: Any, task: Task, actions: Sequence[str], name: str, step_budget: int, char_budget: int,
          tokenizer: Any, token_budget: int | None) -> list[tuple[Any, ...]]:
    """Play ``actions`` (cycled) until done; the transcript of what came back."""
    what = f"{name}: task '{task.id}'"
    try:
        first = env.reset(task)
    except Exception as exc:
        _fail(what, f"reset raised {type(exc).__name__}: {exc}")
    _check_observation(f"{what}, reset", first, char_budget, tokenizer, token_budget)
    transcript: list[tuple[Any, ...]] = [("reset", first.messages)]
    for i in range(step_budget):
        action = actions[i % len(actions)]
        where = f"{what}, step {i + 1}, action {action[:40]!r}"
        try:
            result = env.step(action)
        except Exception as exc:
            _fail(where, f"step raised {type(exc).__name__}: {exc}")
        _check_step(where, result)
        if not result.done:
            _check_observation(where, result.observation, char_budget, tokenizer, token_budget)
        transcript.append((action, result.observation.messages if not result.done else None, float(result.reward),
                           result.done, result.info.get("success")))
        if result.done:
            return transcript
    _fail(what, f"the episode did not end within the step budget of {step_budget} steps")
    return transcript


def _check_tasks(name: str, env: Any) -> dict[str, list[Task]]:
    splits: dict[str, list[Task]] = {}
    for split in ("train", "eval"):
        tasks = list(env.tasks(split))
        if not tasks:
            _fail(name, f"tasks('{split}') is empty")
        for task in tasks:
            if not isinstance(task, Task):
                _fail(name, f"tasks('{split}') holds a {type(task).__name__}, not a Task")
            if task.split != split:
                _fail(name, f"task '{task.id}' from tasks('{split}') has split '{task.split}'")
        ids = [t.id for t in tasks]
        dupes = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
        if dupes:
            _fail(name, f"tasks('{split}') repeats ids {dupes[:5]}")
        splits[split] = tasks
    shared = sorted({t.id for t in splits["train"]} & {t.id for t in splits["eval"]})
    if shared:
        _fail(name, f"train and eval share task ids {shared[:5]} (eval must be held out)")
    return splits


def _close_twice(name: str, env: Any) -> None:
    try:
        env.close()
        env.close()
    except Exception as exc:
        _fail(name, f"close() is not idempotent: the second call raised {type(exc).__name__}: {exc}")


def check_environment(factory: Callable[..., Any], *, actions: Sequence[str] = DEFAULT_ACTIONS,
                      tasks_per_split: int = 2, step_budget: int = 64, observation_char_budget: int = 16000,
                      observation_token_budget: int | None = None, tokenizer: Any = None,
                      **options: Any) -> dict[str, Any]:
    """Assert the environment contract for ``factory(**options)`` (see the module docstring).

    Args:
        factory: The registered environment factory (usually the class).
        actions: Actions played in turn (cycled) in every episode.
        tasks_per_split: Episodes played per split (the first tasks of each).
        step_budget: Steps within which every episode must end.
        observation_char_budget: Most characters one observation's messages may hold.
        observation_token_budget: Most tokens one observation may hold (needs ``tokenizer``:
            an object with ``encode(text) -> list`` or such a callable).
        **options: Passed to ``factory``.

    Returns:
        ``{"train": n, "eval": n, "episodes": n, "steps": n}`` — task counts and what was played.
    """
    name = f"environment {getattr(factory, '__name__', factory)!s}"
    if not actions:
        raise ValueError("check_environment: 'actions' must hold at least one action")
    _close_twice(f"{name} (never reset)", factory(**options))
    env, twin = factory(**options), factory(**options)
    try:
        splits = _check_tasks(name, env)
        twin_splits = {split: list(twin.tasks(split)) for split in splits}
        for split, tasks in splits.items():
            if [(t.id, t.prompt) for t in tasks] != [(t.id, t.prompt) for t in twin_splits[split]]:
                _fail(name, f"two instances with the same options list different tasks('{split}')")
        episodes = steps = 0
        for split, tasks in splits.items():
            for task in tasks[:tasks_per_split]:
                args = (name, step_budget, observation_char_budget, tokenizer, observation_token_budget)
                first = _play(env, task, actions, *args)
                second = _play(twin, task, actions, *args)
                if first != second:
                    diverged = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b) if len(first) == len(second) else min(len(first), len(second))
                    _fail(f"{name}: task '{task.id}'", f"not deterministic: two instances with the same options "
                          f"diverge at step {diverged} of the same actions")
                episodes += 1
                steps += len(first) - 1
    finally:
        for instance in (env, twin):
            _close_twice(name, instance)
    return {"train": len(splits["train"]), "eval": len(splits["eval"]), "episodes": episodes, "steps": steps}


def _trajectories(tasks: Sequence[Task]) -> list[Trajectory]:
    out = []
    for i, task in enumerate(tasks):
        shapes: list[tuple[Turn, ...]] = [
            (),
            (Turn(action="", action_token_ids=(), action_logprobs=()),),
            (Turn(action="garbage !@#", action_token_ids=(1, 2), action_logprobs=(-0.5, -1.0), reward=0.0),
             Turn(action="answer \"0\"", action_token_ids=(3,), action_logprobs=(-0.1,), reward=1.0,
                  info={"success": True})),
            tuple(Turn(action="x" * 200, action_token_ids=(4,), action_logprobs=(-2.0,), info={"success": False})
                  for _ in range(12)),
        ]
        for j, turns in enumerate(shapes):
            out.append(Trajectory(id=f"{task.id}/{j}", task=task, group=i, prompt_token_ids=(0,), turns=turns,
                                  success=bool(turns and turns[-1].info.get("success"))))
    return out


def _value(result: Any) -> float:
    if isinstance(result, RewardResult):
        return result.total
    if isinstance(result, bool) or not isinstance(result, (int, float)):
        raise TypeError(f"a reward returns a float or a RewardResult, got {type(result).__name__}")
    return float(result)


def check_reward(factory: Callable[..., Any], *, tasks: Sequence[Task] | None = None,
                 **options: Any) -> dict[str, Any]:
    """Assert the reward contract for ``factory(**options)`` on synthetic trajectories.

    Args:
        factory: The registered reward factory.
        tasks: Tasks the trajectories play (with the ``reference`` the reward reads);
            default: one task with an empty reference.
        **options: Passed to ``factory``.

    Returns:
        ``{"trajectories": n, "values": [...]}``.
    """
    name = f"reward {getattr(factory, '__name__', factory)!s}"
    reward = factory(**options)
    if not callable(reward):
        _fail(name, f"the factory must return a callable, got {type(reward).__name__}")
    tasks = list(tasks) if tasks else [Task(id="conformance-0", prompt=({"role": "user", "content": "hi"},))]
    values = []
    for traj in _trajectories(tasks):
        what = f"{name}: trajectory '{traj.id}' ({len(traj.turns)} turns)"
        try:
            first, second = _value(reward(traj)), _value(reward(traj))
        except Exception as exc:
            _fail(what, f"raised {type(exc).__name__}: {exc}")
        if not math.isfinite(first):
            _fail(what, f"returned a non-finite value {first}")
        if first != second:
            _fail(what, f"not deterministic: {first} then {second} for the same trajectory")
        values.append(first)
    return {"trajectories": len(values), "values": values}
