"""The learning-rate schedule every backend's ``configure_optimizer`` implements
(``types.Backend``): linear warmup, then ``constant``, ``linear`` decay to 0 or ``cosine``.
"""

from __future__ import annotations

import math
from typing import Callable


def lr_factor(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """``step -> multiplier of the base learning rate`` (for ``torch.optim.lr_scheduler.LambdaLR``).

    Warmup: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps; after it,
    ``progress = (step - warmup) / (total - warmup)`` (at most 1) gives ``1`` (constant),
    ``1 - progress`` (linear) or ``(1 + cos(pi * progress)) / 2`` (cosine).
    """
    if schedule not in ("constant", "linear", "cosine"):
        raise ValueError(f"schedule: '{schedule}' is not one of constant, linear, cosine")

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant" or total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
