"""Tool-call fuzz: thousands of random malformed calls, zero crashes.

A seeded generator mutates valid calls in every way a model can get them wrong (broken
JSON, wrong types, unknown tools, oversized and deeply nested arguments, NaN, huge
numbers, stray or unclosed tags, binary junk) and feeds them to the environment. Every
step must return a well-formed ``StepResult`` whose error messages are JSON objects and
whose counters add up.
"""

from __future__ import annotations

import json
import random

from hypothesis import given, settings, strategies as st

from agent_lightning.envs.tool_use import ToolUseEnv
from agent_lightning.types import StepResult

_NAMES = ["calculator", "search", "kv_get", "kv_set", "kv_keys", "Calculator", "", "calc", "eval", "__init__",
          "kv_get ", "search\x00"]
_VALUES = [None, True, False, 0, -1, 3.5, 10**400, "1e999", "", "x" * 5000, [], {}, [1, [2, [3]]],
           {"a": {"b": {}}}, "2+2", "__import__('os')", "9**9**9", "\u202e\ud7ff\U0001f600", "NaN"]


def _random_json(rng: random.Random, depth: int = 0):
    kind = rng.randrange(7 if depth < 4 else 4)
    if kind == 0:
        return rng.choice(_VALUES)
    if kind == 1:
        return rng.randint(-10**30, 10**30)
    if kind == 2:
        return "".join(chr(rng.randrange(0, 0x2FFF)) for _ in range(rng.randrange(30)))
    if kind == 3:
        return rng.random() * 10 ** rng.randint(-300, 300)
    if kind == 4:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["expression", "query", "key", "value", "prefix", "top_k", "arguments", "name"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def malformed_call(rng: random.Random) -> str:
    """One malformed tool call (sometimes wrapped in noise)."""
    name = rng.choice(_NAMES)
    args = _random_json(rng)
    call = {"name": name, "arguments": args}
    body = json.dumps(call)
    kind = rng.randrange(14)
    if kind == 0:  # truncated JSON
        body = body[: rng.randrange(len(body))]
    elif kind == 1:  # random byte flips
        chars = list(body)
        for _ in range(rng.randint(1, 5)):
            chars[rng.randrange(len(chars))] = chr(rng.randrange(0, 256))
        body = "".join(chars)
    elif kind == 2:  # wrong top-level type
        body = json.dumps(rng.choice([[], [1, 2], "calculator", 42, None, [[call]]]))
    elif kind == 3:  # arguments as a (bad) JSON string
        body = json.dumps({"name": name, "arguments": json.dumps(args)[: rng.randrange(1, 40)]})
    elif kind == 4:  # deep nesting
        depth = rng.choice([50, 500, 5000])
        body = '{"name": "calculator", "arguments": ' + "[" * depth + "]" * depth + "}"
    elif kind == 5:  # non-standard constants and huge numbers
        body = '{"name": "calculator", "arguments": {"expression": NaN, "x": Infinity, "y": ' + "9" * 5000 + "}}"
    elif kind == 6:  # oversized argument
        body = json.dumps({"name": "search", "arguments": {"query": "q" * rng.choice([201, 999, 50_000])}})
    elif kind == 7:  # valid tool, every argument of the wrong type
        body = json.dumps({"name": rng.choice(_NAMES[:5]), "arguments": {
            "expression": rng.choice(_VALUES[:6]), "key": rng.choice([1, None, [], ""]), "top_k": rng.choice(["3", 0, 99, 2.5])}})
    elif kind == 8:  # calculator fed hostile expressions
        expr = rng.choice(["__import__('os').system('ls')", "().__class__.__bases__", "9**9**9**9", "1/0",
                           "(" * 300 + "1" + ")" * 300, "-" * 199 + "1", "sqrt(-1)", "lambda: 0", "a.b", "1 if 1 else 0",
                           "max(*[1])", "round(1, 10**9)", "log(-1)", "1e308*10", "0**-1", "(-1)**0.5"])
        body = json.dumps({"name": "calculator", "arguments": {"expression": expr}})
    elif kind == 9:  # missing or non-string name
        body = json.dumps({"arguments": args} if rng.random() < 0.5 else {"name": rng.choice([1, None, [], {}]), "arguments": args})
    if kind == 10:  # unclosed tag
        return "<tool_call>" + body
    if kind == 11:  # nested / stray tags
        return f"<tool_call><tool_call>{body}</tool_call></tool_call></tool_call>"
    if kind == 12:  # a bare, fenced or partial JSON reply
        return rng.choice(["```json\n" + body + "\n```", body, "{" + body, "[" + body])
    if kind == 13:  # binary junk around a call
        junk = "".join(chr(rng.randrange(0, 0x110000)) if rng.random() < 0.9 else "\ud800" for _ in range(50))
        return junk + f"<tool_call>{body}</tool_call>" + junk
    return f"<tool_call>{body}</tool_call>"


def _check(result: StepResult) -> None:
    assert isinstance(result, StepResult)
    info = result.info
    assert info["tool_errors"] <= info["tool_calls"]
    assert info["valid_calls"] + info["tool_errors"] == info["tool_calls"]
    if not result.done:
        for message in result.observation.messages:
            assert message["role"] == "tool"
            payload = json.loads(message["content"])
            assert isinstance(payload, dict) and ("result" in payload or "error" in payload)


def run_fuzz(num_actions: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    env = ToolUseEnv(max_turns=50)
    tasks = env.tasks("train")
    stats = {"actions": 0, "calls": 0, "tool_errors": 0, "format_errors": 0, "crashes": 0}
    env.reset(tasks[0])
    for i in range(num_actions):
        action = "".join(malformed_call(rng) for _ in range(rng.randint(1, 3)))
        try:
            result = env.step(action)
            _check(result)
        except Exception:  # counted, then reported by the assertion
            stats["crashes"] += 1
            env.reset(tasks[i % len(tasks)])
            continue
        stats["actions"] += 1
        stats["calls"] += result.info["tool_calls"]
        stats["tool_errors"] += result.info["tool_errors"]
        stats["format_errors"] += result.info["format_errors"]
        if result.done:
            env.reset(tasks[i % len(tasks)])
    env.close()
    return stats


def test_thousands_of_malformed_calls_never_crash():
    stats = run_fuzz(num_actions=3000, seed=1234)
    print("\ntool-call fuzz:", stats)
    assert stats["crashes"] == 0
    assert stats["tool_errors"] + stats["format_errors"] >= 5000
    assert stats["tool_errors"] <= stats["calls"]


_ENV = ToolUseEnv()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_is_a_valid_action(text):
    env = _ENV
    env.reset(env.tasks("eval")[0])
    for action in (text, f"<tool_call>{text}</tool_call>", f'<tool_call>{{"name": "calculator", "arguments": {text}}}</tool_call>'):
        result = env.step(action)
        _check(result)
        if result.done:
            env.reset(env.tasks("eval")[0])
