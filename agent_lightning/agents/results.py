"""An agent's return value, read as trajectory info (see ``agents.builtin`` for the forms)."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Callable


class InvalidResult(TypeError):
    """The agent returned something that is not a result (e.g. a reward that is not a number)."""


def interpret_result(result: Any) -> dict[str, Any]:
    """``None`` -> ``{}``; a number or bool -> ``agent_reward`` (a bool is also ``success``); a
    mapping -> its ``reward``/``success``/``answer``; anything else -> ``answer`` (its ``str``)."""
    if result is None:
        return {}
    if isinstance(result, bool):
        return {"agent_reward": float(result), "success": result}
    if isinstance(result, (int, float)):
        return {"agent_reward": float(result)}
    if isinstance(result, dict):
        info: dict[str, Any] = {}
        if result.get("reward") is not None:
            value = result["reward"]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidResult(f"the agent's reward must be a number, not {type(value).__name__}")
            info["agent_reward"] = float(value)
        if "success" in result:
            info["success"] = bool(result["success"])
        if result.get("answer") is not None:
            info["answer"] = str(result["answer"])
        return info
    return {"answer": str(result)}


def run_agent(solve: Callable[..., Any], task: dict, llm: Any) -> dict[str, Any]:
    """``solve(task, llm)`` (awaited on a fresh event loop if it is a coroutine), interpreted.
    Raises what the agent raised, or :class:`InvalidResult`."""
    result = solve(task, llm)
    if inspect.isawaitable(result):
        result = asyncio.run(_await(result))
    return interpret_result(result)


async def _await(awaitable: Any) -> Any:
    return await awaitable
