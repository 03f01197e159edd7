"""Run untrusted Python in a sandbox: ``run_python(source, timeout_s=..., memory_mb=...)``.

Isolation comes from bubblewrap when installed, else Linux namespaces through
util-linux ``unshare``; with neither, ``run_python`` refuses unless the caller opts into
an unsafe mode (``allow_unsafe=True`` or ``ALIGHTNING_UNSAFE_SANDBOX=1``).
``run_function_tests`` builds on it to grade a function against hidden test cases
whose expected values never enter the sandbox.
"""

from agent_lightning.sandbox.function_tests import FunctionTestReport, TestCase, run_function_tests
from agent_lightning.sandbox.runner import (
    SandboxResult,
    SandboxUnavailableError,
    available_backend,
    run_python,
)

__all__ = [
    "FunctionTestReport",
    "SandboxResult",
    "SandboxUnavailableError",
    "TestCase",
    "available_backend",
    "run_function_tests",
    "run_python",
]
