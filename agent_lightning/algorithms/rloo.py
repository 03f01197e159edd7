"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al., 2024).

Each task is played ``group_size = k >= 2`` times. Rollout ``i``'s score is its final
reward, minus ``kl_coef * sum_t k1_t`` (the sequence's KL to the reference,
``k1 = logp_sampled - logp_ref``) when ``kl_mode`` is ``reward``. Its advantage is its
score minus the mean score of the *other* rollouts of its group::

    A_i = s_i - 1/(k - 1) * sum_{j != i} s_j  =  k / (k - 1) * (s_i - mean_group(s))

(``ops.group_advantages`` mode ``rloo``; a group of one has no baseline: ``A = 0``),
broadcast to every policy token of the rollout. The loss per token is the clipped
surrogate (with one epoch of one minibatch the ratio is 1 and this is the plain
REINFORCE gradient ``-A * grad log pi``), aggregated, ``- entropy_coef * H``, and
``+ kl_coef * KL_est`` when ``kl_mode`` is ``loss``. No critic.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping, Sequence

from pydantic import Field

from agent_lightning.algorithms import common, credit, training
from agent_lightning.algorithms.training import PolicyGradientOptions
from agent_lightning.hookspecs import hookimpl
from agent_lightning.loop.batch import PackedBatch, pack_trajectories
from agent_lightning.types import Backend, Trajectory


class RLOOConfig(PolicyGradientOptions):
    """RLOO hyper-parameters (the ``algorithm`` section); the shared ones are documented in
    ``agent_lightning.algorithms.training.PolicyGradientOptions``."""

    group_size: int = Field(4, ge=2, description="rollouts per task (the leave-one-out group)")
    kl_mode: Literal["reward", "loss"] = "reward"


class RLOO:
    """REINFORCE leave-one-out."""

    description = "RLOO: REINFORCE with a leave-one-out group baseline, no critic"

    def __init__(self, **options: Any):
        self.pg = training.PolicyGradient(RLOOConfig, options)
        self.config: RLOOConfig = self.pg.config
        self.group_size = self.config.group_size
        self.loss = self.pg.loss  # the clipped surrogate of one micro-batch and its diagnostics

    def setup(self, backend: Backend, *, total_steps: int, temperature: float) -> None:
        """Create the optimizer; remember the sampling temperature for log-prob recomputation."""
        self.pg.setup(backend, total_steps=total_steps, temperature=temperature)

    def prepare(self, trajectories: Sequence[Trajectory]) -> PackedBatch | None:
        """Pack the healthy trajectories; their final reward and group ride along per token
        (``extras["sequence_reward"]``, ``extras["group"]``) until :meth:`advantages` scores them."""
        import torch

        kept = common.healthy(trajectories)
        if not kept:
            return None
        if credit.is_agent_batch(kept):  # agent episodes: per-call leave-one-episode-out advantages
            per_sequence = self.config.loss_aggregation != "token-mean"
            batch = pack_trajectories(kept, credit.token_advantages(kept, "rloo", per_sequence_loss=per_sequence))
            batch.extras["agent_advantages"] = batch.advantages.clone()
            return batch
        batch = pack_trajectories(kept, [[0.0] * t.num_policy_tokens for t in kept])
        batch.extras["sequence_reward"] = torch.tensor(
            [t.final_reward for t in kept for _ in range(t.num_policy_tokens)], dtype=torch.float32)
        batch.extras["group"] = torch.tensor([t.group for t in kept for _ in range(t.num_policy_tokens)],
                                             dtype=torch.long)
        return batch

    def advantages(self, backend: Backend, batch: PackedBatch) -> tuple[PackedBatch, dict[str, float]]:
        """Scores (KL-penalised) -> leave-one-out advantages, broadcast to the tokens."""
        from agent_lightning import ops

        c = self.config
        extras = dict(batch.extras)
        if "agent_advantages" in extras:  # computed by credit.token_advantages in prepare
            adv = extras.pop("agent_advantages")
            if c.kl_coef > 0:
                extras["ref_logprobs"] = self.pg.reference_logprobs(backend, batch).cpu()
            return dataclasses.replace(batch, advantages=adv, extras=extras), {"advantage_abs_mean": float(adv.abs().mean())}
        pcu = batch.policy_cu_seqlens
        scores = common.first_token_values(extras["sequence_reward"], pcu)
        groups = common.first_token_values(extras["group"], pcu)
        info: dict[str, float] = {}
        if c.kl_coef > 0:
            ref = self.pg.reference_logprobs(backend, batch).cpu()
            extras["ref_logprobs"] = ref
            if c.kl_mode == "reward":
                sequence_kl = ops.segment_sum(common.kl(batch.sampling_logprobs, ref, "k1"), pcu)
                scores = scores - c.kl_coef * sequence_kl
                info["kl_reward"] = float(sequence_kl.mean())
        per_sequence = common.group_baseline(scores, groups, "rloo")
        adv = common.broadcast_to_tokens(per_sequence, pcu)
        info["advantage_abs_mean"] = float(adv.abs().mean())
        return dataclasses.replace(batch, advantages=adv, extras=extras), info

    def update(self, backend: Backend, batch: PackedBatch | None) -> dict[str, float]:
        """Leave-one-out advantages, then ``epochs`` x ``minibatches`` optimizer steps of the clipped surrogate
        (``training.PolicyGradient.loss``: KL to the reference in the loss with ``kl_mode: loss``)."""
        return self.pg.update(backend, batch, self.advantages)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


@hookimpl
def register_algorithms(register):
    register("rloo", RLOO)
