"""DPO: direct preference optimisation, offline from a preference file or online from rollouts.

A pair is a chosen and a rejected continuation of the same prompt. With ``logp`` the sum of
the policy's log-probs over a continuation's policy tokens (its assistant turns; prompt and
environment feedback are context only) and ``ref`` the same under the frozen reference,

    h      = (logp_chosen - ref_chosen) - (logp_rejected - ref_rejected)
    sigmoid: -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)   (eps: label_smoothing)
    ipo:     (h - 1 / (2 * beta)) ** 2
    hinge:   max(0, 1 - beta * h)

averaged over pairs, plus ``sft_coef`` times the chosen side's per-token negative log-likelihood
(RPO; it keeps the chosen answers likely while their margin grows — plain DPO can lower both
sides). ``reference_free: true`` sets ``ref = 0``. The implicit rewards
``beta * (logp - ref)`` of both sides, their margin and the accuracy (margin > 0; a tie
counts one half, so an untrained policy scores exactly 0.5) are reported.

Where the pairs come from (``algorithm.pairs``):

* ``offline`` (the default when ``algorithm.dataset`` is set): a preference JSONL (format in
  ``agent_lightning.preferences.data``). No rollouts: each step takes ``batch_size`` pairs of a
  seeded shuffle of the training split; ``eval_fraction`` of the file (or ``eval_dataset``)
  is held out and evaluated as ``eval/pref_accuracy``, ``eval/pref_margin``,
  ``eval/pref_loss`` and ``eval/pref_logp_accuracy`` (the policy alone gives the chosen side
  a higher log-prob — meaningful before training, unlike the implicit-reward accuracy).
* ``online``: each task is played ``group_size`` times; the group's best and worst healthy
  rollouts (by final reward) form a pair — with ``pairs_per_group: k`` also the 2nd best with
  the 2nd worst, and so on to the k-th (at most half the group, no rollout used twice).
  Candidates whose rewards tie (or differ by no more than ``min_reward_gap``) are skipped and
  counted in ``train/skipped_ties``.

Log-probs are at temperature 1 (the policy itself) through ``ops.token_logprobs``. The
reference (``reference: initial``) is frozen when training starts: the base model with
adapters disabled under LoRA, else a frozen copy. Online, ``reference: rollout`` makes it the
policy that sampled the step's pairs (log-probs computed before the step's first update):
each step starts at ``h = 0`` and moves the winner up and the loser down from where the
policy is now, and a large ``beta`` saturates the loss after a small move — a per-step trust
region. (Against the initial reference, fresh samples stop being informative once the
policy has moved away from it.)

The pairs go through the update loop every algorithm shares (``training.optimize``):
``epochs`` passes of ``minibatches`` optimizer steps, micro-batches of at most
``micro_batch_tokens`` tokens (both sides of a pair together) whose losses weigh their share
of the minibatch's pairs; under ``torchrun`` each rank takes its share of each minibatch's
pairs and the gradients are averaged over ranks.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

from pydantic import Field

from agent_lightning.algorithms import training
from agent_lightning.algorithms.training import OptimizerOptions
from agent_lightning.config import ConfigError, parse_options
from agent_lightning.hookspecs import hookimpl
from agent_lightning.types import Backend, Trajectory, optional


class DPOConfig(OptimizerOptions):
    """DPO hyper-parameters (the ``algorithm`` section of the config); the optimizer ones are
    ``agent_lightning.algorithms.training.OptimizerOptions``'s."""

    pairs: Literal["online", "offline"] | None = Field(None, description="default: offline with a dataset, else an error")
    dataset: str | None = Field(None, description="preference JSONL (offline)")
    eval_dataset: str | None = Field(None, description="held-out preference JSONL; default: eval_fraction of dataset")
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    loss: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    beta: float = Field(0.1, gt=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="sigmoid loss only (conservative DPO)")
    reference_free: bool = False
    reference: Literal["initial", "rollout"] = Field(
        "initial", description="initial: frozen at the start; rollout (online): the policy that sampled the step's pairs")
    sft_coef: float = Field(0.0, ge=0.0, description="weight of the chosen side's per-token NLL added to the loss (RPO)")
    group_size: int = Field(8, ge=2, description="rollouts per task (online)")
    min_reward_gap: float = Field(0.0, ge=0.0, description="online: skip pairs whose reward gap is not above this")
    pairs_per_group: int = Field(1, ge=1, description="online: pair the k-th best with the k-th worst rollout, k < this")
    batch_size: int = Field(16, ge=1, description="pairs per step (offline)")
    max_length: int = Field(2048, ge=2, description="offline: pairs with a longer side are dropped")
    seed: int = Field(0, description="offline split and shuffling")
    lr: float = Field(1e-6, gt=0)


@dataclass(frozen=True)
class PairLosses:
    """Per-pair DPO quantities, all float32 ``[P]``: ``losses`` (differentiable), the implicit
    rewards ``chosen_rewards`` / ``rejected_rewards`` (``beta * (logp - ref)``, detached)."""

    losses: Any
    chosen_rewards: Any
    rejected_rewards: Any


def dpo_loss(policy_chosen: Any, policy_rejected: Any, ref_chosen: Any, ref_rejected: Any, *, beta: float,
             loss: str = "sigmoid", label_smoothing: float = 0.0) -> PairLosses:
    """The DPO loss family (module docstring) from sequence log-prob sums, each float ``[P]``."""
    import torch.nn.functional as F

    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    h = chosen_ratio - rejected_ratio
    if loss == "sigmoid":
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    elif loss == "hinge":
        losses = F.relu(1.0 - beta * h)
    else:
        raise ValueError(f"algorithm.loss: unknown '{loss}' (allowed: sigmoid, ipo, hinge)")
    return PairLosses(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def pair_accuracy(margins: Any) -> Any:
    """Fraction of ``margins [P]`` above zero, a tie counting one half."""
    return ((margins > 0).float() + 0.5 * (margins == 0).float()).mean()


@dataclass
class PairBatch:
    """``P`` pairs: ``chosen[i]`` is preferred to ``rejected[i]``; ``keys`` (offline) name the
    pairs in the reference cache; ``ref`` holds the reference log-prob sums ``(chosen [P],
    rejected [P])`` once computed; ``skipped`` counts tied candidates (online)."""

    chosen: list[Trajectory]
    rejected: list[Trajectory]
    keys: list[str] | None = None
    skipped: int = 0
    groups: int = 0
    ref: tuple[Any, Any] | None = None

    def __len__(self) -> int:
        return len(self.chosen)

    def select(self, rows: Sequence[int]) -> "PairBatch":
        """The pairs ``rows``, in that order, with their reference sums."""
        ref = None if self.ref is None else (self.ref[0][list(rows)], self.ref[1][list(rows)])
        return PairBatch([self.chosen[i] for i in rows], [self.rejected[i] for i in rows],
                         keys=[self.keys[i] for i in rows] if self.keys else None, ref=ref)


class DPO:
    """Direct preference optimisation (sigmoid / IPO / hinge), offline or online."""

    description = "DPO (sigmoid / IPO / hinge), offline from preference JSONL or online from best/worst rollouts"

    def __init__(self, **options: Any):
        self.config: DPOConfig = parse_options(DPOConfig, "algorithm", options)
        c = self.config
        if c.pairs is None and c.dataset is None:
            raise ConfigError("algorithm: dpo needs 'algorithm.dataset: PATH' (offline) or 'algorithm.pairs: online'")
        if c.pairs == "offline" and c.dataset is None:
            raise ConfigError("algorithm.pairs: 'offline' needs 'algorithm.dataset: PATH'")
        if c.pairs == "online" and (c.dataset or c.eval_dataset):
            raise ConfigError("algorithm.pairs: 'online' builds pairs from rollouts; drop 'algorithm.dataset'/'eval_dataset'")
        c.pairs = c.pairs or "offline"
        if c.reference == "rollout" and c.pairs != "online":
            raise ConfigError("algorithm.reference: 'rollout' is the policy that sampled the pairs; it needs 'algorithm.pairs: online'")
        self.uses_rollouts = self.config.pairs == "online"
        self.group_size = self.config.group_size if self.uses_rollouts else 1
        self.train_pairs: list[tuple[Trajectory, Trajectory]] = []
        self.eval_pairs: list[tuple[Trajectory, Trajectory]] = []
        self._ref_cache: dict[str, tuple[float, float]] = {}
        self._order: list[int] = []
        self.epoch = 0
        self.cursor = 0
        self.dropped_pairs = 0

    # ------------------------------------------------------------------ setup and data

    def setup(self, backend: Backend, *, total_steps: int, temperature: float) -> None:
        """Create the optimizer, freeze the reference now (before any update), and for offline
        DPO read, split and tokenise the preference data with the backend's chat template."""
        c = self.config
        training.configure_optimizer(backend, c, total_steps)
        snapshot = optional(backend, Backend, "reference_model")
        if not c.reference_free and c.reference == "initial" and snapshot is not None:
            snapshot()
        if c.pairs == "offline":
            tokenizer = optional(backend, Backend, "tokenizer")
            if tokenizer is None:
                raise ConfigError("algorithm: offline dpo tokenizes its preference file with the backend's "
                                  f"chat template, and backend {type(backend).__name__} has no tokenizer")
            self._load_data(tokenizer)

    def _load_data(self, tokenizer: Any) -> None:
        from agent_lightning.preferences.data import ConversationEncoder, load_preferences, split_pairs

        c = self.config
        try:
            pairs = load_preferences(c.dataset, key="algorithm.dataset")
            if c.eval_dataset:
                train, held = pairs, load_preferences(c.eval_dataset, key="algorithm.eval_dataset")
            else:
                train, held = split_pairs(pairs, c.eval_fraction, c.seed)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        encoder = ConversationEncoder(tokenizer)
        self.train_pairs = self._encode(encoder, train)
        self.eval_pairs = self._encode(encoder, held)
        if not self.train_pairs:
            raise ConfigError(f"algorithm.dataset: no pair of {c.dataset} fits max_length={c.max_length}")
        if self.dropped_pairs:
            logging.getLogger("agent_lightning").warning(
                "dpo: %d preference pair(s) longer than algorithm.max_length=%d were dropped", self.dropped_pairs, c.max_length)
        self._order = self._shuffled(self.epoch)

    def _encode(self, encoder: Any, pairs: Sequence[Any]) -> list[tuple[Trajectory, Trajectory]]:
        out = []
        for pair in pairs:
            chosen, rejected = encoder.encode_pair(pair)
            if max(len(chosen.token_ids), len(rejected.token_ids)) > self.config.max_length:
                self.dropped_pairs += 1
                continue
            out.append((chosen, rejected))
        return out

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(len(self.train_pairs)))
        random.Random(self.config.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def _next_pairs(self) -> PairBatch:
        """The next ``batch_size`` training pairs, reshuffling at each epoch boundary."""
        chosen, rejected, keys = [], [], []
        for _ in range(min(self.config.batch_size, len(self.train_pairs))):
            if self.cursor >= len(self._order):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._shuffled(self.epoch)
            index = self._order[self.cursor]
            c, r = self.train_pairs[index]
            chosen.append(c)
            rejected.append(r)
            keys.append(f"train:{index}")
            self.cursor += 1
        return PairBatch(chosen, rejected, keys=keys)

    # ------------------------------------------------------------------ online pairs

    def prepare(self, trajectories: Sequence[Trajectory]) -> PairBatch:
        """Online pairs: per group, the ``k``-th best healthy rollout against the ``k``-th worst
        for ``k < pairs_per_group`` (no rollout used twice); tied candidates are skipped."""
        from agent_lightning.algorithms.common import healthy

        groups: dict[int, list[Trajectory]] = {}
        for traj in healthy(trajectories):
            groups.setdefault(traj.group, []).append(traj)
        chosen, rejected, skipped = [], [], 0
        for group in sorted(groups):
            # Stable sorts: among equal rewards the earlier rollout ranks first on both ends.
            ranked = sorted(groups[group], key=lambda t: -t.final_reward)
            worst_first = sorted(groups[group], key=lambda t: t.final_reward)
            for k in range(min(self.config.pairs_per_group, len(ranked) // 2) or 1):
                best, worst = ranked[k], worst_first[k]
                if best is worst or best.final_reward - worst.final_reward <= self.config.min_reward_gap:
                    skipped += 1
                    continue
                chosen.append(best)
                rejected.append(worst)
        return PairBatch(chosen, rejected, skipped=skipped, groups=len(groups))

    # ------------------------------------------------------------------ losses

    def _sequence_logps(self, backend: Backend, batch: Any, *, reference: bool) -> Any:
        """Per-sequence sums of policy-token log-probs, float32 ``[B]``."""
        from agent_lightning import ops

        logp, _ = backend.token_logprobs(batch, temperature=1.0, reference=reference)
        return ops.segment_sum(logp, batch.policy_cu_seqlens.to(logp.device))

    def _pack(self, pairs: PairBatch, rows: Sequence[int]) -> Any:
        """Chosen sides of ``rows`` then their rejected sides, packed: ``2 * len(rows)`` sequences."""
        from agent_lightning.loop.batch import pack_trajectories

        seqs = [pairs.chosen[i] for i in rows] + [pairs.rejected[i] for i in rows]
        return pack_trajectories(seqs, [[0.0] * t.num_policy_tokens for t in seqs])

    def _micro_batches(self, pairs: PairBatch, rows: Sequence[int]) -> list[list[int]]:
        from agent_lightning import ops

        lengths = [len(pairs.chosen[i].token_ids) + len(pairs.rejected[i].token_ids) for i in rows]
        return [[rows[j] for j in part] for part in ops.partition_microbatches(lengths, self.config.micro_batch_tokens)]

    def reference_logps(self, backend: Backend, pairs: PairBatch) -> tuple[Any, Any]:
        """Reference log-prob sums ``(chosen [P], rejected [P])``: the frozen reference's, or
        with ``reference: rollout`` the current policy's (call before the step's first update);
        zeros when reference-free. Pairs with ``keys`` (offline data) are computed once and cached."""
        import torch

        n = len(pairs)
        chosen, rejected = torch.zeros(n), torch.zeros(n)
        if self.config.reference_free:
            return chosen, rejected
        cached = {i: self._ref_cache[pairs.keys[i]] for i in range(n) if pairs.keys and pairs.keys[i] in self._ref_cache}
        todo = [i for i in range(n) if i not in cached]
        for part in self._micro_batches(pairs, todo) if todo else []:
            with torch.no_grad():
                sums = self._sequence_logps(backend, self._pack(pairs, part), reference=self.config.reference == "initial")
                sums = sums.float().cpu()
            for k, i in enumerate(part):
                cached[i] = (float(sums[k]), float(sums[len(part) + k]))
                if pairs.keys:
                    self._ref_cache[pairs.keys[i]] = cached[i]
        for i, (c, r) in cached.items():
            chosen[i], rejected[i] = c, r
        return chosen, rejected

    def loss(self, backend: Backend, pairs: PairBatch) -> tuple[Any, dict[str, Any]]:
        """Mean DPO loss over ``pairs`` (one micro-batch, its ``ref`` set) and detached diagnostics."""
        import torch

        c = self.config
        n = len(pairs)
        sums = self._sequence_logps(backend, self._pack(pairs, range(n)), reference=False)
        ref_c, ref_r = (t.to(sums.device) for t in pairs.ref)
        out = dpo_loss(sums[:n], sums[n:], ref_c, ref_r, beta=c.beta, loss=c.loss, label_smoothing=c.label_smoothing)
        margins = out.chosen_rewards - out.rejected_rewards
        loss = out.losses.mean()
        stats = {
            "dpo_loss": out.losses.detach().mean(),
            "rewards_chosen": out.chosen_rewards.mean(),
            "rewards_rejected": out.rejected_rewards.mean(),
            "reward_margin": margins.mean(),
            "reward_accuracy": pair_accuracy(margins),
            "logps_chosen": sums[:n].detach().mean(),
            "logps_rejected": sums[n:].detach().mean(),
        }
        if c.sft_coef:
            tokens = torch.tensor([t.num_policy_tokens for t in pairs.chosen], dtype=sums.dtype, device=sums.device)
            nll = -(sums[:n] / tokens).mean()
            loss = loss + c.sft_coef * nll
            stats["sft_nll"] = nll.detach()
        return loss, stats

    # ------------------------------------------------------------------ updates

    def update(self, backend: Backend, pairs: PairBatch | None) -> dict[str, float]:
        """Reference log-probs, then ``epochs`` passes of ``minibatches`` optimizer steps over
        the pairs (``training.optimize``; under ``torchrun`` each rank takes its share of each
        minibatch's pairs). A micro-batch's loss weighs its share of its minibatch's pairs."""
        if pairs is None:
            return {}
        metrics: dict[str, float] = {"pairs": float(len(pairs))}
        if self.uses_rollouts:
            metrics["skipped_ties"] = float(pairs.skipped)
        if len(pairs) == 0:
            return metrics
        backend.train_mode(False)
        pairs.ref = self.reference_logps(backend, pairs)
        lengths = [len(c.token_ids) + len(r.token_ids) for c, r in zip(pairs.chosen, pairs.rejected)]
        metrics.update(training.optimize(backend, self.config, lengths=lengths, select=pairs.select, loss_fn=self.loss,
                                         share=lambda micro, rows: len(micro) / len(rows)))
        return metrics

    def offline_step(self, backend: Backend) -> dict[str, float]:
        """One offline step (no rollouts): the next ``batch_size`` pairs of the training split."""
        return self.update(backend, self._next_pairs())

    def held_out_metrics(self, backend: Backend) -> dict[str, float]:
        """Held-out preference metrics (offline; the trainer logs them as ``eval/...``):
        accuracy, margin, loss and log-prob accuracy."""
        import torch

        if self.uses_rollouts or not self.eval_pairs:
            return {}
        c = self.config
        pairs = PairBatch([p[0] for p in self.eval_pairs], [p[1] for p in self.eval_pairs],
                          keys=[f"eval:{i}" for i in range(len(self.eval_pairs))])
        backend.train_mode(False)
        try:
            with torch.no_grad():
                ref_c, ref_r = self.reference_logps(backend, pairs)
                pol_c, pol_r = torch.zeros(len(pairs)), torch.zeros(len(pairs))
                for part in self._micro_batches(pairs, list(range(len(pairs)))):
                    sums = self._sequence_logps(backend, self._pack(pairs, part), reference=False).float().cpu()
                    pol_c[part], pol_r[part] = sums[:len(part)], sums[len(part):]
        finally:
            backend.train_mode(True)
        out = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta=c.beta, loss=c.loss, label_smoothing=c.label_smoothing)
        margins = out.chosen_rewards - out.rejected_rewards
        return {
            "pref_accuracy": float(pair_accuracy(margins)),
            "pref_margin": float(margins.mean()),
            "pref_loss": float(out.losses.mean()),
            "pref_logp_accuracy": float(pair_accuracy(pol_c - pol_r)),
            "pref_pairs": float(len(pairs)),
        }

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch = int(state.get("epoch", 0))
        self.cursor = int(state.get("cursor", 0))
        if self.train_pairs:
            self._order = self._shuffled(self.epoch)


@hookimpl
def register_algorithms(register):
    register("dpo", DPO)
