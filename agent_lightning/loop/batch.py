"""From trajectories to one packed, padding-free training batch.

Sequences are concatenated into a single token stream described by ``cu_seqlens``; the
tokens trained on (policy tokens) are addressed by their positions in that stream, so
log-probs are computed only where they are needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from agent_lightning.types import Trajectory


class InvariantError(ValueError):
    """A trajectory's token stream is not what the policy sampled (names the trajectory)."""


def check_invariants(trajectories: Sequence[Trajectory], *, vocab_size: int, decode: Any = None) -> None:
    """Token-in/token-out checks, run on every batch.

    For each trajectory: the stream is non-empty and starts with a non-policy token;
    per-token fields have equal lengths; every id is inside the vocabulary; every policy
    token has a finite, non-positive sampling log-prob; and, when ``decode`` is given,
    each turn's action text is exactly the decoding of its sampled ids (what the
    environment saw is what is trained on). A failed episode that never got a token (its
    reset or its agent failed first) is left out: it is never trained on.
    """
    for traj in trajectories:
        ids, mask, lps = traj.token_ids, traj.policy_mask, traj.sampling_logprobs
        if traj.failure is not None and not ids:
            continue
        where = f"trajectory '{traj.id}'"
        if not ids or mask[0]:
            raise InvariantError(f"{where}: the stream must start with prompt tokens")
        if not (len(ids) == len(mask) == len(lps) == len(traj.turn_index)):
            raise InvariantError(f"{where}: per-token fields have different lengths")
        if min(ids) < 0 or max(ids) >= vocab_size:  # builtins first: this runs on every token of every batch
            bad = [t for t in ids if not 0 <= t < vocab_size]
            raise InvariantError(f"{where}: token id {bad[0]} is outside the vocabulary of {vocab_size}")
        for turn_no, turn in enumerate(traj.turns):
            if len(turn.action_token_ids) != len(turn.action_logprobs):
                raise InvariantError(f"{where} turn {turn_no}: {len(turn.action_token_ids)} sampled ids but {len(turn.action_logprobs)} log-probs")
            lps_turn = turn.action_logprobs
            # A sum of log-probs (each >= -1e4 or so) is finite exactly when every one is.
            if lps_turn and (max(lps_turn) > 1e-4 or not math.isfinite(sum(lps_turn))):
                raise InvariantError(f"{where} turn {turn_no}: a sampling log-prob is not a finite value <= 0")
            if decode is not None and decode(turn.action_token_ids) != turn.action:
                raise InvariantError(f"{where} turn {turn_no}: the action text is not the decoding of the sampled ids")


@dataclass
class PackedBatch:
    """A packed batch. ``T`` stream tokens, ``B`` sequences, ``N`` policy tokens.

    Attributes:
        input_ids: int64 ``[T]``, all sequences back to back.
        position_ids: int64 ``[T]``, restarting at 0 for each sequence.
        cu_seqlens: int32 ``[B+1]``, sequence boundaries in the stream.
        policy_index: int64 ``[N]``, stream positions of policy tokens (never a sequence start).
        policy_cu_seqlens: int32 ``[B+1]``, boundaries of each sequence's policy tokens in the
            ``[N]`` arrays (for per-sequence loss aggregation).
        sampling_logprobs: float32 ``[N]``, log-probs recorded while sampling.
        advantages: float32 ``[N]``.
        turn_index: int32 ``[N]``, the turn each policy token belongs to.
        trajectory_ids: ``B`` episode ids, in stream order.
        extras: per-algorithm tensors (returns, values, reference log-probs...).
    """

    input_ids: Any
    position_ids: Any
    cu_seqlens: Any
    policy_index: Any
    policy_cu_seqlens: Any
    sampling_logprobs: Any
    advantages: Any
    turn_index: Any
    trajectory_ids: list[str]
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def num_sequences(self) -> int:
        return len(self.trajectory_ids)

    @property
    def num_policy_tokens(self) -> int:
        return int(self.policy_index.numel())

    def select(self, rows: Sequence[int]) -> "PackedBatch":
        """The sub-batch of sequences ``rows`` (re-packed, in the given order); the batch itself
        when ``rows`` is every sequence in order (one micro-batch: nothing to re-pack)."""
        import torch

        from agent_lightning import ops

        if len(rows) == self.num_sequences and all(r == i for i, r in enumerate(rows)):
            return self
        cu, pcu = self.cu_seqlens.tolist(), self.policy_cu_seqlens.tolist()
        token_parts = [torch.arange(cu[r], cu[r + 1]) for r in rows]
        policy_parts = [torch.arange(pcu[r], pcu[r + 1]) for r in rows]
        tokens = torch.cat(token_parts) if token_parts else torch.zeros(0, dtype=torch.long)
        pol = torch.cat(policy_parts) if policy_parts else torch.zeros(0, dtype=torch.long)
        layout = ops.pack_lengths([cu[r + 1] - cu[r] for r in rows])
        new_pcu = ops.pack_lengths([pcu[r + 1] - pcu[r] for r in rows]).cu_seqlens
        # Shift each sequence's policy positions from its old start to its new start.
        offsets = torch.cat([
            torch.full((pcu[r + 1] - pcu[r],), int(layout.cu_seqlens[i]) - cu[r], dtype=torch.long)
            for i, r in enumerate(rows)
        ]) if rows else torch.zeros(0, dtype=torch.long)
        return PackedBatch(
            input_ids=self.input_ids[tokens],
            position_ids=layout.position_ids,
            cu_seqlens=layout.cu_seqlens,
            policy_index=self.policy_index[pol] + offsets,
            policy_cu_seqlens=new_pcu,
            sampling_logprobs=self.sampling_logprobs[pol],
            advantages=self.advantages[pol],
            turn_index=self.turn_index[pol],
            trajectory_ids=[self.trajectory_ids[r] for r in rows],
            extras={k: v[pol] for k, v in self.extras.items()},
        )


def pack_trajectories(trajectories: Sequence[Trajectory], token_advantages: Sequence[Sequence[float]]) -> PackedBatch:
    """Pack trajectories (failed ones must already be filtered out).

    Args:
        trajectories: ``B`` healthy trajectories.
        token_advantages: per trajectory, one advantage per policy token.
    """
    import torch

    from agent_lightning import ops

    ids: list[int] = []
    policy_index: list[int] = []
    sampling: list[float] = []
    turns: list[int] = []
    adv: list[float] = []
    lengths, policy_lengths = [], []
    for traj, advantages in zip(trajectories, token_advantages, strict=True):
        start = len(ids)
        stream = traj.token_ids
        mask, lps, turn_idx = traj.policy_mask, traj.sampling_logprobs, traj.turn_index
        positions = [start + i for i, m in enumerate(mask) if m]
        if len(positions) != len(advantages):
            raise InvariantError(f"trajectory '{traj.id}': {len(advantages)} advantages for {len(positions)} policy tokens")
        ids.extend(stream)
        policy_index.extend(positions)
        sampling.extend(lps[p - start] for p in positions)
        turns.extend(turn_idx[p - start] for p in positions)
        adv.extend(advantages)
        lengths.append(len(stream))
        policy_lengths.append(len(positions))
    layout = ops.pack_lengths(lengths)
    return PackedBatch(
        input_ids=torch.tensor(ids, dtype=torch.long),
        position_ids=layout.position_ids,
        cu_seqlens=layout.cu_seqlens,
        policy_index=torch.tensor(policy_index, dtype=torch.long),
        policy_cu_seqlens=ops.pack_lengths(policy_lengths).cu_seqlens,
        sampling_logprobs=torch.tensor(sampling, dtype=torch.float32),
        advantages=torch.tensor(adv, dtype=torch.float32),
        turn_index=torch.tensor(turns, dtype=torch.int32),
        trajectory_ids=[t.id for t in trajectories],
    )
