"""PPO with a learned critic and GAE over the multi-turn token stream.

Per step:

1. **Rewards per policy token** (``common.token_rewards``): the final reward on the last
   policy token; with ``step_rewards``, each turn's environment reward on that turn's
   last policy token.
2. **KL to the frozen reference** (when ``kl_coef > 0``), ``kl_mode``:
   ``reward`` subtracts ``kl_coef * k1`` from every token's reward
   (``k1 = logp_sampled - logp_ref``); ``loss`` adds ``kl_coef * KL_est`` to the loss
   (``kl_estimator``, default ``k3``).
3. **Values** ``V_t`` of every policy token's context, before any update (no gradient):
   a linear value head on the policy's final hidden states (``critic: head``, a shared
   trunk), or a separate copy of the initial policy with its own head
   (``critic: separate``).
4. **GAE** (``ops.gae`` over the packed stream; prompt and observation tokens masked, so
   the recursion skips the environment's tokens and carries across turns)::

       delta_t = r_t + gamma * V_t' - V_t          (t' the next policy token)
       A_t     = delta_t + gamma * lam * A_t'      R_t = A_t + V_t

   then ``A`` is whitened over the batch's policy tokens (``whiten_advantages``).
5. **Updates**: ``epochs`` passes over ``minibatches`` (reshuffled each pass) of::

       loss = agg(-min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A))
            + value_coef * agg(0.5 * max((V - R)^2, (V_old + clip(V - V_old, +-value_clip) - R)^2))
            - entropy_coef * agg(H) [+ kl_coef * agg(KL_est)]

The head (and the separate critic) are AdamW param groups of the backend's optimizer
(``critic_lr``), clipped on their own, and saved in checkpoints through ``state_dict``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping, Sequence

from pydantic import Field

from agent_lightning.algorithms import common, training
from agent_lightning.algorithms.training import PolicyGradientOptions
from agent_lightning.config import ConfigError
from agent_lightning.hookspecs import hookimpl
from agent_lightning.loop.batch import PackedBatch, pack_trajectories
from agent_lightning.types import Backend, Trajectory, optional


class PPOConfig(PolicyGradientOptions):
    """PPO hyper-parameters (the ``algorithm`` section); the shared ones are documented in
    ``agent_lightning.algorithms.training.PolicyGradientOptions``."""

    group_size: int = Field(1, ge=1, description="rollouts per task (PPO needs no groups)")
    critic: Literal["head", "separate"] = "head"
    critic_lr: float | None = Field(None, gt=0, description="learning rate of the head / critic; null: lr")
    value_coef: float = Field(0.5, ge=0)
    value_clip: float | None = Field(0.2, gt=0, description="clip of V - V_old in the value loss; null: unclipped")
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    whiten_advantages: bool = True
    kl_mode: Literal["reward", "loss"] = "reward"
    step_rewards: bool = Field(False, description="also put each turn's environment reward on its last token")
    epochs: int = Field(2, ge=1, description="passes over each step's rollouts")
    minibatches: int = Field(4, ge=1, description="optimizer steps per pass")
    shuffle: bool = True


class PPO:
    """Proximal policy optimisation with a value head or a separate critic."""

    description = "PPO: value head or separate critic, GAE over masked multi-turn streams, KL in reward or loss"

    def __init__(self, **options: Any):
        self.pg = training.PolicyGradient(PPOConfig, options)
        self.config: PPOConfig = self.pg.config
        self.group_size = self.config.group_size
        self.value_head: Any = None
        self.critic_model: Any = None

    # ------------------------------------------------------------------ setup

    def setup(self, backend: Backend, *, total_steps: int, temperature: float) -> None:
        """Build the value head (and critic), then the optimizer with them as extra groups."""
        import torch

        from agent_lightning.backends.transformers import modeling

        c = self.config
        model = optional(backend, Backend, "model")
        if model is None:
            raise ConfigError(f"algorithm: ppo's value head reads the policy's hidden states, which needs a "
                              f"transformers-style backend (with .model); backend {type(backend).__name__} has none")
        head_weight = modeling.lm_head(model)[0]
        hidden_size, device = head_weight.shape[1], head_weight.device
        self.value_head = torch.nn.Linear(hidden_size, 1, dtype=torch.float32, device=device)
        # A zero head predicts V = 0 at first (the return is unknown); its gradient is not zero.
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        params = list(self.value_head.parameters())
        if c.critic == "separate":
            import copy

            self.critic_model = copy.deepcopy(model)
            params += [p for p in self.critic_model.parameters() if p.requires_grad]
        group = {"params": params, "name": "critic" if self.critic_model is not None else "value_head"}
        if c.critic_lr is not None:
            group["lr"] = c.critic_lr
        self.pg.setup(backend, total_steps=total_steps, temperature=temperature, extra_param_groups=(group,))

    # ------------------------------------------------------------------ rollouts -> batch

    def prepare(self, trajectories: Sequence[Trajectory]) -> PackedBatch | None:
        """Pack the healthy trajectories with their per-token rewards (``extras["token_rewards"]``);
        the advantages need the critic: :meth:`update` computes them (:meth:`advantages`)."""
        import torch

        kept = common.healthy(trajectories)
        if not kept:
            return None
        batch = pack_trajectories(kept, [[0.0] * t.num_policy_tokens for t in kept])
        # Agent episodes with per-call rewards (policy endpoint): each call's reward on its last token.
        rewards = [r for t in kept for r in common.token_rewards(
            t, step_rewards=self.config.step_rewards or bool(t.info.get("call_rewards")))]
        batch.extras["token_rewards"] = torch.tensor(rewards, dtype=torch.float32)
        return batch

    def values(self, backend: Backend, batch: PackedBatch, hidden: Any = None) -> Any:
        """``V`` of each policy token's context: float32 ``[N]``. ``hidden`` (``[N, H]``, the
        policy's, from the same forward) saves a pass when the critic is the head."""
        from agent_lightning.backends.transformers.shared_prompts import policy_hidden_states

        if self.critic_model is not None:
            hidden = policy_hidden_states(self.critic_model, batch, self.value_head.weight.device,
                                          share=getattr(backend, "share_prompts", True))
        elif hidden is None:
            hidden = backend.token_logprobs(batch, temperature=self.pg.temperature, with_hidden=True)[2]
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)

    def advantages(self, backend: Backend, batch: PackedBatch) -> tuple[PackedBatch, dict[str, float]]:
        """Rewards (with the KL penalty) and old values -> GAE advantages and returns.

        Returns the batch with ``advantages`` and ``extras`` ``values`` / ``returns`` (and
        ``ref_logprobs`` when ``kl_coef > 0``), plus diagnostics.
        """
        import torch

        c = self.config
        extras = dict(batch.extras)
        rewards = extras["token_rewards"]
        info: dict[str, float] = {}
        if c.kl_coef > 0:
            ref = self.pg.reference_logprobs(backend, batch)
            extras["ref_logprobs"] = ref
            if c.kl_mode == "reward":
                rewards, k1 = common.kl_in_reward(rewards, batch.sampling_logprobs, ref.cpu(), c.kl_coef)
                info["kl_reward"] = float(k1.mean())
        old_values = training.per_token_no_grad(batch, lambda micro: self.values(backend, micro),
                                                c.micro_batch_tokens).cpu()
        adv, returns = common.stream_gae(batch, rewards, old_values, gamma=c.gamma, lam=c.lam,
                                         whiten=c.whiten_advantages)
        extras["values"], extras["returns"] = old_values, returns
        if returns.numel() > 1 and float(returns.var()) > 0:
            info["explained_variance"] = float(1.0 - (returns - old_values).var() / returns.var())
        info["values_mean"] = float(old_values.mean())
        info["returns_mean"] = float(returns.mean())
        info["advantage_abs_mean"] = float(adv.abs().mean())
        return dataclasses.replace(batch, advantages=adv.to(torch.float32), extras=extras), info

    # ------------------------------------------------------------------ loss and update

    def loss(self, backend: Backend, batch: PackedBatch, norm_tokens: int) -> tuple[Any, dict[str, Any]]:
        """Policy + value (+ entropy, KL) loss of one micro-batch, and detached diagnostics."""
        c = self.config
        head_only = self.critic_model is None
        out = backend.token_logprobs(batch, temperature=self.pg.temperature, with_entropy=True, with_hidden=head_only)
        logp, entropy = out[0], out[1]
        ref = batch.extras["ref_logprobs"].to(logp.device) if c.kl_coef > 0 and c.kl_mode == "loss" else None
        loss, stats = common.policy_loss(logp, entropy, batch, norm_tokens, c, ref)
        values = self.values(backend, batch, out[2] if head_only else None)
        device = values.device
        old_values, returns = batch.extras["values"].to(device), batch.extras["returns"].to(device)
        per_token = common.clipped_value_loss(values, old_values, returns, c.value_clip)
        value_loss = common.aggregate(per_token, batch.policy_cu_seqlens.to(device), c.loss_aggregation, norm_tokens)
        stats["value_loss"] = value_loss.detach()
        if c.value_clip is not None:
            stats["value_clip_fraction"] = ((values.detach() - old_values).abs() > c.value_clip).float().mean()
        return loss + c.value_coef * value_loss.to(loss.device), stats

    def update(self, backend: Backend, batch: PackedBatch | None) -> dict[str, float]:
        """GAE advantages from the critic, then ``epochs`` x ``minibatches`` optimizer steps."""
        if batch is None or batch.num_policy_tokens == 0:
            return {}
        if self.critic_model is not None:
            self.critic_model.train(True)
        batch, info = self.advantages(backend, batch)
        return self.pg.optimize(backend, batch, self.loss, info)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The value head's (and the separate critic's trainable) weights, as CPU tensors."""
        state: dict[str, Any] = {"value_head": {k: v.detach().cpu().clone() for k, v in self.value_head.state_dict().items()}}
        if self.critic_model is not None:
            state["critic"] = {name: p.detach().cpu().clone() for name, p in self.critic_model.named_parameters()
                               if p.requires_grad}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s weights in place (the optimizer keeps pointing at them)."""
        import torch

        if "value_head" not in state:
            raise ValueError("ppo: the checkpoint has no value head (was it written by another algorithm?)")
        self.value_head.load_state_dict(dict(state["value_head"]))
        if self.critic_model is None:
            if "critic" in state:
                raise ValueError("ppo: the checkpoint holds a separate critic but algorithm.critic is 'head'")
            return
        if "critic" not in state:
            raise ValueError("ppo: the checkpoint has no separate critic but algorithm.critic is 'separate'")
        params = {name: p for name, p in self.critic_model.named_parameters() if p.requires_grad}
        saved = dict(state["critic"])
        if set(saved) != set(params):
            missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
            raise ValueError(f"ppo: critic weights do not match (missing {missing[:3]}, unexpected {unexpected[:3]})")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved[name])


@hookimpl
def register_algorithms(register):
    register("ppo", PPO)
