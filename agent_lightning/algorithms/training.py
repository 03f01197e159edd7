"""The optimisation side every policy-gradient algorithm shares: options and the update loop.

:class:`PolicyGradientOptions` holds the options common to GRPO, PPO, RLOO and
REINFORCE++ (clipping, aggregation, KL, entropy, optimizer, epochs); each algorithm's
config subclasses it. :func:`optimize` runs ``epochs`` passes of ``minibatches`` optimizer
steps over one step's rollouts, accumulating gradients over micro-batches that fit
``micro_batch_tokens``. :func:`per_token_no_grad` runs a no-grad pass (old values,
reference log-probs) over the same micro-batches and reassembles a ``[N]`` tensor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent_lightning import distributed
from agent_lightning.algorithms.common import microbatch_share

if TYPE_CHECKING:
    import torch

    from agent_lightning.batch import PackedBatch

LossFn = Callable[[Any, "PackedBatch", int], "tuple[torch.Tensor, dict[str, Any]]"]


class OptimizerOptions(BaseModel):
    """AdamW, schedule and batching options of every gradient-based algorithm (part of the
    ``algorithm`` section); an algorithm may override a default (DPO's ``lr``)."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    max_grad_norm: float = Field(1.0, ge=0)
    epochs: int = Field(1, ge=1, description="passes over each step's data")
    minibatches: int = Field(1, ge=1, description="optimizer steps per pass")
    micro_batch_tokens: int = Field(16384, ge=1, description="token budget per forward/backward")


class PolicyGradientOptions(OptimizerOptions):
    """Options shared by the policy-gradient algorithms (part of the ``algorithm`` section)."""

    clip_low: float = Field(0.2, ge=0)
    clip_high: float = Field(0.28, ge=0)
    loss_aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] = "token-mean"
    loss_norm_tokens: int = Field(0, ge=0, description="seq-mean-token-sum divisor; 0: longest sequence's policy tokens")
    kl_coef: float = Field(0.0, ge=0)
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    entropy_coef: float = 0.0
    epochs: int = Field(1, ge=1, description="passes over each step's rollouts")
    shuffle: bool = Field(False, description="deal the sequences into minibatches in a fresh random order every epoch")


def configure_optimizer(backend: Any, options: OptimizerOptions, total_steps: int,
                        extra_param_groups: tuple[dict[str, Any], ...] = ()) -> None:
    """AdamW with the options' learning-rate schedule; ``extra_param_groups`` (a value head,
    a critic) are stepped, clipped and checkpointed with the policy."""
    kwargs: dict[str, Any] = {"extra_param_groups": extra_param_groups} if extra_param_groups else {}
    backend.configure_optimizer(lr=options.lr, weight_decay=options.weight_decay, betas=options.betas,
                                warmup_steps=options.warmup_steps, total_steps=total_steps,
                                schedule=options.schedule, **kwargs)
    if getattr(options, "kl_coef", 0) > 0 and hasattr(backend, "reference_model"):
        # Take the frozen reference now: a resume loads trained weights into the policy right
        # after setup, and a copy made lazily later would be of those, not of the start.
        backend.reference_model()


def norm_tokens(batch: "PackedBatch", options: PolicyGradientOptions) -> int:
    """The ``seq-mean-token-sum`` divisor: the option, else the longest sequence's policy tokens."""
    lengths = (batch.policy_cu_seqlens[1:] - batch.policy_cu_seqlens[:-1]).tolist()
    return options.loss_norm_tokens or max(lengths)


class UpdateTally:
    """One step's optimizer updates, with the non-finite guard.

    :meth:`step` applies an update unless a micro-batch loss (on any rank) or the gradient
    norm is NaN/inf; a skipped update leaves weights, optimizer and schedule as they were.
    :meth:`metrics` gives ``updates``, ``skipped_updates`` and ``trailing_skipped_updates``
    (skips in a row at the end of the step), from which the trainer counts skips in a row
    across steps (``trainer.max_skipped_updates``).
    """

    def __init__(self) -> None:
        self.updates = 0
        self.skipped = 0
        self.trailing = 0

    def step(self, backend: Any, max_grad_norm: float, *, finite_loss: bool) -> dict[str, float] | None:
        """Step the optimizer; ``None`` when the update was skipped, else the backend's metrics."""
        import math

        bad = distributed.any_rank(not finite_loss)
        out = backend.optimizer_step(max_grad_norm, skip=bad)
        self.updates += 1
        if bad or out.get("skipped") or not all(math.isfinite(v) for k, v in out.items() if k.startswith("grad_norm")):
            self.skipped += 1
            self.trailing += 1
            return None
        self.trailing = 0
        return {k: v for k, v in out.items() if k != "skipped"}

    def metrics(self) -> dict[str, float]:
        return {"updates": float(self.updates), "skipped_updates": float(self.skipped),
                "trailing_skipped_updates": float(self.trailing)}


def is_finite(loss: "torch.Tensor") -> bool:
    """Whether a (scalar) loss is finite; a non-finite one is never backpropagated."""
    import torch

    return bool(torch.isfinite(loss.detach()).all())


def optimize(backend: Any, batch: "PackedBatch", loss_fn: LossFn, options: PolicyGradientOptions) -> dict[str, float]:
    """``epochs`` passes of ``minibatches`` optimizer steps over ``batch``.

    Minibatch ``m`` of a pass holds the sequences ``order[m::minibatches]``, where
    ``order`` is ``0..B-1`` or, with ``options.shuffle``, a fresh permutation per pass drawn from
    torch's global generator (checkpointed by the trainer, so resume stays exact). Each
    minibatch is cut into micro-batches of at most ``micro_batch_tokens`` stream tokens
    whose losses, weighted by :func:`microbatch_share`, accumulate into one gradient.

    Args:
        loss_fn: ``(backend, micro_batch, norm_tokens) -> (loss, stats)``; stats are
            detached scalars, averaged over the update like the loss.

    A minibatch whose loss or gradient norm is NaN/inf is skipped (:class:`UpdateTally`): no
    optimizer step, and its stats are left out of the averages.

    Returns:
        The stats and the backend's ``optimizer_step`` metrics, averaged over the optimizer
        steps taken, plus the :class:`UpdateTally` counts.
    """
    import torch

    lengths = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).tolist()
    policy_lengths = (batch.policy_cu_seqlens[1:] - batch.policy_cu_seqlens[:-1]).tolist()
    divisor = norm_tokens(batch, options)
    totals: dict[str, float] = {}
    count = 0
    tally = UpdateTally()
    backend.train_mode(True)
    for _epoch in range(options.epochs):
        order = distributed.broadcast_object(torch.randperm(batch.num_sequences).tolist()) if options.shuffle else list(range(batch.num_sequences))
        for mb in range(options.minibatches):
            rows = order[mb::options.minibatches]
            if not rows:
                continue
            mb_tokens = sum(policy_lengths[r] for r in rows)
            mb_totals: dict[str, float] = {}
            finite = True
            # This rank's micro-batches (all of them on one process); scale: see distributed.micro_batches.
            for micro_rows, scale in distributed.micro_batches(rows, [lengths[r] for r in rows], options.micro_batch_tokens):
                micro = batch.select([rows[i] for i in micro_rows])
                loss, stats = loss_fn(backend, micro, divisor)
                if not is_finite(loss):
                    finite = False
                    continue
                share = microbatch_share(options.loss_aggregation, micro.num_sequences, micro.num_policy_tokens,
                                         len(rows), mb_tokens)
                (loss * share * scale).backward()
                for key, value in stats.items():
                    mb_totals[key] = mb_totals.get(key, 0.0) + float(value) * share * scale
            stepped = tally.step(backend, options.max_grad_norm, finite_loss=finite)
            if stepped is None:
                continue
            for key, value in [*mb_totals.items(), *stepped.items()]:
                totals[key] = totals.get(key, 0.0) + value
            count += 1
    totals = distributed.mean_over_ranks(totals)  # the stats are per-rank shares
    return {**{key: value / max(1, count) for key, value in totals.items()}, **tally.metrics()}


def per_token_no_grad(batch: "PackedBatch", fn: Callable[["PackedBatch"], "torch.Tensor"],
                      micro_batch_tokens: int) -> "torch.Tensor":
    """``fn`` over micro-batches of ``batch`` without gradients, reassembled in batch order.

    Args:
        fn: ``micro_batch -> [n]`` one value per policy token of the micro-batch.
        micro_batch_tokens: Stream-token budget of one micro-batch.

    Returns:
        float32 ``[N]`` on the device ``fn`` returned.
    """
    import torch

    from agent_lightning import ops

    lengths = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).tolist()
    pcu = batch.policy_cu_seqlens.tolist()
    pieces: list[tuple[int, Any]] = []
    with torch.no_grad():
        for rows in ops.partition_microbatches(lengths, micro_batch_tokens):
            out = fn(batch.select(rows)).float()
            offset = 0
            for r in rows:
                n = pcu[r + 1] - pcu[r]
                pieces.append((r, out[offset:offset + n]))
                offset += n
    pieces.sort(key=lambda item: item[0])
    if not pieces:
        return torch.zeros(0)
    return torch.cat([piece for _, piece in pieces])


def reference_logprobs(backend: Any, batch: "PackedBatch", temperature: float, micro_batch_tokens: int) -> "torch.Tensor":
    """Log-probs of the batch's policy tokens under the frozen reference: float32 ``[N]``."""
    return per_token_no_grad(
        batch, lambda micro: backend.token_logprobs(micro, temperature=temperature, reference=True)[0],
        micro_batch_tokens)


class CriticFreeAlgorithm:
    """The shell shared by the critic-free policy-gradient algorithms (RLOO, REINFORCE++).

    A subclass sets ``config_cls`` and implements ``prepare(trajectories)`` and
    ``advantages(backend, batch) -> (batch with advantages, info)``; this class parses the
    options, creates the optimizer, computes the clipped-surrogate loss (KL in the loss when
    ``kl_mode: loss``) and runs ``optimize`` over the batch. It holds no state of its own.
    """

    config_cls: type = PolicyGradientOptions

    def __init__(self, **options: Any):
        from agent_lightning.config import parse_options

        self.config = parse_options(self.config_cls, "algorithm", options)
        self.group_size = self.config.group_size
        self.temperature = 1.0

    def setup(self, backend: Any, *, total_steps: int, temperature: float) -> None:
        """Create the optimizer; remember the sampling temperature for log-prob recomputation."""
        self.temperature = temperature
        configure_optimizer(backend, self.config, total_steps)

    def advantages(self, backend: Any, batch: "PackedBatch") -> "tuple[PackedBatch, dict[str, float]]":
        raise NotImplementedError

    def loss(self, backend: Any, batch: "PackedBatch", norm_tokens: int) -> "tuple[Any, dict[str, Any]]":
        from agent_lightning.algorithms import common

        logp, entropy = backend.token_logprobs(batch, temperature=self.temperature, with_entropy=True)
        use_ref = self.config.kl_coef > 0 and self.config.kl_mode == "loss"
        ref = batch.extras["ref_logprobs"] if use_ref else None
        return common.policy_loss(logp, entropy, batch, norm_tokens, self.config, ref)

    def update(self, backend: Any, batch: "PackedBatch | None") -> dict[str, float]:
        if batch is None or batch.num_policy_tokens == 0:
            return {}
        batch, info = self.advantages(backend, batch)
        metrics = optimize(backend, batch, self.loss, self.config)
        metrics.update(info)
        metrics["policy_tokens"] = float(batch.num_policy_tokens)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Any) -> None:
        return None
