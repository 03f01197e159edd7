"""The one door to hot math.

Each op has a pure-torch reference and faster paths (Triton on CUDA, the C++ extension
on CPU); ``agent_lightning.ops.dispatch`` picks one. Submodules are imported on first
use, so ``import agent_lightning.ops`` is cheap.

Public ops (see each module for shapes):
* ``token_logprobs``  — fused log-prob / entropy from hidden states (``ops/logprobs.py``)
* ``token_logprob_loss`` — a row-separable loss of those, its gradient taken in the forward
  sweep (three matmuls instead of four; ``ops/logprob_loss.py``)
* ``gae``             — generalised advantage estimation, padded or packed (``ops/gae.py``)
* ``group_advantages``— GRPO / Dr. GRPO / RLOO baselines (``ops/advantages.py``)
* ``kl_penalty``      — k1 / k2 / k3 estimators, clamped (``ops/kl.py``)
* packing: ``pack_lengths``, ``pack``, ``unpack``, ``pad_packed``, ``unpad``,
  ``partition_microbatches``, ``partition_shared_prompts`` (``ops/packing.py``)
* segment reductions: ``segment_sum``, ``segment_mean``, ``segment_count`` (``ops/segments.py``)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "token_logprobs": "logprobs",
    "token_logprob_loss": "logprob_loss",
    "gae": "gae",
    "group_advantages": "advantages",
    "kl_penalty": "kl",
    "pack_lengths": "packing",
    "pack": "packing",
    "unpack": "packing",
    "pad_packed": "packing",
    "unpad": "packing",
    "partition_microbatches": "packing",
    "partition_shared_prompts": "packing",
    "segment_sum": "segments",
    "segment_mean": "segments",
    "segment_count": "segments",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agent_lightning.ops' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"agent_lightning.ops.{module}"), name)
    globals()[name] = value
    return value
