"""``test-pass-fraction``: the fraction of hidden tests the trajectory's code passes.

By default it reads what the environment already measured (``info["tests_passed"]`` and
``info["tests_total"]``, as the ``code`` environment reports every attempt). With
``source: rerun`` it instead extracts the code of the final action and runs
``task.reference["tests"]`` itself in the sandbox (for environments that do not run
tests), comparing return values outside the sandbox.
"""

from __future__ import annotations

from agent_lightning.hookspecs import hookimpl
from agent_lightning.types import Trajectory


def pass_fraction(source: str = "info", which: str = "last", timeout_s: float = 10.0,
                       memory_mb: int = 256, sandbox_backend: str | None = None):
    """Reward = tests passed / tests total.

    Args:
        source: ``"info"`` (read the environment's counts) or ``"rerun"`` (run the tests).
        which: With ``source: info``, ``"last"`` attempt or ``"best"`` attempt.
        timeout_s, memory_mb, sandbox_backend: Sandbox settings for ``source: rerun``.
    """
    if source not in ("info", "rerun"):
        raise ValueError(f"reward.source must be 'info' or 'rerun', got {source!r}")
    if which not in ("last", "best"):
        raise ValueError(f"reward.which must be 'last' or 'best', got {which!r}")

    def from_info(trajectory: Trajectory) -> float:
        fractions = [t.info["tests_passed"] / t.info["tests_total"] for t in trajectory.turns
                     if t.info.get("tests_total")]
        if not fractions:
            return 0.0
        return max(fractions) if which == "best" else fractions[-1]

    def rerun(trajectory: Trajectory) -> float:
        from agent_lightning.envs.code import extract_code
        from agent_lightning.sandbox import TestCase, run_function_tests

        ref = trajectory.task.reference
        if "tests" not in ref or "entry_point" not in ref:
            raise KeyError(f"task '{trajectory.task.id}' has no reference['tests'] / ['entry_point'] to rerun")
        code = extract_code(trajectory.turns[-1].action, ref["entry_point"]) if trajectory.turns else None
        if code is None or not ref["tests"]:
            return 0.0
        cases = [TestCase(t["args"], t["expected"], t.get("kwargs", {})) for t in ref["tests"]]
        report = run_function_tests(code, ref["entry_point"], cases, timeout_s=timeout_s, memory_mb=memory_mb,
                                    backend=sandbox_backend)
        return report.fraction

    return from_info if source == "info" else rerun


pass_fraction.description = "fraction of hidden tests passed (from the environment, or rerun in the sandbox)"  # type: ignore[attr-defined]


@hookimpl
def register_rewards(register):
    register("test-pass-fraction", pass_fraction)
