"""Random initialisation drawn from a given seed, leaving the global generators as they were.

Model and adapter constructors (transformers' ``__init__``, peft's ``lora_A``) draw from the
global torch generator. Building them inside :func:`seeded_init` makes their weights a
function of the seed alone, whatever drew random numbers before, and without moving the
global generator for what comes after.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def seeded_init(seed: int | None) -> Iterator[None]:
    """Random draws inside come from ``seed`` (``None``: from the global generator, as they
    are); the CPU generator, and the current CUDA device's once CUDA is initialised, are
    restored on exit."""
    if seed is None:
        yield
        return
    import torch

    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
