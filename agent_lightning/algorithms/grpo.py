"""GRPO: group-relative policy optimisation (with Dr. GRPO as an advantage mode).

Per step: each task is played ``group_size`` times; a trajectory's advantage is its
reward relative to its group (``ops.group_advantages``: std-normalised ``grpo`` or
mean-only ``drgrpo``), broadcast to its policy tokens. The loss per policy token is the
clipped surrogate

    ratio = exp(logp - logp_sampled)
    pg    = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)

aggregated over tokens (``token-mean``), per sequence then over sequences
(``seq-mean-token-mean``), or as per-sequence sums over a constant (``seq-mean-token-sum``,
Dr. GRPO), plus ``kl_coef * KL(policy || reference)`` (k1 or k3, clamped) when
``kl_coef > 0`` (a coefficient of 0 loads no reference model) and ``-entropy_coef * H``.
Log-probs come from ``ops.token_logprobs`` on the final hidden states (fused path).
Failed episodes are left out of both the group statistics and the loss.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from agent_lightning.batch import PackedBatch, pack_trajectories
from agent_lightning.config import parse_options
from agent_lightning.hookspecs import hookimpl
from agent_lightning.types import Trajectory


class GRPOConfig(BaseModel):
    """GRPO hyper-parameters (the ``algorithm`` section of the config)."""

    model_config = ConfigDict(extra="forbid")

    group_size: int = Field(8, ge=1, description="rollouts per task")
    advantage: Literal["grpo", "drgrpo"] = "grpo"
    advantage_eps: float = Field(1e-6, gt=0)
    clip_low: float = Field(0.2, ge=0)
    clip_high: float = Field(0.28, ge=0)
    loss_aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] = "token-mean"
    loss_norm_tokens: int = Field(0, ge=0, description="seq-mean-token-sum divisor; 0: longest sequence's policy tokens")
    kl_coef: float = Field(0.0, ge=0)
    kl_estimator: Literal["k1", "k3"] = "k3"
    entropy_coef: float = 0.0
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    max_grad_norm: float = Field(1.0, ge=0)
    epochs: int = Field(1, ge=1, description="passes over each step's rollouts")
    minibatches: int = Field(1, ge=1, description="optimizer steps per pass")
    micro_batch_tokens: int = Field(16384, ge=1, description="token budget per forward/backward")


def aggregate(per_token: Any, policy_cu_seqlens: Any, mode: str, norm_tokens: int) -> Any:
    """Reduce a ``[N]`` per-token loss to a scalar by ``mode`` (see module docstring)."""
    from agent_lightning import ops

    if mode == "token-mean":
        return per_token.sum() / max(1, per_token.numel())
    if mode == "seq-mean-token-mean":
        return ops.segment_mean(per_token, policy_cu_seqlens).mean()
    sums = ops.segment_sum(per_token, policy_cu_seqlens)
    return sums.sum() / (max(1, sums.numel()) * max(1, norm_tokens))


class GRPO:
    """Group-relative policy optimisation."""

    description = "GRPO / Dr. GRPO with clipped ratios, optional KL to a frozen reference"

    def __init__(self, **options: Any):
        self.config: GRPOConfig = parse_options(GRPOConfig, "algorithm", options)
        self.group_size = self.config.group_size
        self.temperature = 1.0

    def setup(self, backend: Any, *, total_steps: int, temperature: float) -> None:
        """Create the optimizer; remember the sampling temperature for log-prob recomputation."""
        c = self.config
        self.temperature = temperature
        backend.configure_optimizer(lr=c.lr, weight_decay=c.weight_decay, betas=c.betas,
                                    warmup_steps=c.warmup_steps, total_steps=total_steps, schedule=c.schedule)

    def prepare(self, trajectories: Sequence[Trajectory]) -> PackedBatch | None:
        """Group advantages of the healthy trajectories, packed; ``None`` if none is healthy."""
        import torch

        from agent_lightning import ops

        healthy = [t for t in trajectories if t.failure is None and t.num_policy_tokens > 0]
        if not healthy:
            return None
        rewards = torch.tensor([t.final_reward for t in healthy], dtype=torch.float32)
        groups = torch.tensor([t.group for t in healthy], dtype=torch.long)
        advantages = ops.group_advantages(rewards, groups, mode=self.config.advantage, eps=self.config.advantage_eps)
        per_token = [[float(a)] * t.num_policy_tokens for t, a in zip(healthy, advantages)]
        return pack_trajectories(healthy, per_token)

    def loss(self, backend: Any, batch: PackedBatch, norm_tokens: int) -> tuple[Any, dict[str, Any]]:
        """The GRPO loss of one micro-batch and its (detached) diagnostics."""
        import torch

        from agent_lightning import ops

        c = self.config
        logp, entropy = backend.token_logprobs(batch, temperature=self.temperature, with_entropy=True)
        old = batch.sampling_logprobs.to(logp.device)
        adv = batch.advantages.to(logp.device)
        ratio = torch.exp(logp - old)
        clipped = ratio.clamp(1.0 - c.clip_low, 1.0 + c.clip_high)
        pg = -torch.minimum(ratio * adv, clipped * adv)
        cu = batch.policy_cu_seqlens.to(logp.device)
        loss = aggregate(pg, cu, c.loss_aggregation, norm_tokens)
        stats = {
            "pg_loss": loss.detach(),
            "entropy": entropy.detach().mean(),
            "ratio_mean": ratio.detach().mean(),
            "clip_fraction": ((ratio.detach() - clipped.detach()).abs() > 1e-6).float().mean(),
            "sampler_logprob_diff": (logp.detach() - old).abs().mean(),
        }
        if c.entropy_coef:
            loss = loss - c.entropy_coef * aggregate(entropy, cu, c.loss_aggregation, norm_tokens)
        if c.kl_coef > 0:
            ref, _ = backend.token_logprobs(batch, temperature=self.temperature, reference=True)
            kl = ops.kl_penalty(logp, ref.to(logp.device), kind=c.kl_estimator)
            kl_term = aggregate(kl, cu, c.loss_aggregation, norm_tokens)
            loss = loss + c.kl_coef * kl_term
            stats["kl"] = kl_term.detach()
        return loss, stats

    def update(self, backend: Any, batch: PackedBatch | None) -> dict[str, float]:
        """``epochs`` passes of ``minibatches`` optimizer steps, gradient-accumulated over
        micro-batches that fit ``micro_batch_tokens``."""
        import torch

        from agent_lightning import ops

        c = self.config
        if batch is None or batch.num_policy_tokens == 0:
            return {}
        lengths = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).tolist()
        policy_lengths = (batch.policy_cu_seqlens[1:] - batch.policy_cu_seqlens[:-1]).tolist()
        norm_tokens = c.loss_norm_tokens or max(policy_lengths)
        order = list(range(batch.num_sequences))
        totals: dict[str, float] = {}
        count = 0
        backend.train_mode(True)
        for _epoch in range(c.epochs):
            for mb in range(c.minibatches):
                rows = order[mb::c.minibatches]
                if not rows:
                    continue
                mb_tokens = sum(policy_lengths[r] for r in rows)
                for micro_rows in ops.partition_microbatches([lengths[r] for r in rows], c.micro_batch_tokens):
                    micro = batch.select([rows[i] for i in micro_rows])
                    loss, stats = self.loss(backend, micro, norm_tokens)
                    share = self._share(micro, len(rows), mb_tokens)
                    (loss * share).backward()
                    for key, value in stats.items():
                        totals[key] = totals.get(key, 0.0) + float(value) * share
                for key, value in backend.optimizer_step(c.max_grad_norm).items():
                    totals[key] = totals.get(key, 0.0) + value
                count += 1
        metrics = {key: value / count for key, value in totals.items()}
        metrics["advantage_abs_mean"] = float(batch.advantages.abs().mean())
        metrics["policy_tokens"] = float(batch.num_policy_tokens)
        return metrics

    def _share(self, micro: PackedBatch, minibatch_seqs: int, minibatch_tokens: int) -> float:
        """The micro-batch's weight in its minibatch's loss, so that accumulated gradients
        equal those of the whole minibatch at once."""
        if self.config.loss_aggregation == "token-mean":
            return micro.num_policy_tokens / max(1, minibatch_tokens)
        return micro.num_sequences / max(1, minibatch_seqs)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


@hookimpl
def register_algorithms(register):
    register("grpo", GRPO)
