"""REINFORCE++: REINFORCE with PPO's stabilisers and no critic (Hu, 2025).

Per policy token ``t`` of a rollout::

    r_t = -kl_coef * k1_t  (+ the final reward on the last policy token,
                              + each turn's environment reward on its last token with step_rewards)
    G_t = sum_{s >= t} gamma^(s - t) * r_s        (return-to-go; observation tokens skipped)
    A_t = (G_t - mean(G)) / std(G)                (global: over every policy token of the batch)

``k1 = logp_sampled - logp_ref`` (KL in the reward; ``kl_mode: loss`` moves it to the loss
with ``kl_estimator`` instead). ``G`` is ``ops.gae`` with ``V = 0`` and ``lambda = 1`` over
the packed stream with the prompt and observation tokens masked, and the whitening is
``ops.gae``'s. ``baseline: group-mean`` (REINFORCE++-baseline, for ``group_size > 1``)
first subtracts the group's mean final reward from each final reward. The loss is the
clipped surrogate, aggregated, ``- entropy_coef * H``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping, Sequence

from pydantic import Field

from agent_lightning.algorithms import common, training
from agent_lightning.algorithms.training import PolicyGradientOptions
from agent_lightning.hookspecs import hookimpl
from agent_lightning.loop.batch import PackedBatch, pack_trajectories
from agent_lightning.types import Backend, Trajectory


class ReinforcePPConfig(PolicyGradientOptions):
    """REINFORCE++ hyper-parameters (the ``algorithm`` section); the shared ones are
    documented in ``agent_lightning.algorithms.training.PolicyGradientOptions``."""

    group_size: int = Field(1, ge=1, description="rollouts per task")
    baseline: Literal["none", "group-mean"] = "none"
    gamma: float = Field(1.0, ge=0, le=1)
    kl_coef: float = Field(0.01, ge=0)
    kl_mode: Literal["reward", "loss"] = "reward"
    step_rewards: bool = Field(False, description="also put each turn's environment reward on its last token")


class ReinforcePP:
    """REINFORCE++ (global advantage normalisation, KL in the reward)."""

    description = "REINFORCE++: return-to-go, global batch whitening, KL in the reward, no critic"

    def __init__(self, **options: Any):
        self.pg = training.PolicyGradient(ReinforcePPConfig, options)
        self.config: ReinforcePPConfig = self.pg.config
        self.group_size = self.config.group_size
        self.loss = self.pg.loss  # the clipped surrogate of one micro-batch and its diagnostics

    def setup(self, backend: Backend, *, total_steps: int, temperature: float) -> None:
        """Create the optimizer; remember the sampling temperature for log-prob recomputation."""
        self.pg.setup(backend, total_steps=total_steps, temperature=temperature)

    def prepare(self, trajectories: Sequence[Trajectory]) -> PackedBatch | None:
        """Pack the healthy trajectories; what :meth:`advantages` needs rides along per token:
        the final reward and group (``extras["final_reward"]``, ``extras["group"]``, repeated
        over each sequence's tokens) and, with ``step_rewards``, each turn's environment reward
        on its last token (``extras["turn_rewards"]``; zeros without). Rewards stay float64
        until :meth:`advantages` has added the final reward (one rounding to float32)."""
        import torch

        kept = common.healthy(trajectories)
        if not kept:
            return None
        batch = pack_trajectories(kept, [[0.0] * t.num_policy_tokens for t in kept])
        batch.extras["final_reward"] = torch.tensor(
            [t.final_reward for t in kept for _ in range(t.num_policy_tokens)], dtype=torch.float64)
        batch.extras["group"] = torch.tensor([t.group for t in kept for _ in range(t.num_policy_tokens)],
                                             dtype=torch.long)
        batch.extras["turn_rewards"] = torch.tensor(
            [r for t in kept for r in common.token_rewards(t, step_rewards=self.config.step_rewards, final=0.0)],
            dtype=torch.float64)
        return batch

    def advantages(self, backend: Backend, batch: PackedBatch) -> tuple[PackedBatch, dict[str, float]]:
        """Per-token rewards (final reward, baselined, on the last token; turn rewards; KL
        penalty) -> returns-to-go -> globally whitened advantages."""
        c = self.config
        extras = dict(batch.extras)
        pcu = batch.policy_cu_seqlens
        finals = common.first_token_values(extras["final_reward"], pcu)
        if c.baseline == "group-mean":
            groups = common.first_token_values(extras["group"], pcu)
            finals = common.group_baseline(finals.float(), groups, "drgrpo").double()
        rewards = extras["turn_rewards"].index_add(0, pcu[1:].long() - 1, finals).float()
        extras["token_rewards"] = rewards
        info: dict[str, float] = {}
        if c.kl_coef > 0:
            ref = self.pg.reference_logprobs(backend, batch).cpu()
            extras["ref_logprobs"] = ref
            if c.kl_mode == "reward":
                rewards, k1 = common.kl_in_reward(rewards, batch.sampling_logprobs, ref, c.kl_coef)
                info["kl_reward"] = float(k1.mean())
        adv, returns = common.stream_gae(batch, rewards, None, gamma=c.gamma, lam=1.0, whiten=True)
        extras["returns"] = returns
        info["returns_mean"] = float(returns.mean())
        info["advantage_abs_mean"] = float(adv.abs().mean())
        return dataclasses.replace(batch, advantages=adv, extras=extras), info

    def update(self, backend: Backend, batch: PackedBatch | None) -> dict[str, float]:
        """Return-to-go advantages, then ``epochs`` x ``minibatches`` optimizer steps of the clipped surrogate
        (``training.PolicyGradient.loss``: KL to the reference in the loss with ``kl_mode: loss``)."""
        return self.pg.update(backend, batch, self.advantages)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


@hookimpl
def register_algorithms(register):
    register("reinforce++", ReinforcePP)
