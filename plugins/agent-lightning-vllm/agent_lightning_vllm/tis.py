"""Truncated importance sampling (TIS) for sampler/trainer log-prob mismatch.

vLLM samples with its own kernels (and possibly another precision), so the probability it
reports for a sampled token, ``pi_sampler``, differs from what the trainer computes for
the very same weights, ``pi_old``. The clipped PPO/GRPO ratio must be anchored to the
trainer's numbers, and the gap corrected by a truncated importance weight
(decoupled objective, as in "Your efficient RL framework secretly brings you off-policy
RL training", Yao et al. 2025):

    ratio = pi_theta / pi_old                       # clipped as usual
    w     = min(pi_old / pi_sampler, cap)           # per token, no gradient
    loss  = w * clipped_surrogate(ratio, A)

``correct_batch`` does this to a packed batch: ``sampling_logprobs`` become the trainer's
``pi_old`` log-probs and ``extras["is_weights"]`` is multiplied by ``w`` (the loss of
every built-in policy-gradient algorithm multiplies by it; replay's weights compose).
The mismatch is reported as ``rollout/logprob_mismatch`` (mean |log pi_old - log
pi_sampler| over policy tokens), with ``rollout/tis_weight_mean`` and
``rollout/tis_truncated_fraction``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable


def truncated_weights(trainer_logprobs: Any, sampler_logprobs: Any, cap: float) -> tuple[Any, Any]:
    """``(w, truncated)``: ``w = min(exp(trainer - sampler), cap)`` per token.

    Args:
        trainer_logprobs: float ``[N]``, log pi_old of the sampled tokens (trainer numerics).
        sampler_logprobs: float ``[N]``, log pi_sampler reported by the sampler.
        cap: The truncation ``C > 0``.

    Returns:
        ``w`` float32 ``[N]`` in ``(0, cap]`` and ``truncated`` bool ``[N]`` (where ``w`` hit ``cap``).
    """
    import torch

    if cap <= 0:
        raise ValueError(f"backend.options.tis_cap must be > 0, got {cap}")
    log_ratio = trainer_logprobs.float() - sampler_logprobs.float()
    raw = torch.exp(log_ratio.clamp(max=80.0))  # exp(80) is finite in float32; any cap is below it
    truncated = raw > cap
    return raw.clamp(max=cap), truncated


def mismatch_metrics(trainer_logprobs: Any, sampler_logprobs: Any, weights: Any, truncated: Any) -> dict[str, float]:
    """The metrics named in the module docstring (all ``0.0`` for an empty batch)."""
    if trainer_logprobs.numel() == 0:
        return {"rollout/logprob_mismatch": 0.0, "rollout/tis_weight_mean": 0.0, "rollout/tis_truncated_fraction": 0.0}
    diff = (trainer_logprobs.float() - sampler_logprobs.float()).abs()
    return {
        "rollout/logprob_mismatch": float(diff.mean()),
        "rollout/logprob_mismatch_max": float(diff.max()),
        "rollout/tis_weight_mean": float(weights.mean()),
        "rollout/tis_truncated_fraction": float(truncated.float().mean()),
    }


def correct_batch(batch: Any, trainer_logprobs: Callable[[Any], Any], cap: float) -> tuple[Any, dict[str, float]]:
    """Anchor a packed batch to the trainer's log-probs and attach TIS weights.

    Args:
        batch: ``agent_lightning.loop.batch.PackedBatch`` (anything else passes through).
        trainer_logprobs: ``batch -> [N]`` float32 log-probs of its policy tokens under the
            policy that sampled them, computed by the trainer without gradient.
        cap: Truncation of the weights.

    Returns:
        ``(batch, metrics)``; the new batch has ``sampling_logprobs = trainer_logprobs``,
        ``extras["sampler_logprobs"]`` (what the sampler reported) and
        ``extras["is_weights"] = previous weights (or 1) * w``.
    """
    if batch is None or not hasattr(batch, "policy_cu_seqlens"):
        return batch, {}
    sampler = batch.sampling_logprobs.detach().cpu().float()
    trainer = trainer_logprobs(batch).detach().cpu().float()
    if trainer.shape != sampler.shape:
        raise ValueError(f"trainer log-probs have shape {tuple(trainer.shape)}, the batch's policy tokens {tuple(sampler.shape)}")
    weights, truncated = truncated_weights(trainer, sampler, cap)
    previous = batch.extras.get("is_weights")
    combined = weights if previous is None else weights * previous.detach().cpu().float()
    extras = {**batch.extras, "is_weights": combined, "sampler_logprobs": sampler}
    corrected = dataclasses.replace(batch, sampling_logprobs=trainer.to(batch.sampling_logprobs.dtype), extras=extras)
    return corrected, mismatch_metrics(trainer, sampler, weights, truncated)


def no_grad_logprobs(backend: Any, temperature: float, micro_batch_tokens: int = 16384) -> Callable[[Any], Any]:
    """``batch -> [N]`` log-probs of the policy tokens under ``backend``'s current weights,
    without gradient, in micro-batches of at most ``micro_batch_tokens`` tokens."""

    def compute(batch: Any) -> Any:
        import torch

        from agent_lightning import ops

        lengths = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).tolist()
        pcu = batch.policy_cu_seqlens.tolist()
        out = torch.zeros(batch.num_policy_tokens, dtype=torch.float32)
        was_training = backend.model.training
        backend.train_mode(False)
        try:
            with torch.no_grad():
                for rows in ops.partition_microbatches(lengths, micro_batch_tokens):
                    logp, _ = backend.token_logprobs(batch.select(rows), temperature=temperature)
                    where = torch.cat([torch.arange(pcu[r], pcu[r + 1]) for r in rows])
                    out[where] = logp.detach().float().cpu()
        finally:
            backend.train_mode(was_training)
        return out

    return compute
