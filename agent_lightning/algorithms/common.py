"""The math every policy-gradient algorithm shares, written once.

Shapes: a packed batch has ``T`` stream tokens, ``B`` sequences and ``N`` policy tokens
(``agent_lightning.loop.batch.PackedBatch``); per-token tensors here are float32 ``[N]`` in
stream order, per-sequence tensors ``[B]``.

* **Per-token rewards** (:func:`token_rewards`): the final reward on a trajectory's last
  policy token; optionally each turn's environment reward (``Turn.reward``) on that turn's
  last policy token.
* **KL to the reference** (:func:`kl`): ``ops.kl_penalty``'s estimators of
  ``KL(pi || pi_ref)`` per sampled token — ``k1 = logp - ref``,
  ``k2 = (logp - ref)^2 / 2``, ``k3 = exp(ref - logp) - (ref - logp) - 1`` (clamped).
  In the reward, ``k1`` is subtracted per token (:func:`kl_in_reward`); in the loss, the
  aggregated estimate is added.
* **Advantages**: group baselines through ``ops.group_advantages`` (:func:`group_baseline`:
  ``grpo``, ``drgrpo``, ``rloo``); discounted returns and GAE over the packed stream with
  every non-policy token (prompt, observations) masked, and batch whitening, through
  ``ops.gae`` (:func:`stream_gae`).
* **Losses**: the clipped policy surrogate (:func:`clipped_surrogate`), the clipped value
  loss (:func:`clipped_value_loss`), and the aggregation of a per-token loss to a scalar
  (:func:`aggregate`):

  - ``token-mean``: ``sum_i l_i / N`` — every token weighs the same;
  - ``seq-mean-token-mean``: ``mean_b (mean_{i in b} l_i)`` — every sequence weighs the same;
  - ``seq-mean-token-sum``: ``sum_b (sum_{i in b} l_i) / (B * norm_tokens)`` — Dr. GRPO's
    length-unbiased constant normaliser.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from agent_lightning.types import Backend, Trajectory, optional

if TYPE_CHECKING:
    import torch

    from agent_lightning.loop.batch import PackedBatch

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")


# --------------------------------------------------------------------------- rewards


def token_rewards(trajectory: Trajectory, *, step_rewards: bool = False, final: float | None = None) -> list[float]:
    """One reward per policy token of ``trajectory`` (``len == num_policy_tokens``).

    ``final_reward`` (or ``final`` when given: a baselined reward) sits on the last policy token. With ``step_rewards``, each turn's
    ``Turn.reward`` is added on that turn's last policy token (a turn that sampled no token
    passes its reward on to the next turn that did, or to the last token). Note that the
    ``env-reward`` reward already sums the step rewards into ``final_reward``: pair
    ``step_rewards`` with a reward that does not (``success``, a reward model...).
    """
    rewards = [0.0] * trajectory.num_policy_tokens
    if not rewards:
        return rewards
    if step_rewards:
        position, pending = -1, 0.0
        for turn in trajectory.turns:
            position += len(turn.action_token_ids)
            pending += turn.reward
            if turn.action_token_ids:
                rewards[position] += pending
                pending = 0.0
        rewards[-1] += pending
    rewards[-1] += trajectory.final_reward if final is None else final
    return rewards


# --------------------------------------------------------------------------- KL


def kl(logprobs: "torch.Tensor", ref_logprobs: "torch.Tensor", kind: str) -> "torch.Tensor":
    """Per-token estimate of ``KL(pi || pi_ref)`` (``ops.kl_penalty``; see module docstring).

    Args:
        logprobs: float ``[N]`` log-probs of the sampled tokens under the policy.
        ref_logprobs: float ``[N]`` the same under the reference.
        kind: ``"k1"``, ``"k2"`` or ``"k3"``.
    """
    from agent_lightning import ops

    return ops.kl_penalty(logprobs, ref_logprobs.to(logprobs.device), kind=kind)


def kl_in_reward(rewards: "torch.Tensor", logprobs: "torch.Tensor", ref_logprobs: "torch.Tensor",
                 coef: float) -> "tuple[torch.Tensor, torch.Tensor]":
    """``rewards - coef * k1`` per token, and the ``k1`` estimate itself (both ``[N]``)."""
    k1 = kl(logprobs, ref_logprobs, "k1")
    return rewards - coef * k1, k1


# --------------------------------------------------------------------------- advantages


def group_baseline(scores: "torch.Tensor", groups: "torch.Tensor", mode: str, eps: float = 1e-6) -> "torch.Tensor":
    """Sequence advantages relative to their group (``ops.group_advantages``).

    Args:
        scores: float ``[B]`` one scalar per sequence (the reward, possibly KL-penalised).
        groups: int ``[B]`` group ids (the rollouts of one task share one).
        mode: ``"grpo"`` (mean and std), ``"drgrpo"`` (mean only) or ``"rloo"``
            (leave-one-out mean: ``n / (n - 1) * (r - mean)``).
    """
    from agent_lightning import ops

    return ops.group_advantages(scores, groups, mode=mode, eps=eps)


def broadcast_to_tokens(per_sequence: "torch.Tensor", policy_cu_seqlens: "torch.Tensor") -> "torch.Tensor":
    """``[B]`` per-sequence values repeated over each sequence's policy tokens: ``[N]``."""
    import torch

    lengths = (policy_cu_seqlens[1:] - policy_cu_seqlens[:-1]).to(torch.int64).to(per_sequence.device)
    return torch.repeat_interleave(per_sequence, lengths, output_size=int(lengths.sum()))


def first_token_values(per_token: "torch.Tensor", policy_cu_seqlens: "torch.Tensor") -> "torch.Tensor":
    """The value at each sequence's first policy token (``[B]``; sequences must have one):
    recovers a per-sequence quantity that was broadcast over the tokens."""
    return per_token[policy_cu_seqlens[:-1].long().to(per_token.device)]


def stream_gae(batch: "PackedBatch", rewards: "torch.Tensor", values: "torch.Tensor | None", *,
               gamma: float, lam: float, whiten: bool) -> "tuple[torch.Tensor, torch.Tensor]":
    """Advantages and returns of the policy tokens by GAE over the packed stream.

    The ``[N]`` rewards and values are scattered into the ``[T]`` stream; the prompt and
    observation tokens are masked, so ``ops.gae`` skips them (zero advantage, the recursion
    carries across them) and resets at every sequence boundary. ``values=None`` means
    ``V = 0``: with ``lam = 1`` the advantage is then the discounted return-to-go
    ``sum_{s >= t} gamma^(s - t) r_s`` (REINFORCE). ``whiten`` whitens the advantages over
    all policy tokens of the batch (returns are taken before whitening).

    Returns:
        ``(advantages [N], returns [N])`` float32, on ``rewards``' device.
    """
    import torch

    from agent_lightning import ops

    device = rewards.device
    total = batch.input_ids.numel()
    index = batch.policy_index.to(device)
    stream_rewards = torch.zeros(total, device=device).index_copy_(0, index, rewards.float())
    stream_values = torch.zeros(total, device=device)
    if values is not None:
        stream_values.index_copy_(0, index, values.float().to(device))
    mask = torch.zeros(total, dtype=torch.bool, device=device).index_fill_(0, index, True)
    adv, ret = ops.gae(stream_rewards, stream_values, mask, gamma=gamma, lam=lam,
                       cu_seqlens=batch.cu_seqlens.to(device), whiten=whiten)
    return adv.index_select(0, index), ret.index_select(0, index)


# --------------------------------------------------------------------------- losses


def clipped_surrogate(logprobs: "torch.Tensor", old_logprobs: "torch.Tensor", advantages: "torch.Tensor",
                      clip_low: float, clip_high: float,
                      is_weights: "torch.Tensor | None" = None) -> "tuple[torch.Tensor, torch.Tensor, torch.Tensor]":
    """The PPO policy loss per token::

        ratio = exp(logp - logp_old)
        pg    = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A) * w

    ``w`` is ``is_weights`` (``batch.extras["is_weights"]``, set by ``agent_lightning.loop.replay``
    for replayed tokens: truncated ``pi_old / pi_behaviour``), else 1.

    Returns:
        ``(pg [N], ratio [N], clipped ratio [N])``; ``pg`` is differentiable w.r.t. ``logprobs``.
    """
    import torch

    ratio = torch.exp(logprobs - old_logprobs)
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    pg = -torch.minimum(ratio * advantages, clipped * advantages)
    if is_weights is not None:
        pg = pg * is_weights.to(pg.device)
    return pg, ratio, clipped


def clip_fraction(ratio: "torch.Tensor", clipped: "torch.Tensor") -> "torch.Tensor":
    """Share of tokens whose ratio lies outside the clip range (detached scalar)."""
    return ((ratio.detach() - clipped.detach()).abs() > 1e-6).float().mean()


def clipped_value_loss(values: "torch.Tensor", old_values: "torch.Tensor", returns: "torch.Tensor",
                       clip: float | None) -> "torch.Tensor":
    """The PPO value loss per token::

        v_clip = v_old + clip(v - v_old, -clip, clip)
        loss   = 0.5 * max((v - R)^2, (v_clip - R)^2)

    ``clip=None`` gives the plain ``0.5 * (v - R)^2``. All ``[N]``; differentiable w.r.t. ``values``.
    """
    import torch

    plain = (values - returns).square()
    if clip is None:
        return 0.5 * plain
    v_clip = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum(plain, (v_clip - returns).square())


def aggregate(per_token: "torch.Tensor", policy_cu_seqlens: "torch.Tensor", mode: str,
              norm_tokens: int) -> "torch.Tensor":
    """Reduce a ``[N]`` per-token loss to a scalar by ``mode`` (see module docstring).

    Args:
        per_token: float ``[N]``.
        policy_cu_seqlens: int32 ``[B + 1]`` offsets of each sequence's policy tokens.
        mode: One of :data:`AGGREGATIONS`.
        norm_tokens: The constant divisor of ``seq-mean-token-sum`` (ignored otherwise).
    """
    from agent_lightning import ops

    if mode == "token-mean":
        return per_token.sum() / max(1, per_token.numel())
    if mode == "seq-mean-token-mean":
        return ops.segment_mean(per_token, policy_cu_seqlens).mean()
    if mode == "seq-mean-token-sum":
        sums = ops.segment_sum(per_token, policy_cu_seqlens)
        return sums.sum() / (max(1, sums.numel()) * max(1, norm_tokens))
    raise ValueError(f"aggregate: unknown mode {mode!r}; allowed: {', '.join(AGGREGATIONS)}")


def microbatch_share(mode: str, micro_sequences: int, micro_tokens: int, minibatch_sequences: int,
                     minibatch_tokens: int) -> float:
    """A micro-batch's weight in its minibatch's loss, so that gradients accumulated over
    micro-batches equal those of the whole minibatch at once (tokens for ``token-mean``,
    sequences for the per-sequence modes)."""
    if mode == "token-mean":
        return micro_tokens / max(1, minibatch_tokens)
    return micro_sequences / max(1, minibatch_sequences)


def policy_loss(logprobs: "torch.Tensor", entropy: "torch.Tensor", batch: "PackedBatch", norm_tokens: int,
                options: Any, ref_logprobs: "torch.Tensor | None" = None) -> "tuple[torch.Tensor, dict[str, Any]]":
    """The clipped-surrogate loss of one micro-batch, with its entropy bonus and KL term.

    ``aggregate(pg) - entropy_coef * aggregate(H) + kl_coef * aggregate(KL_est(logp, ref))``,
    the KL term only when ``ref_logprobs`` is given (estimator ``options.kl_estimator``).

    Args:
        logprobs, entropy: float ``[N]`` from the policy's forward (``logprobs`` with grad).
        batch: The micro-batch (its ``sampling_logprobs`` are the old log-probs and its
            ``advantages`` the ``A`` of the surrogate).
        options: ``clip_low``, ``clip_high``, ``loss_aggregation``, ``entropy_coef``,
            ``kl_coef``, ``kl_estimator`` (``training.PolicyGradientOptions``).

    Returns:
        ``(loss, stats)``: the scalar loss and detached diagnostics (``pg_loss``, ``entropy``,
        ``ratio_mean``, ``clip_fraction``, ``sampler_logprob_diff``, ``kl``).
    """
    device = logprobs.device
    old = batch.sampling_logprobs.to(device)
    pg, ratio, clipped = clipped_surrogate(logprobs, old, batch.advantages.to(device),
                                           options.clip_low, options.clip_high, batch.extras.get("is_weights"))
    cu = batch.policy_cu_seqlens.to(device)
    mode = options.loss_aggregation
    loss = aggregate(pg, cu, mode, norm_tokens)
    stats = {
        "pg_loss": loss.detach(),
        "entropy": entropy.detach().mean(),
        "ratio_mean": ratio.detach().mean(),
        "clip_fraction": clip_fraction(ratio, clipped),
        "sampler_logprob_diff": (logprobs.detach() - old).abs().mean(),
    }
    if options.entropy_coef:
        loss = loss - options.entropy_coef * aggregate(entropy, cu, mode, norm_tokens)
    if ref_logprobs is not None:
        kl_term = aggregate(kl(logprobs, ref_logprobs, options.kl_estimator), cu, mode, norm_tokens)
        loss = loss + options.kl_coef * kl_term
        stats["kl"] = kl_term.detach()
    return loss, stats


def backend_policy_loss(backend: Backend, batch: "PackedBatch", norm_tokens: int, options: Any, temperature: float,
                        ref_logprobs: "torch.Tensor | None" = None) -> "tuple[torch.Tensor, dict[str, Any]]":
    """:func:`policy_loss` over the policy's log-probs of ``batch`` at ``temperature``.

    Through the backend's optional ``token_loss`` when it has one (the loss is row-separable,
    so its gradient is taken in the forward sweep: one lm-head matmul fewer), else
    ``token_logprobs`` and autograd. Same loss, gradients and diagnostics either way.
    """
    token_loss = optional(backend, Backend, "token_loss")
    if token_loss is None:
        logp, entropy = backend.token_logprobs(batch, temperature=temperature, with_entropy=True)
        return policy_loss(logp, entropy, batch, norm_tokens, options, ref_logprobs)

    def loss_of(logp: "torch.Tensor", entropy: "torch.Tensor | None") -> "torch.Tensor":
        return policy_loss(logp, entropy, batch, norm_tokens, options, ref_logprobs)[0]

    loss, logp, entropy = token_loss(batch, loss_of, temperature=temperature, with_entropy=True)
    return loss, policy_loss(logp, entropy, batch, norm_tokens, options, ref_logprobs)[1]


def healthy(trajectories: Sequence[Trajectory]) -> list[Trajectory]:
    """The trajectories to train on: not failed, with at least one policy token."""
    return [t for t in trajectories if t.failure is None and t.num_policy_tokens > 0]
