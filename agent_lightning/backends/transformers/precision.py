"""``backend.autocast: auto``: bfloat16 autocast only where the device multiplies in bfloat16 natively.

bfloat16 autocast halves the bytes a matmul reads and, on hardware with bfloat16 dot-product
instructions, doubles its rate. Without them the CPU emulates bfloat16 and every matmul gets
slower: on a 2-core AVX2-only AMD EPYC (no AVX-512), a ``[4096, 576] x [576, 1536]`` linear took
54 ms in float32 and 492 ms under bfloat16 autocast (torch 2.13, 2 threads). So ``auto``
resolves to ``"bfloat16"`` on a CUDA GPU that supports it (Ampere and newer) and on a CPU whose
flags list ``avx512_bf16`` or ``amx_bf16`` (x86) or ``bf16`` (Arm), and to ``None`` (float32)
everywhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
"""``/proc/cpuinfo`` flags (x86 ``flags``, Arm ``Features``) of native bfloat16 arithmetic."""


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (or the given text); empty where unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return frozenset()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return frozenset(flags)


def native_bfloat16(device: Any, cpuinfo: str | None = None) -> bool:
    """Whether ``device`` (a ``torch.device``) multiplies bfloat16 natively."""
    if device.type == "cuda":
        import torch

        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(cpu_flags(cpuinfo) & CPU_BF16_FLAGS)
    return False


def resolve_autocast(setting: str | None, device: Any, cpuinfo: str | None = None) -> str | None:
    """``backend.autocast`` as used: ``"auto"`` becomes ``"bfloat16"`` where :func:`native_bfloat16`
    holds, else ``None``; ``"bfloat16"`` and ``None`` are kept as set."""
    if setting != "auto":
        return setting
    return "bfloat16" if native_bfloat16(device, cpuinfo) else None
