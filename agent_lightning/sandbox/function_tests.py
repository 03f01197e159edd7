"""Grade a Python function against hidden test cases without trusting it.

Only the inputs enter the sandbox. A fixed harness loads the solution, calls the entry
point on each input and prints each return value as strict JSON on a marker line; the
comparison with the expected values happens here, outside. So an object whose ``__eq__``
always says yes cannot be serialised (the case fails), ``sys.exit(0)``/``os._exit`` just
end the run early (missing cases fail), and nothing the program writes can change what
it is compared against. A program that forges result lines can only claim return
values, and claiming the right ones is solving the task.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from agent_lightning.sandbox.runner import SandboxResult, run_python

_HARNESS = r'''
import json, os, signal, sys
_write, _dumps, _fd = os.write, json.dumps, os.dup(1)
MARK = %(mark)r
class _CaseTimeout(BaseException):
    pass
def _on_alarm(signum, frame):
    raise _CaseTimeout("test case took longer than %(per_case)s s")
def _emit(obj):
    _write(_fd, (MARK + _dumps(obj, allow_nan=False) + "\n").encode())
with open("cases.json") as fh:
    CASES = json.load(fh)
with open("solution.py") as fh:
    SOURCE = fh.read()
namespace = {"__name__": "solution"}
try:
    exec(compile(SOURCE, "solution.py", "exec"), namespace)
    fn = namespace[%(entry)r]
    if not callable(fn):
        raise TypeError("%(entry)s is not callable")
except BaseException as exc:
    _emit({"load_error": type(exc).__name__ + ": " + str(exc)[:500]})
    os._exit(0)
signal.signal(signal.SIGALRM, _on_alarm)
for i, case in enumerate(CASES):
    try:
        signal.setitimer(signal.ITIMER_REAL, %(per_case)s)
        try:
            value = fn(*case["args"], **case["kwargs"])
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        out = {"i": i, "value": value}
        _emit(out)
    except BaseException as exc:
        try:
            _emit({"i": i, "error": type(exc).__name__ + ": " + str(exc)[:300]})
        except BaseException:
            _emit({"i": i, "error": "unreportable exception"})
'''


@dataclass(frozen=True)
class TestCase:
    """One hidden test: ``entry_point(*args, **kwargs) == expected`` (JSON values only)."""

    __test__ = False  # not a pytest test class, despite the name

    args: Sequence[Any]
    expected: Any
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    public: bool = False
    """Public cases (shown in the prompt) may reveal their expected value in feedback."""


@dataclass(frozen=True)
class CaseOutcome:
    index: int
    passed: bool
    detail: str
    """``"ok"``, ``"wrong answer: got ..."``, ``"error: ..."`` or ``"no result"``."""


@dataclass(frozen=True)
class FunctionTestReport:
    """Result of ``run_function_tests``.

    Attributes:
        passed: Number of cases whose returned value equals the expected one.
        total: Number of cases.
        outcomes: One per case, in order.
        load_error: Why the solution could not be loaded (syntax error, missing entry
            point...), else ``None``.
        program_output: What the solution printed (stdout then stderr), marker lines removed.
        sandbox: The raw sandbox result.
    """

    passed: int
    total: int
    outcomes: tuple[CaseOutcome, ...]
    load_error: str | None
    program_output: str
    sandbox: SandboxResult

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0

    def feedback(self, cases: Sequence[TestCase], *, max_chars: int = 2000) -> str:
        """Test output for the model: counts, then what went wrong per failing case."""
        lines = [f"{self.passed}/{self.total} tests passed."]
        if self.load_error:
            lines.append(f"Could not load your code: {self.load_error}")
        elif self.sandbox.stopped_reason:
            lines.append(f"Run stopped: {self.sandbox.stopped_reason}.")
        for case, out in zip(cases, self.outcomes):
            if out.passed:
                continue
            call = ", ".join([_short(a) for a in case.args] + [f"{k}={_short(v)}" for k, v in case.kwargs.items()])
            line = f"test {out.index}: f({call}) -> {out.detail}"
            if case.public:
                line += f"; expected {_short(case.expected)}"
            lines.append(line)
        if self.program_output.strip():
            lines.append("Your program printed:\n" + self.program_output.strip()[-600:])
        text = "\n".join(lines)
        return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value) if _is_json(value) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
        return True
    except (TypeError, ValueError):
        return False


def strict_equal(got: Any, expected: Any, *, float_tol: float = 1e-9) -> bool:
    """JSON-value equality with exact types: ``True != 1``, ``"1" != 1``; floats within ``float_tol``.

    An int result matches a float expectation (and the reverse) when numerically equal
    within tolerance; containers must match element by element, dict keys exactly.
    """
    if isinstance(expected, bool) or isinstance(got, bool):
        return type(got) is type(expected) and got == expected
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)):
        if isinstance(expected, int) and isinstance(got, int):
            return got == expected
        return math.isfinite(got) and math.isclose(got, expected, rel_tol=float_tol, abs_tol=float_tol)
    if isinstance(expected, str) or expected is None:
        return type(got) is type(expected) and got == expected
    if isinstance(expected, (list, tuple)):
        return (isinstance(got, list) and len(got) == len(expected)
                and all(strict_equal(g, e, float_tol=float_tol) for g, e in zip(got, expected)))
    if isinstance(expected, dict):
        return (isinstance(got, dict) and set(got) == set(expected)
                and all(strict_equal(got[k], expected[k], float_tol=float_tol) for k in expected))
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def parse_results(stdout: str, mark: str, total: int) -> tuple[dict[int, Any], dict[int, str], str | None, str]:
    """Splits the harness output into (values, errors, load_error, other output).

    Lines that do not parse as strict JSON objects are ignored; a case reported more
    than once is treated as an error (a program forging lines gains nothing).
    """
    values: dict[int, Any] = {}
    errors: dict[int, str] = {}
    seen: set[int] = set()
    load_error = None
    other = []
    for line in stdout.splitlines():
        if not line.startswith(mark):
            other.append(line)
            continue
        try:
            obj = json.loads(line[len(mark):], parse_constant=_reject_constant)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        if "load_error" in obj and load_error is None:
            load_error = str(obj["load_error"])
            continue
        i = obj.get("i")
        if type(i) is not int or not 0 <= i < total:
            continue
        if i in seen:
            values.pop(i, None)
            errors[i] = "reported more than once"
            continue
        seen.add(i)
        if "error" in obj:
            errors[i] = str(obj["error"])
        elif "value" in obj:
            values[i] = obj["value"]
    return values, errors, load_error, "\n".join(other)


def run_function_tests(solution: str, entry_point: str, cases: Sequence[TestCase], *,
                       timeout_s: float = 10.0, per_case_timeout_s: float = 2.0, memory_mb: int = 256,
                       float_tol: float = 1e-9, backend: str | None = None,
                       allow_unsafe: bool = False) -> FunctionTestReport:
    """Runs ``solution`` in the sandbox and checks ``entry_point`` on each case outside it."""
    if not entry_point.isidentifier():
        raise ValueError(f"run_function_tests: entry_point must be an identifier, got {entry_point!r}")
    mark = "@@ALR-" + secrets.token_hex(8) + "@@"
    harness = _HARNESS % {"mark": mark, "entry": entry_point, "per_case": float(per_case_timeout_s)}
    inputs = [{"args": list(c.args), "kwargs": dict(c.kwargs)} for c in cases]
    result = run_python(harness, timeout_s=timeout_s, memory_mb=memory_mb,
                        files={"solution.py": solution, "cases.json": json.dumps(inputs)},
                        backend=backend, allow_unsafe=allow_unsafe)
    values, errors, load_error, other = parse_results(result.stdout, mark, len(cases))
    outcomes = []
    for i, case in enumerate(cases):
        if i in errors:
            outcomes.append(CaseOutcome(i, False, "error: " + errors[i]))
        elif i in values:
            ok = strict_equal(values[i], case.expected, float_tol=float_tol)
            outcomes.append(CaseOutcome(i, ok, "ok" if ok else "wrong answer: got " + _short(values[i])))
        else:
            outcomes.append(CaseOutcome(i, False, "no result"))
    passed = sum(o.passed for o in outcomes)
    program_output = (other + ("\n" + result.stderr if result.stderr.strip() else "")).strip()
    return FunctionTestReport(passed=passed, total=len(cases), outcomes=tuple(outcomes),
                              load_error=load_error, program_output=program_output, sandbox=result)
