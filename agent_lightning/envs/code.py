"""Code generation with sandboxed execution: write a Python function, pass hidden tests.

Each task asks for one function (``entry_point``) and shows a couple of public examples.
The model replies with the function in a fenced ````python```` block; the environment
runs the hidden tests in the sandbox (``agent_lightning.sandbox.run_function_tests``:
only inputs enter it, values come back as strict JSON and are compared here) and
answers with the test output, so the model may fix its code within ``max_attempts``.

Reward: the fraction of tests the last attempt passed, paid when the episode ends (all
tests pass or attempts run out); ``info`` carries ``tests_passed``, ``tests_total``,
``tests_fraction`` each attempt, plus ``format_errors`` and ``sandbox_timeouts``.

Options for small models: ``levels`` picks the problem sets (``"standard"``, the default: 26
train / 10 eval problems; ``"basic"``: 36 / 12 one-to-three-line functions such as ``square``
or ``reverse_string`` that a 135M model can learn); ``demonstrations`` places that many worked
examples (demo-only problems from ``code_demos``, formatted exactly like a task, answered with
the function in a fenced block) as chat turns between the system prompt and the task.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
from typing import Any, Sequence

from agent_lightning.envs.code_demos import DEMOS, demo_reply
from agent_lightning.hookspecs import hookimpl
from agent_lightning.types import Observation, StepResult, Task, check_names, check_split

LEVELS = ("standard", "basic")  # the ``level`` of each shipped problem
_LANG = re.compile(r"[ \t]*([A-Za-z0-9_+-]*)")

SYSTEM_PROMPT = ("You write correct, self-contained Python 3 functions using only the standard library. "
                 "Reply with the complete function in one ```python code block. If tests fail you will "
                 "see their output and may reply with a corrected version.")


@functools.lru_cache(maxsize=1)
def problems() -> tuple[dict[str, Any], ...]:
    """The shipped problems (``data/code_tasks.json``; rebuilt by ``data/build_code_tasks.py``)."""
    text = (importlib.resources.files("agent_lightning.envs.data") / "code_tasks.json").read_text()
    return tuple(json.loads(text)["problems"])


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of each fenced block. Three backticks with a newline later in the text
    open a block (the language is the word right after them; the body starts on the next line);
    the next three backticks, or the end of the text, close it."""
    # a scan, not re.findall(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S), which it
    # matches exactly: the regex rescanned the rest of the line from every fence (minutes on 1 MB of "```")
    blocks, pos = [], 0
    while (start := text.find("```", pos)) >= 0:
        eol = text.find("\n", start + 3)
        if eol < 0:  # no newline after this fence, so none after any later one either
            break
        lang = _LANG.match(text, start + 3).group(1)
        close = text.find("```", eol + 1)
        end = len(text) if close < 0 else close
        blocks.append((lang, text[eol + 1:end]))
        pos = len(text) if close < 0 else close + 3
    return blocks


def extract_code(action: str, entry_point: str) -> str | None:
    """The code to run: the last fenced block defining ``entry_point``, else the last fenced
    block, else the whole reply when it defines ``entry_point``; ``None`` when there is none."""
    blocks = [body for lang, body in _fenced_blocks(action) if lang.lower() in ("", "python", "py", "python3")]
    defining = [b for b in blocks if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", b)]
    if defining:
        return defining[-1]
    if blocks:
        return blocks[-1]
    # [^\S\n]* not \s*: \s* ran across every following line from each line start (quadratic on blank lines)
    if re.search(rf"^[^\S\n]*def\s+{re.escape(entry_point)}\s*\(", action, re.M):
        return action
    return None


def _prompt_text(problem: dict[str, Any]) -> str:
    examples = []
    for test in problem["tests"][: problem["num_public"]]:
        call = ", ".join(json.dumps(a) for a in test["args"])
        examples.append(f"    {problem['entry_point']}({call}) == {json.dumps(test['expected'])}")
    return (f"Write a Python function `{problem['entry_point']}`.\n{problem['description']}\n"
            "Examples (JSON notation):\n" + "\n".join(examples))


class CodeEnv:
    """Write a Python function that passes hidden tests, run in a sandbox; retry on failure."""

    description = "write a Python function that passes hidden tests run in a sandbox (multi-turn retries)"

    def __init__(self, max_attempts: int = 3, timeout_s: float = 10.0, per_test_timeout_s: float = 2.0,
                 memory_mb: int = 256, sandbox_backend: str | None = None, allow_unsafe_sandbox: bool = False,
                 max_feedback_chars: int = 2000, levels: Sequence[str] = ("standard",), demonstrations: int = 0):
        if max_attempts < 1:
            raise ValueError(f"environment.max_attempts must be >= 1, got {max_attempts}")
        levels = check_names("levels", levels, LEVELS)
        if not 0 <= demonstrations <= len(DEMOS):
            raise ValueError(f"environment.demonstrations must be between 0 and {len(DEMOS)} (the worked "
                             f"examples there are), got {demonstrations}")
        self.levels = levels
        self.demonstrations = demonstrations
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self.per_test_timeout_s = per_test_timeout_s
        self.memory_mb = memory_mb
        self.sandbox_backend = sandbox_backend
        self.allow_unsafe_sandbox = allow_unsafe_sandbox
        self.max_feedback_chars = max_feedback_chars
        self._task: Task | None = None
        self._attempt = 0

    def tasks(self, split: str) -> list[Task]:
        check_split("code", split)
        head = [{"role": "system", "content": SYSTEM_PROMPT}]
        for demo in DEMOS[:self.demonstrations]:
            head += [{"role": "user", "content": _prompt_text(demo)},
                     {"role": "assistant", "content": demo_reply(demo)}]
        out = []
        for p in problems():
            if p["split"] != split or p["level"] not in self.levels:
                continue
            prompt = (*head, {"role": "user", "content": _prompt_text(p)})
            out.append(Task(id=p["id"], prompt=prompt, split=split,
                            reference={"entry_point": p["entry_point"], "tests": p["tests"],
                                       "num_public": p["num_public"]}))
        return out

    def reset(self, task: Task) -> Observation:
        self._task = task
        self._attempt = 0
        return Observation(tuple(task.prompt))

    def step(self, action: str) -> StepResult:
        from agent_lightning.sandbox import TestCase, run_function_tests

        if self._task is None:
            raise RuntimeError("code: step() called before reset()")
        self._attempt += 1
        ref = self._task.reference
        cases = [TestCase(args=t["args"], expected=t["expected"], public=i < ref["num_public"])
                 for i, t in enumerate(ref["tests"])]
        out_of_attempts = self._attempt >= self.max_attempts
        info: dict[str, Any] = {"tests_passed": 0, "tests_total": len(cases), "tests_fraction": 0.0,
                                "format_errors": 0, "sandbox_timeouts": 0}
        action = action if isinstance(action, str) else str(action)
        # lone surrogates cannot be UTF-8 encoded: writing the solution into the sandbox raised
        code = extract_code(action.encode("utf-8", "replace").decode("utf-8"), ref["entry_point"])
        if code is None:
            info["format_errors"] = 1
            if out_of_attempts:
                info["success"] = False
                return StepResult(None, reward=0.0, done=True, info=info)
            return StepResult(Observation.user(
                f"No code found. Reply with the function `{ref['entry_point']}` in a ```python code block."),
                reward=0.0, done=False, info=info)
        report = run_function_tests(code, ref["entry_point"], cases, timeout_s=self.timeout_s,
                                    per_case_timeout_s=self.per_test_timeout_s, memory_mb=self.memory_mb,
                                    backend=self.sandbox_backend, allow_unsafe=self.allow_unsafe_sandbox)
        info.update(tests_passed=report.passed, tests_fraction=report.fraction,
                    sandbox_timeouts=int(report.sandbox.timed_out))
        solved = report.passed == report.total
        if solved or out_of_attempts:
            info["success"] = solved
            return StepResult(None, reward=report.fraction, done=True, info=info)
        feedback = report.feedback(cases, max_chars=self.max_feedback_chars)
        left = self.max_attempts - self._attempt
        return StepResult(Observation.user(f"{feedback}\nFix the function and reply with the complete code "
                                           f"({left} attempt{'s' if left != 1 else ''} left)."),
                          reward=0.0, done=False, info=info)

    def close(self) -> None:
        self._task = None


@hookimpl
def register_environments(register):
    register("code", CodeEnv)
