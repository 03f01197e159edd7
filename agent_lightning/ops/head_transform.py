"""The map from lm-head outputs to the softmax input shared by every token log-prob path
(torch reference, fused torch, Triton): temperature, logit scale and soft-cap.

Its own module so that the Triton kernels (``agent_lightning.kernels``) and the dispatching
op (``agent_lightning.ops.logprobs``) both use it without importing each other.
"""

from __future__ import annotations

from typing import NamedTuple


class HeadTransform(NamedTuple):
    """The transform from lm-head output ``y`` to the softmax input ``z`` (module docstring)."""

    temperature: float
    logit_scale: float
    softcap: float | None

    @property
    def pre(self) -> float:
        """``u = y * pre``: ``s / T``, or ``s / c`` with a soft-cap."""
        return self.logit_scale / (self.softcap if self.softcap is not None else self.temperature)

    @property
    def post(self) -> float:
        """With a soft-cap ``z = tanh(u) * post`` (``c / T``)."""
        return self.softcap / self.temperature if self.softcap is not None else 1.0

    @property
    def grad_scale(self) -> float:
        """``d z / d y`` without the ``1 - tanh**2`` factor: ``s / T``."""
        return self.logit_scale / self.temperature
