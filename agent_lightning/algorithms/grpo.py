"""GRPO: group-relative policy optimisation (with Dr. GRPO as an advantage mode).

Per step: each task is played ``group_size`` times; a trajectory's advantage is its
reward relative to its group (``ops.group_advantages``: std-normalised ``grpo`` or
mean-only ``drgrpo``), broadcast to its policy tokens. The loss per policy token is the
clipped surrogate

    ratio = exp(logp - logp_sampled)
    pg    = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)

aggregated over tokens (``token-mean``), per sequence then over sequences
(``seq-mean-token-mean``), or as per-sequence sums over a constant (``seq-mean-token-sum``,
Dr. GRPO), plus ``kl_coef * KL(policy || reference)`` (k1, k2 or k3, clamped) when
``kl_coef > 0`` (a coefficient of 0 loads no reference model) and ``-entropy_coef * H``.
Log-probs come from ``ops.token_logprobs`` on the final hidden states (fused path); the loss
through the backend's ``token_loss`` when it has one (``common.backend_policy_loss``).
Failed episodes are left out of both the group statistics and the loss. The pieces
shared with the other algorithms (surrogate, aggregation, KL, the epoch/minibatch loop)
live in ``algorithms/common.py`` and ``algorithms/training.py``.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

from pydantic import Field

from agent_lightning.algorithms import common, credit, training
from agent_lightning.algorithms.training import PolicyGradientOptions
from agent_lightning.hookspecs import hookimpl
from agent_lightning.loop.batch import PackedBatch, pack_trajectories
from agent_lightning.types import Backend, Trajectory


class GRPOConfig(PolicyGradientOptions):
    """GRPO hyper-parameters (the ``algorithm`` section of the config); the shared ones are
    documented in ``agent_lightning.algorithms.training.PolicyGradientOptions``."""

    group_size: int = Field(8, ge=1, description="rollouts per task")
    advantage: Literal["grpo", "drgrpo"] = "grpo"
    advantage_eps: float = Field(1e-6, gt=0)
    filter_groups: bool = Field(False, description="leave out groups whose rewards are all equal (zero "
                                                    "advantage): no forward/backward spent on them")


class GRPO:
    """Group-relative policy optimisation."""

    description = "GRPO / Dr. GRPO with clipped ratios, optional KL to a frozen reference"

    def __init__(self, **options: Any):
        self.pg = training.PolicyGradient(GRPOConfig, options)
        self.config: GRPOConfig = self.pg.config
        self.group_size = self.config.group_size
        self._kept_fraction: float | None = None

    def setup(self, backend: Backend, *, total_steps: int, temperature: float) -> None:
        """Create the optimizer; remember the sampling temperature for log-prob recomputation."""
        self.pg.setup(backend, total_steps=total_steps, temperature=temperature)

    def prepare(self, trajectories: Sequence[Trajectory]) -> PackedBatch | None:
        """The healthy trajectories packed with their advantages (:meth:`advantages`: they
        need only the rewards); ``None`` if none is healthy."""
        kept = common.healthy(trajectories)
        if not kept:
            return None
        if credit.is_agent_batch(kept):  # agent episodes: segments and per-call rewards
            per_sequence = self.config.loss_aggregation != "token-mean"
            return pack_trajectories(kept, credit.token_advantages(kept, self.config.advantage, eps=self.config.advantage_eps,
                                                                   per_sequence_loss=per_sequence))
        advantages = self.advantages(kept)
        if self.config.filter_groups:
            kept, advantages = self._informative(kept, advantages)
            if not kept:
                return None
        per_token = [[float(a)] * t.num_policy_tokens for t, a in zip(kept, advantages)]
        return pack_trajectories(kept, per_token)

    def advantages(self, trajectories: Sequence[Trajectory]) -> Any:
        """Each trajectory's final reward relative to its group (``grpo``: std-normalised,
        ``drgrpo``: mean only), float32 ``[B]``; broadcast to its policy tokens by :meth:`prepare`."""
        import torch

        rewards = torch.tensor([t.final_reward for t in trajectories], dtype=torch.float32)
        groups = torch.tensor([t.group for t in trajectories], dtype=torch.long)
        return common.group_baseline(rewards, groups, self.config.advantage, self.config.advantage_eps)

    def _informative(self, kept: list[Trajectory], advantages: Any) -> tuple[list[Trajectory], Any]:
        """The trajectories of groups whose rewards differ (DAPO's dynamic-sampling filter):
        an all-equal group has zero advantage everywhere, so without a KL or entropy term it
        adds nothing to the gradient. Records the kept fraction of groups for the metrics."""
        import torch

        rewards = torch.tensor([t.final_reward for t in kept], dtype=torch.float32)
        groups = torch.tensor([t.group for t in kept], dtype=torch.long)
        unique = torch.unique(groups)
        varied = {int(g) for g in unique if rewards[groups == g].max() - rewards[groups == g].min() > 0}
        self._kept_fraction = len(varied) / max(len(unique), 1)
        keep = [i for i, g in enumerate(groups.tolist()) if g in varied]
        return [kept[i] for i in keep], advantages[keep]

    def loss(self, backend: Backend, batch: PackedBatch, norm_tokens: int) -> tuple[Any, dict[str, Any]]:
        """The GRPO loss of one micro-batch and its (detached) diagnostics."""
        ref = None
        if self.config.kl_coef > 0:
            ref, _ = backend.token_logprobs(batch, temperature=self.pg.temperature, reference=True)
        return common.backend_policy_loss(backend, batch, norm_tokens, self.config, self.pg.temperature, ref)

    def update(self, backend: Backend, batch: PackedBatch | None) -> dict[str, float]:
        """``epochs`` passes of ``minibatches`` optimizer steps (``training.optimize_sequences``)."""
        info = {} if self._kept_fraction is None else {"groups_kept_fraction": self._kept_fraction}
        self._kept_fraction = None
        if batch is None or batch.num_policy_tokens == 0:
            return info
        info["advantage_abs_mean"] = float(batch.advantages.abs().mean())
        return self.pg.optimize(backend, batch, self.loss, info)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


@hookimpl
def register_algorithms(register):
    register("grpo", GRPO)
