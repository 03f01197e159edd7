"""The optimisation side of every gradient-based algorithm: options, the update loop, the
policy-gradient shell.

* :class:`OptimizerOptions`: AdamW, schedule and batching (``epochs``, ``minibatches``,
  ``micro_batch_tokens``), read by GRPO, PPO, RLOO, REINFORCE++ and DPO;
  :class:`PolicyGradientOptions` adds the options of the four policy-gradient ones.
* :func:`optimize`: **the** update loop of all five. One step's data is a list of rows
  (the sequences of a packed batch; DPO's preference pairs); ``epochs`` passes of
  ``minibatches`` optimizer steps, each accumulating gradients over micro-batches of at
  most ``micro_batch_tokens`` stream tokens. Under ``torchrun`` a rank backpropagates only
  its share of each minibatch (``scaling.distributed.micro_batches``) and the backend's
  ``optimizer_step`` averages the gradients. :func:`optimize_sequences` is the loop over a
  packed batch's sequences (the policy-gradient algorithms).
* :class:`PolicyGradient`: what GRPO, PPO, RLOO and REINFORCE++ share, held by each as
  ``self.pg`` (composition): options, sampling temperature, optimizer setup, the
  clipped-surrogate loss, the update. :func:`per_token_no_grad` and
  :func:`reference_logprobs` are the no-grad passes (old values, reference log-probs).

A policy-gradient algorithm reads the same way in each file::

    prepare(trajectories) -> PackedBatch     the healthy trajectories, packed
    advantages(...)                          all of its advantage maths, in this one method:
                                             GRPO's needs only the rewards and prepare calls it;
                                             PPO's (critic values) and RLOO's and REINFORCE++'s
                                             (reference log-probs, KL in the reward) need the
                                             model: update calls it first
    loss(backend, micro_batch, norm_tokens)  one micro-batch's loss and its diagnostics
    update(backend, batch)                   advantages (unless done), then optimize_sequences
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from agent_lightning.algorithms.common import microbatch_share
from agent_lightning.scaling import distributed
from agent_lightning.types import Backend, optional

if TYPE_CHECKING:
    import torch

    from agent_lightning.loop.batch import PackedBatch

M = TypeVar("M")
LossFn = Callable[[Any, "PackedBatch", int], "tuple[torch.Tensor, dict[str, Any]]"]
"""A policy-gradient loss: ``(backend, micro_batch, norm_tokens) -> (loss, stats)``."""


class OptimizerOptions(BaseModel):
    """AdamW, schedule and batching options of every gradient-based algorithm (part of the
    ``algorithm`` section); an algorithm may override a default (DPO's ``lr``, PPO's ``epochs``)."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0, description="trainer steps of linear warmup")
    schedule: Literal["constant", "linear", "cosine"] = Field("constant", description=(
        "learning rate after warmup: constant, or decayed (linear, cosine) to 0 at the run's last trainer step"))
    max_grad_norm: float = Field(1.0, ge=0)
    epochs: int = Field(1, ge=1, description="passes over each step's data (rollouts, pairs)")
    minibatches: int = Field(1, ge=1, description="optimizer steps per pass")
    micro_batch_tokens: int = Field(16384, ge=1, description=(
        "token budget per forward/backward; a prompt that the backend encodes once for a group "
        "(backend.share_prompts) counts once"))


class PolicyGradientOptions(OptimizerOptions):
    """Options shared by the policy-gradient algorithms (part of the ``algorithm`` section)."""

    clip_low: float = Field(0.2, ge=0)
    clip_high: float = Field(0.28, ge=0)
    loss_aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] = "token-mean"
    loss_norm_tokens: int = Field(0, ge=0, description="seq-mean-token-sum divisor; 0: longest sequence's policy tokens")
    kl_coef: float = Field(0.0, ge=0)
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    entropy_coef: float = 0.0
    shuffle: bool = Field(False, description="deal the sequences into minibatches in a fresh random order every epoch")


def configure_optimizer(backend: Backend, options: OptimizerOptions, total_steps: int,
                        extra_param_groups: tuple[dict[str, Any], ...] = ()) -> None:
    """AdamW with the options' learning-rate schedule; ``extra_param_groups`` (a value head,
    a critic) are stepped, clipped and checkpointed with the policy.

    ``total_steps`` and ``warmup_steps`` count trainer steps; the backend's scheduler advances
    once per optimizer update, ``epochs x minibatches`` of them per trainer step, so both are
    scaled to updates (without that, ``minibatches: 4`` decayed the rate to 0 a quarter of the
    way through the run)."""
    kwargs: dict[str, Any] = {"extra_param_groups": extra_param_groups} if extra_param_groups else {}
    updates = options.epochs * options.minibatches
    backend.configure_optimizer(lr=options.lr, weight_decay=options.weight_decay, betas=options.betas,
                                warmup_steps=options.warmup_steps * updates, total_steps=total_steps * updates,
                                schedule=options.schedule, **kwargs)
    snapshot = optional(backend, Backend, "reference_model")
    if getattr(options, "kl_coef", 0) > 0 and snapshot is not None:
        # Take the frozen reference now: a resume loads trained weights into the policy right
        # after setup, and a copy made lazily later would be of those, not of the start.
        snapshot()


def norm_tokens(batch: "PackedBatch", options: PolicyGradientOptions) -> int:
    """The ``seq-mean-token-sum`` divisor: the option, else the longest sequence's policy tokens."""
    lengths = (batch.policy_cu_seqlens[1:] - batch.policy_cu_seqlens[:-1]).tolist()
    return options.loss_norm_tokens or max(lengths)


# --------------------------------------------------------------------------- the update loop


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

    def step(self, backend: Backend, max_grad_norm: float, *, finite_loss: bool) -> dict[str, float] | None:
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


def optimize(backend: Backend, options: OptimizerOptions, *, lengths: Sequence[int], select: Callable[[list[int]], M],
             loss_fn: Callable[[Any, M], "tuple[torch.Tensor, dict[str, Any]]"],
             share: Callable[[M, list[int]], float], shuffle: bool = False,
             prompt_groups: "tuple[Sequence[int], Sequence[int]] | None" = None) -> dict[str, float]:
    """``options.epochs`` passes of ``options.minibatches`` optimizer steps over one step's rows.

    The rows are ``0..R-1`` (a packed batch's sequences, DPO's pairs). Minibatch ``m`` of a
    pass holds the rows ``order[m::minibatches]``, where ``order`` is ``0..R-1`` or, with
    ``shuffle``, a fresh permutation per pass drawn from torch's global generator on rank 0
    (checkpointed by the trainer, so resume stays exact). ``distributed.micro_batches`` cuts
    a minibatch into micro-batches of at most ``micro_batch_tokens`` stream tokens (under
    ``torchrun``: of this rank's share of the rows only, with gradient ``scale``); their losses,
    weighted by ``share * scale``, accumulate into one gradient, averaged over ranks by the
    backend's ``optimizer_step``.

    Args:
        lengths: Stream tokens of each row (what the micro-batch budget counts).
        select: ``rows -> micro_batch`` (``PackedBatch.select``, ``PairBatch.select``).
        loss_fn: ``(backend, micro_batch) -> (loss, stats)``; stats are detached scalars,
            averaged over the update like the loss.
        share: ``(micro_batch, minibatch_rows) -> weight`` of the micro-batch's loss in its
            minibatch's loss: the weighted micro-batch losses (of all ranks) add up to the
            minibatch's loss.
        shuffle: Deal the rows in a fresh random order every pass.
        prompt_groups: ``(groups, shared)`` per row, from a backend whose training forward
            encodes a group's shared prompt once (its ``prompt_groups``): micro-batches keep a
            group's rows together and count its prompt once (``distributed.micro_batches``).

    A minibatch whose loss or gradient norm is NaN/inf is skipped (:class:`UpdateTally`): the
    non-finite loss is not backpropagated, no optimizer step, and its stats are left out of
    the averages.

    Returns:
        The stats (averaged over ranks) and the backend's ``optimizer_step`` metrics, averaged
        over the optimizer steps taken, plus the :class:`UpdateTally` counts.
    """
    import torch

    totals: dict[str, float] = {}
    count = 0
    tally = UpdateTally()
    backend.train_mode(True)
    for _epoch in range(options.epochs):
        order = distributed.broadcast_object(torch.randperm(len(lengths)).tolist()) if shuffle else list(range(len(lengths)))
        for mb in range(options.minibatches):
            rows = order[mb::options.minibatches]
            if not rows:
                continue
            mb_totals: dict[str, float] = {}
            finite = True
            # This rank's micro-batches (all of them on one process); scale: see distributed.micro_batches.
            grouped = None if prompt_groups is None else tuple([part[r] for r in rows] for part in prompt_groups)
            for micro_rows, scale in distributed.micro_batches(rows, [lengths[r] for r in rows], options.micro_batch_tokens,
                                                               grouped):
                micro = select([rows[i] for i in micro_rows])
                loss, stats = loss_fn(backend, micro)
                if not is_finite(loss):
                    finite = False
                    continue
                weight = share(micro, rows)
                (loss * weight * scale).backward()
                for key, value in stats.items():
                    mb_totals[key] = mb_totals.get(key, 0.0) + float(value) * weight * scale
            stepped = tally.step(backend, options.max_grad_norm, finite_loss=finite)
            if stepped is None:
                continue
            for key, value in [*mb_totals.items(), *stepped.items()]:
                totals[key] = totals.get(key, 0.0) + value
            count += 1
    totals = distributed.mean_over_ranks(totals)  # the stats are per-rank shares
    return {**{key: value / max(1, count) for key, value in totals.items()}, **tally.metrics()}


def optimize_sequences(backend: Backend, batch: "PackedBatch", loss_fn: LossFn,
                       options: PolicyGradientOptions) -> dict[str, float]:
    """:func:`optimize` over the sequences of a packed batch (the policy-gradient algorithms).

    ``loss_fn(backend, micro_batch, norm_tokens)`` gets the whole batch's
    ``seq-mean-token-sum`` divisor (:func:`norm_tokens`); a micro-batch's share of its
    minibatch is :func:`~agent_lightning.algorithms.common.microbatch_share` (policy tokens
    for ``token-mean``, sequences for the per-sequence aggregations).
    """
    lengths = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).tolist()
    policy_lengths = (batch.policy_cu_seqlens[1:] - batch.policy_cu_seqlens[:-1]).tolist()
    divisor = norm_tokens(batch, options)

    def share(micro: "PackedBatch", rows: list[int]) -> float:
        return microbatch_share(options.loss_aggregation, micro.num_sequences, micro.num_policy_tokens,
                                len(rows), sum(policy_lengths[r] for r in rows))

    grouping = optional(backend, Backend, "prompt_groups")
    return optimize(backend, options, lengths=lengths, select=batch.select,
                    loss_fn=lambda backend, micro: loss_fn(backend, micro, divisor), share=share,
                    shuffle=options.shuffle, prompt_groups=grouping(batch) if grouping is not None else None)


# --------------------------------------------------------------------------- no-grad passes


def per_token_no_grad(batch: "PackedBatch", fn: Callable[["PackedBatch"], "torch.Tensor"],
                      micro_batch_tokens: int,
                      prompt_groups: "tuple[Sequence[int], Sequence[int]] | None" = None) -> "torch.Tensor":
    """``fn`` over micro-batches of ``batch`` without gradients, reassembled in batch order.

    Args:
        fn: ``micro_batch -> [n]`` one value per policy token of the micro-batch.
        micro_batch_tokens: Stream-token budget of one micro-batch.
        prompt_groups: The backend's ``prompt_groups(batch)``: micro-batches keep a group's rows
            together and count its shared prompt once (``ops.partition_shared_prompts``).

    Returns:
        float32 ``[N]`` on the device ``fn`` returned.
    """
    import torch

    from agent_lightning import ops

    lengths = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).tolist()
    pcu = batch.policy_cu_seqlens.tolist()
    pieces: list[tuple[int, Any]] = []
    with torch.no_grad():
        parts = (ops.partition_microbatches(lengths, micro_batch_tokens) if prompt_groups is None else
                 ops.partition_shared_prompts(lengths, prompt_groups[0], prompt_groups[1], micro_batch_tokens))
        for rows in parts:
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


def reference_logprobs(backend: Backend, batch: "PackedBatch", temperature: float, micro_batch_tokens: int) -> "torch.Tensor":
    """Log-probs of the batch's policy tokens under the frozen reference: float32 ``[N]``."""
    grouping = optional(backend, Backend, "prompt_groups")
    return per_token_no_grad(
        batch, lambda micro: backend.token_logprobs(micro, temperature=temperature, reference=True)[0],
        micro_batch_tokens, grouping(batch) if grouping is not None else None)


# --------------------------------------------------------------------------- the shell


class PolicyGradient:
    """What GRPO, PPO, RLOO and REINFORCE++ share, held by each as ``self.pg``.

    It parses the algorithm's options (``config``), remembers the sampling temperature
    (log-probs are recomputed at it), creates the optimizer, computes the clipped-surrogate
    loss and runs the update over a packed batch. It holds no training state.
    """

    def __init__(self, config_cls: type[PolicyGradientOptions], options: Mapping[str, Any]):
        from agent_lightning.config import parse_options

        self.config: Any = parse_options(config_cls, "algorithm", dict(options))
        self.temperature = 1.0

    def setup(self, backend: Backend, *, total_steps: int, temperature: float,
              extra_param_groups: tuple[dict[str, Any], ...] = ()) -> None:
        """Create the optimizer (with ``extra_param_groups``: PPO's value head or critic);
        remember the sampling temperature for log-prob recomputation."""
        self.temperature = temperature
        configure_optimizer(backend, self.config, total_steps, extra_param_groups)

    def reference_logprobs(self, backend: Backend, batch: "PackedBatch") -> "torch.Tensor":
        """The batch's policy tokens' log-probs under the frozen reference, float32 ``[N]``."""
        return reference_logprobs(backend, batch, self.temperature, self.config.micro_batch_tokens)

    def loss(self, backend: Backend, batch: "PackedBatch", norm_tokens: int) -> "tuple[torch.Tensor, dict[str, Any]]":
        """The clipped-surrogate loss of one micro-batch (``common.policy_loss``) at the sampling
        temperature; with ``kl_mode: loss`` and ``kl_coef > 0``, plus the KL to the reference
        log-probs that the algorithm's ``advantages`` stored in ``extras["ref_logprobs"]``."""
        from agent_lightning.algorithms import common

        c = self.config
        kl_in_loss = c.kl_coef > 0 and getattr(c, "kl_mode", "reward") == "loss"
        ref = batch.extras["ref_logprobs"] if kl_in_loss else None
        return common.backend_policy_loss(backend, batch, norm_tokens, self.config, self.temperature, ref)

    def update(self, backend: Backend, batch: "PackedBatch | None",
               advantages: Callable[[Backend, "PackedBatch"], "tuple[PackedBatch, dict[str, float]]"]) -> dict[str, float]:
        """``advantages(backend, batch)``, then :meth:`optimize` with :meth:`loss` (RLOO and
        REINFORCE++: the update of a critic-free algorithm whose advantages need the model)."""
        if batch is None or batch.num_policy_tokens == 0:
            return {}
        batch, info = advantages(backend, batch)
        return self.optimize(backend, batch, self.loss, info)

    def optimize(self, backend: Backend, batch: "PackedBatch", loss_fn: LossFn, info: Mapping[str, float]) -> dict[str, float]:
        """:func:`optimize_sequences` over ``batch`` (its advantages set); the metrics, then
        ``info`` (the algorithm's diagnostics) and ``policy_tokens``."""
        metrics = optimize_sequences(backend, batch, loss_fn, self.config)
        metrics.update(info)
        metrics["policy_tokens"] = float(batch.num_policy_tokens)
        return metrics
