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
from typing import Any, Literal, Sequence

from pydantic import Field

from agent_lightning.algorithms import common, training
from agent_lightning.algorithms.training import PolicyGradientOptions
from agent_lightning.batch import PackedBatch, pack_trajectories
from agent_lightning.hookspecs import hookimpl
from agent_lightning.types import Trajectory


class ReinforcePPConfig(PolicyGradientOptions):
    """REINFORCE++ hyper-parameters (the ``algorithm`` section); the shared ones are
    documented in ``agent_lightning.algorithms.training.PolicyGradientOptions``."""

    group_size: int = Field(1, ge=1, description="rollouts per task")
    baseline: Literal["none", "group-mean"] = "none"
    gamma: float = Field(1.0, ge=0, le=1)
    kl_coef: float = Field(0.01, ge=0)
    kl_mode: Literal["reward", "loss"] = "reward"
    step_rewards: bool = Field(False, description="also put each turn's environment reward on its last token")


class ReinforcePP(training.CriticFreeAlgorithm):
    """REINFORCE++ (global advantage normalisation, KL in the reward)."""

    description = "REINFORCE++: return-to-go, global batch whitening, KL in the reward, no critic"
    config_cls = ReinforcePPConfig
    config: ReinforcePPConfig

    def prepare(self, trajectories: Sequence[Trajectory]) -> PackedBatch | None:
        """Pack the healthy trajectories with their per-token rewards (``extras["token_rewards"]``)."""
        import torch

        c = self.config
        kept = common.healthy(trajectories)
        if not kept:
            return None
        finals: list[float | None] = [None] * len(kept)
        if c.baseline == "group-mean":
            rewards = torch.tensor([t.final_reward for t in kept], dtype=torch.float32)
            groups = torch.tensor([t.group for t in kept], dtype=torch.long)
            finals = common.group_baseline(rewards, groups, "drgrpo").tolist()
        per_token = [r for t, final in zip(kept, finals)
                     for r in common.token_rewards(t, step_rewards=c.step_rewards, final=final)]
        batch = pack_trajectories(kept, [[0.0] * t.num_policy_tokens for t in kept])
        batch.extras["token_rewards"] = torch.tensor(per_token, dtype=torch.float32)
        return batch

    def advantages(self, backend: Any, batch: PackedBatch) -> tuple[PackedBatch, dict[str, float]]:
        """KL-penalised token rewards -> returns-to-go -> globally whitened advantages."""
        c = self.config
        extras = dict(batch.extras)
        rewards = extras["token_rewards"]
        info: dict[str, float] = {}
        if c.kl_coef > 0:
            ref = training.reference_logprobs(backend, batch, self.temperature, c.micro_batch_tokens).cpu()
            extras["ref_logprobs"] = ref
            if c.kl_mode == "reward":
                rewards, k1 = common.kl_in_reward(rewards, batch.sampling_logprobs, ref, c.kl_coef)
                info["kl_reward"] = float(k1.mean())
        adv, returns = common.stream_gae(batch, rewards, None, gamma=c.gamma, lam=1.0, whiten=True)
        extras["returns"] = returns
        info["returns_mean"] = float(returns.mean())
        info["advantage_abs_mean"] = float(adv.abs().mean())
        return dataclasses.replace(batch, advantages=adv, extras=extras), info


@hookimpl
def register_algorithms(register):
    register("reinforce++", ReinforcePP)
