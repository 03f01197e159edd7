"""Choosing the implementation of an op: Triton, the C++ extension, or the torch reference.

Rules (``select``):
* ``ALIGHTNING_OPS=torch|triton|cpp`` forces a path for every op; forcing one that the op
  lacks, or that is not usable here, raises ``OpsUnavailableError`` naming the op and why.
* Otherwise: CUDA tensors use Triton when the op has a Triton kernel and ``triton`` imports;
  CPU tensors use the C++ extension when the op has one and ``agent_lightning._C`` is built;
  everything else uses the pure-torch reference (always present, the ground truth in tests).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from types import ModuleType

PATHS = ("torch", "triton", "cpp")
ENV_VAR = "ALIGHTNING_OPS"


class OpsUnavailableError(RuntimeError):
    """A forced implementation path cannot serve the requested op."""


def forced_path() -> str | None:
    """The path forced by ``ALIGHTNING_OPS``, or ``None``; an unknown value is an error."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value or value == "auto":
        return None
    if value not in PATHS:
        raise OpsUnavailableError(
            f"{ENV_VAR}={value!r} is not a known implementation path; allowed: auto, {', '.join(PATHS)}"
        )
    return value


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_usable(device_type: str) -> tuple[bool, str]:
    """Whether Triton can run on ``device_type`` here, and if not, why."""
    if not _triton_importable():
        return False, "the 'triton' package is not installed (pip install 'agent-lightning[triton]')"
    if device_type == "cuda":
        return True, ""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, ""
    return False, f"Triton needs CUDA tensors (got {device_type}); set TRITON_INTERPRET=1 to interpret on CPU"


@functools.lru_cache(maxsize=None)
def cpp_extension() -> ModuleType | None:
    """``agent_lightning._C`` when it was built, else ``None``."""
    import torch  # noqa: F401 - the extension links against libtorch, which torch loads

    try:
        return importlib.import_module("agent_lightning._C")
    except ImportError:
        return None


def select(op: str, device_type: str, implemented: tuple[str, ...]) -> str:
    """Pick the path for ``op`` on ``device_type`` among the paths the op ``implemented``.

    Args:
        op: The op's public name, used in error messages (``"token_logprobs"``).
        device_type: ``tensor.device.type`` of the op's main input.
        implemented: The non-reference paths the op has (``("triton", "cpp")``...).

    Returns:
        ``"torch"``, ``"triton"`` or ``"cpp"``.
    """
    forced = forced_path()
    if forced is not None:
        if forced == "torch":
            return "torch"
        if forced not in implemented:
            raise OpsUnavailableError(
                f"{ENV_VAR}={forced} but op '{op}' has no {forced} implementation "
                f"(it has: torch{''.join(', ' + p for p in implemented)})"
            )
        if forced == "triton":
            ok, why = triton_usable(device_type)
            if not ok:
                raise OpsUnavailableError(f"{ENV_VAR}=triton for op '{op}': {why}")
        if forced == "cpp":
            if cpp_extension() is None:
                raise OpsUnavailableError(
                    f"{ENV_VAR}=cpp for op '{op}': the C++ extension agent_lightning._C is not built "
                    "(reinstall with a compiler and without ALIGHTNING_BUILD_EXT=0)"
                )
            if device_type != "cpu" and not getattr(cpp_extension(), "cuda_enabled", False):
                raise OpsUnavailableError(f"{ENV_VAR}=cpp for op '{op}': the extension was built without CUDA")
        return forced
    if device_type == "cuda" and "triton" in implemented and triton_usable("cuda")[0]:
        return "triton"
    if "cpp" in implemented and cpp_extension() is not None:
        if device_type == "cpu" or getattr(cpp_extension(), "cuda_enabled", False):
            return "cpp"
    return "torch"
