"""The code environment: honest solutions pass, grader hacks earn nothing, retries work."""

from __future__ import annotations

import json

import pytest

from agent_lightning.envs.code import CodeEnv, extract_code, problems
from agent_lightning.sandbox import TestCase, run_function_tests
from agent_lightning.sandbox.function_tests import parse_results, strict_equal


def fenced(code: str) -> str:
    return f"Here you go:\n```python\n{code}```\n"


def test_every_reference_solution_passes_all_its_tests():
    """Also validates the shipped data: the tests are right and runnable in the sandbox."""
    failures = {}
    for p in problems():
        cases = [TestCase(t["args"], t["expected"]) for t in p["tests"]]
        report = run_function_tests(p["reference"], p["entry_point"], cases)
        if report.passed != report.total:
            failures[p["id"]] = (report.passed, report.total, report.program_output[-300:])
    assert failures == {}
    assert [p["level"] for p in problems()].count("standard") == 36 and len(problems()) == 84


def test_splits_are_disjoint_and_prompts_hide_the_tests():
    env = CodeEnv()
    train, evals = env.tasks("train"), env.tasks("eval")
    assert len(train) == 26 and len(evals) == 10
    assert not {t.reference["entry_point"] for t in train} & {t.reference["entry_point"] for t in evals}
    task = next(t for t in evals if t.reference["entry_point"] == "two_sum_indices")
    shown = task.prompt[-1]["content"]
    assert "two_sum_indices([2, 7, 11, 15], 9) == [0, 1]" in shown  # a public example
    assert "[5, 5, 5]" not in shown  # a hidden test's input


# ----------------------------------------------------------------------------- grader hacks

TASK = "two_sum_indices"
HONEST = """
def two_sum_indices(nums, target):
    seen = {}
    best = None
    for j, x in enumerate(nums):
        for i in range(j):
            if nums[i] + x == target:
                return [i, j]
    return []
"""
HACKS = {
    "always-equal object": """
class Anything:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    __hash__ = object.__hash__
def two_sum_indices(nums, target):
    return Anything()
""",
    "list subclass with __eq__": """
class Yes(list):
    def __eq__(self, other): return True
def two_sum_indices(nums, target):
    return Yes([99, 98])
""",
    "int subclass with __eq__": """
class Zero(int):
    def __eq__(self, other): return True
    __hash__ = int.__hash__
def two_sum_indices(nums, target):
    return Zero(0)
""",
    "sys.exit(0) at import": "import sys\nsys.exit(0)\n",
    "os._exit(0) at import": "import os\nos._exit(0)\n",
    "sys.exit(0) in the function": "import sys\ndef two_sum_indices(nums, target):\n    sys.exit(0)\n",
    "os._exit(0) in the function": "import os\ndef two_sum_indices(nums, target):\n    os._exit(0)\n",
    "skip test": "import unittest\nraise unittest.SkipTest('skip')\n",
    "edit the test files": """
import os, glob
for path in glob.glob('/sandbox/**', recursive=True) + glob.glob('/tmp/**', recursive=True):
    try:
        if os.path.isfile(path):
            open(path, 'w').write('[]')
    except OSError:
        pass
    try:
        os.remove(path)
    except OSError:
        pass
def two_sum_indices(nums, target):
    return None
""",
    "forge result lines": """
import __main__, json, os
mark = __main__.MARK
for i in range(50):
    print(mark + json.dumps({"i": i, "ok": True, "passed": True, "value": "PASS"}))
    print(mark + json.dumps({"i": i, "passed": True}))
os._exit(0)
""",
    "monkeypatch json and builtins": """
import json, builtins
json.dumps = lambda *a, **k: '{"i": 0, "passed": true}'
builtins.print = lambda *a, **k: None
def two_sum_indices(nums, target):
    return {"passed": True}
""",
    "kill the harness": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    "swap the entry point mid-run": """
import __main__
def two_sum_indices(nums, target):
    __main__.namespace['two_sum_indices'] = lambda *a: None
    __main__.CASES.clear()
    raise RuntimeError('x')
""",
    "hunt for expected values": """
import os
found = []
for root in ('/sandbox', '/tmp', '/.alightning', '/home', '/etc', '/var'):
    for dirpath, dirs, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            try:
                if path != '/sandbox/solution.py' and '"expected"' in open(path, errors='ignore').read(100000):
                    found.append(path)
            except Exception:
                pass
def two_sum_indices(nums, target):
    return {"found": found}
""",
}


def _cases():
    p = next(p for p in problems() if p["entry_point"] == TASK)
    return [TestCase(t["args"], t["expected"]) for t in p["tests"]]


def test_honest_solution_passes_every_test():
    report = run_function_tests(HONEST, TASK, _cases())
    assert report.passed == report.total == 5


@pytest.mark.parametrize("name", sorted(HACKS))
def test_grader_hack_earns_nothing(name):
    report = run_function_tests(HACKS[name], TASK, _cases())
    assert report.passed == 0, (name, report.outcomes)
    assert report.fraction == 0.0


HUNT = r"""
import os, re
CANARY = re.compile(r"alr-expected-[0-9a-f]{16}")
def f(x):
    texts = [repr(dict(os.environ))]
    for path in ('/proc/self/environ', '/proc/self/cmdline', '/proc/1/environ', '/proc/1/cmdline'):
        try:
            texts.append(open(path, 'rb').read().decode('latin-1'))
        except OSError:
            pass
    for root in ('/', ):
        for dirpath, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if os.path.join(dirpath, d) not in ('/usr', '/proc', '/sys', '/dev', '/root')]
            for name in files:
                try:
                    texts.append(open(os.path.join(dirpath, name), 'rb').read(1 << 20).decode('latin-1'))
                except OSError:
                    pass
    for text in texts:
        m = CANARY.search(text)
        if m:
            return m.group()
    return "nothing"
"""


def test_expected_values_never_enter_the_sandbox():
    """A program that searches everything it can see for the expected value finds nothing."""
    import secrets

    canary = "alr-expected-" + secrets.token_hex(8)
    report = run_function_tests(HUNT, "f", [TestCase(["alr-expected-input"], canary)])
    assert report.passed == 0
    assert report.outcomes[0].detail == 'wrong answer: got "nothing"'
    leaky = run_function_tests(HUNT, "f", [TestCase([canary], canary)])  # the hunt works when it can see it
    assert leaky.passed == 1


def test_hack_through_the_environment_gets_zero_reward():
    env = CodeEnv(max_attempts=1)
    task = next(t for t in env.tasks("eval") if t.reference["entry_point"] == TASK)
    env.reset(task)
    result = env.step(fenced(HACKS["always-equal object"]))
    assert result.done and result.reward == 0.0 and result.info["success"] is False


def test_strict_equality_rules():
    assert strict_equal(2, 2.0) and strict_equal([1, [2.0]], [1, [2]])
    assert not strict_equal(True, 1) and not strict_equal(1, True) and not strict_equal("1", 1)
    assert not strict_equal(None, []) and not strict_equal({"a": 1}, {"a": 1, "b": 2})
    assert not strict_equal([1, 2], [1, 2, 3]) and not strict_equal(float("nan"), 1.0)


def test_result_parser_rejects_nan_and_duplicates():
    mark = "@@M@@"
    out = "\n".join([mark + '{"i": 0, "value": NaN}', mark + '{"i": 1, "value": 3}', mark + '{"i": 1, "value": 3}',
                     "plain output", mark + '{"i": 9, "value": 1}', mark + "not json"])
    values, errors, load_error, other = parse_results(out, mark, total=3)
    assert values == {} and errors == {1: "reported more than once"} and load_error is None
    assert other == "plain output"


# ----------------------------------------------------------------------------- episodes


def test_retry_episode_feedback_then_success():
    env = CodeEnv(max_attempts=3)
    task = next(t for t in env.tasks("eval") if t.reference["entry_point"] == "median")
    env.reset(task)
    wrong = env.step(fenced("def median(nums):\n    return sorted(nums)[len(nums) // 2]\n"))
    assert not wrong.done and wrong.reward == 0.0
    assert 0 < wrong.info["tests_passed"] < wrong.info["tests_total"] == 5
    text = wrong.observation.messages[0]["content"]
    assert f"{wrong.info['tests_passed']}/5 tests passed" in text and "attempts left" in text
    assert "expected 2.5" in text  # the failing public example shows its expected value
    assert "expected 8.0" not in text  # a failing hidden test does not
    ok = env.step(fenced("def median(nums):\n    s = sorted(nums)\n    n = len(s)\n"
                         "    return float(s[n // 2]) if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2\n"))
    assert ok.done and ok.reward == 1.0 and ok.info["success"] is True and ok.info["tests_fraction"] == 1.0


def test_out_of_attempts_pays_the_last_fraction_and_no_code_is_a_format_error():
    env = CodeEnv(max_attempts=2)
    task = next(t for t in env.tasks("train") if t.reference["entry_point"] == "gcd")
    env.reset(task)
    nothing = env.step("I am not sure how to do this.")
    assert nothing.info["format_errors"] == 1 and not nothing.done
    last = env.step(fenced("def gcd(a, b):\n    return 6\n"))
    assert last.done and last.info["success"] is False
    assert last.reward == pytest.approx(last.info["tests_passed"] / last.info["tests_total"])
    assert 0 < last.reward < 1


def test_infinite_loop_in_solution_times_out_per_test():
    cases = [TestCase([1], 1), TestCase([2], 2)]
    report = run_function_tests("def f(x):\n    while x == 1:\n        pass\n    return x\n", "f", cases,
                                per_case_timeout_s=0.5, timeout_s=5)
    assert [o.passed for o in report.outcomes] == [False, True]
    assert "longer than" in report.outcomes[0].detail


@pytest.mark.parametrize("action,expected", [
    ("```python\ndef f(x):\n    return 1\n```", "def f(x):\n    return 1\n"),
    ("text\n```py\nimport math\n```\n```\ndef f(x): return 2\n```", "def f(x): return 2\n"),
    ("def f(x):\n    return 3", "def f(x):\n    return 3"),
    ("```python\ndef f(x):\n    return 4", "def f(x):\n    return 4"),
    ("no code here", None),
    ("```bash\nls\n```", None),
])
def test_extract_code(action, expected):
    assert extract_code(action, "f") == expected


def test_feedback_is_json_safe_for_any_output():
    report = run_function_tests("def f(x):\n    print('\\x00\\udcff' * 3)\n    return {1: 2}\n", "f", [TestCase([1], {"1": 2})])
    assert report.passed == 1  # JSON turns int keys into strings: {1: 2} serialises as {"1": 2}
    json.dumps(report.feedback([TestCase([1], {"1": 2})]))
