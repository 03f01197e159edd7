"""Replay buffer: reuse the groups of the last K steps, with truncated importance weights.

Per training step (``trainer.replay``, off while ``capacity_steps`` is 0):

    mixed = fresh + sample(buffer)             # whole groups, seeded by (seed, step)
    buffer.add(fresh groups); evict steps older than K and versions staler than max_staleness
    batch = algorithm.prepare(mixed)           # advantages recomputed over this step's batch
    batch = weigh(batch)                       # replayed rows only:
        prox = log pi_current(token)           #   no-grad, before this step's update
        w    = min(exp(prox - behaviour), is_truncation)
        batch.sampling_logprobs <- prox        #   the clipped ratio is anchored to pi_current
        batch.extras["is_weights"] = w         #   1.0 on fresh tokens
        batch.extras["behaviour_logprobs"] = the log-probs actually sampled with

The per-token policy loss is multiplied by ``is_weights`` (decoupled PPO with truncated
importance sampling): the ratio ``pi_theta / pi_prox`` is clipped as usual, while
``pi_prox / pi_behaviour`` corrects for the staleness of the sample. Groups are replayed
whole (group-relative advantages need them) under a fresh group label and the episode id
``replay/<source step>/<id>``. Only healthy episodes are kept.

The buffer's contents go into checkpoints (``state_dict``): token ids and log-probs as
flat tensors, everything else as JSON, so that a resumed run replays exactly what an
uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any, Mapping, Sequence

from agent_lightning.config import ReplayConfig
from agent_lightning.types import Backend, Task, Trajectory, Turn

Group = tuple[Trajectory, ...]


class ReplayBuffer:
    """The groups of the last ``capacity_steps`` steps, keyed by the step that sampled them.

    Args:
        config: ``trainer.replay``.
        seed: The run's seed; a step's draw uses ``seed`` and the step number only, so the
            sampler has no state of its own to checkpoint.
        temperature: The sampling temperature (log-probs are recomputed under it).
    """

    def __init__(self, config: ReplayConfig, *, seed: int, temperature: float):
        self.config = config
        self.seed = seed
        self.temperature = temperature
        self.entries: dict[int, list[Group]] = {}
        self.metrics: dict[str, float] = {}
        self._replayed: dict[str, Trajectory] = {}

    @property
    def enabled(self) -> bool:
        return self.config.capacity_steps > 0

    def __len__(self) -> int:
        return sum(len(group) for groups in self.entries.values() for group in groups)

    # ------------------------------------------------------------------ sampling

    def evict(self, oldest_step: int, version: int) -> None:
        """Drop the groups of steps before ``oldest_step`` and those sampled more than
        ``max_staleness`` policy versions before ``version``."""
        limit = self.config.max_staleness
        kept: dict[int, list[Group]] = {}
        for source, groups in self.entries.items():
            if source < oldest_step:
                continue
            if limit is not None:
                groups = [g for g in groups if version - min(t.policy_version for t in g) <= limit]
            if groups:
                kept[source] = groups
        self.entries = kept

    def mix(self, trajectories: Sequence[Trajectory], backend: Backend, step: int) -> list[Trajectory]:
        """The step's fresh trajectories followed by replayed groups; stores the fresh groups.

        Args:
            trajectories: This step's scored episodes (failed ones included).
            backend: The policy; only ``backend.version`` is read here.
            step: Steps completed before this one (seeds the draw; labels the stored groups).

        Returns:
            ``trajectories`` unchanged when replay is off; otherwise ``trajectories`` plus
            ``round(replay_ratio * fresh groups)`` whole groups drawn uniformly without
            replacement from earlier steps (fewer when the buffer holds fewer), relabelled
            with group indices after the fresh ones.
        """
        self.metrics, self._replayed = {}, {}
        if not self.enabled:
            return list(trajectories)
        version = int(backend.version)
        self.evict(step - self.config.capacity_steps, version)  # replayable: steps step-K .. step-1
        fresh = _groups(trajectories)
        pool = [(source, group) for source in sorted(self.entries) for group in self.entries[source]]
        wanted = min(len(pool), math.floor(self.config.replay_ratio * len(fresh) + 0.5))
        rng = random.Random(self.seed * 1_000_003 + step)
        chosen = sorted(rng.sample(range(len(pool)), wanted))
        offset = max((t.group for t in trajectories), default=-1) + 1
        replayed = [dataclasses.replace(t, id=f"replay/{pool[i][0]}/{t.id}", group=offset + j)
                    for j, i in enumerate(chosen) for t in pool[i][1]]
        self._replayed = {t.id: t for t in replayed}
        if fresh:
            self.entries[step] = fresh
        self.evict(step + 1 - self.config.capacity_steps, version)  # what the next step may replay
        total = len(trajectories) + len(replayed)
        self.metrics = {
            "replay/size": float(len(self)),
            "replay/fraction": len(replayed) / max(1, total),
            "replay/staleness_mean": sum(version - t.policy_version for t in replayed) / max(1, len(replayed)),
            "replay/is_weight_mean": 1.0,
            "replay/is_truncated_fraction": 0.0,
        }
        return list(trajectories) + replayed

    # ------------------------------------------------------------------ importance weights

    def weigh(self, batch: Any, backend: Backend) -> Any:
        """Attach importance weights to the replayed rows of a packed batch (see the module
        docstring). Batches that are not packed (``None``, preference pairs) pass through.

        Adds ``extras["is_weights"]`` (float32 ``[N]``, 1.0 on fresh tokens) and
        ``extras["behaviour_logprobs"]`` (float32 ``[N]``, the recorded sampling log-probs),
        and sets ``sampling_logprobs`` of replayed tokens to the current policy's.
        """
        import torch

        if not self._replayed or not hasattr(batch, "policy_cu_seqlens"):
            return batch
        rows = [i for i, tid in enumerate(batch.trajectory_ids) if tid in self._replayed]
        if not rows:
            return batch
        sub = batch.select(rows)
        current = self.current_logprobs(sub, backend)
        weights, truncated = importance_weights(current, sub.sampling_logprobs.cpu(), self.config.is_truncation)
        pcu = batch.policy_cu_seqlens.tolist()
        where = torch.cat([torch.arange(pcu[r], pcu[r + 1]) for r in rows])
        all_weights = torch.ones(batch.num_policy_tokens, dtype=torch.float32)
        all_weights[where] = weights
        anchored = batch.sampling_logprobs.clone()
        anchored[where] = current.to(anchored.dtype)
        if weights.numel():
            self.metrics["replay/is_weight_mean"] = float(weights.mean())
            self.metrics["replay/is_truncated_fraction"] = float(truncated.float().mean())
        extras = {**batch.extras, "is_weights": all_weights, "behaviour_logprobs": batch.sampling_logprobs}
        return dataclasses.replace(batch, sampling_logprobs=anchored, extras=extras)

    def current_logprobs(self, batch: Any, backend: Backend) -> Any:
        """Log-probs ``[N]`` (float32, CPU) of the batch's policy tokens under the current
        policy, without gradient, in micro-batches of ``micro_batch_tokens``."""
        import torch

        from agent_lightning import ops

        lengths = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).tolist()
        pcu = batch.policy_cu_seqlens.tolist()
        out = torch.zeros(batch.num_policy_tokens, dtype=torch.float32)
        model = getattr(backend, "model", None)
        was_training = getattr(model, "training", None)
        backend.train_mode(False)
        try:
            with torch.no_grad():
                for rows in ops.partition_microbatches(lengths, self.config.micro_batch_tokens):
                    logp, _ = backend.token_logprobs(batch.select(rows), temperature=self.temperature)
                    where = torch.cat([torch.arange(pcu[r], pcu[r + 1]) for r in rows])
                    out[where] = logp.detach().float().cpu()
        finally:
            if was_training is not None:
                backend.train_mode(bool(was_training))
        return out

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Plain data and tensors for ``checkpoint.save_state`` (no pickle).

        ``tokens`` (int64) holds every stored stream piece back to back (prompt, then per
        turn the action and the observation) and ``logprobs`` (float64) every action
        log-prob; the JSON part gives each piece's length. Tasks are stored once by id. An
        empty buffer is ``{}``.
        """
        import torch

        if not self.entries:
            return {}
        tokens: list[int] = []
        logprobs: list[float] = []
        tasks: dict[str, Any] = {}
        entries = []
        for source in sorted(self.entries):
            groups = []
            for group in self.entries[source]:
                records = []
                for traj in group:
                    tasks.setdefault(traj.task.id, _task_state(traj.task))
                    tokens.extend(traj.prompt_token_ids)
                    turns = []
                    for turn in traj.turns:
                        tokens.extend(turn.action_token_ids)
                        tokens.extend(turn.observation_token_ids)
                        logprobs.extend(turn.action_logprobs)
                        turns.append({"action": turn.action, "reward": float(turn.reward), "info": _plain(turn.info),
                                      "lengths": [len(turn.action_token_ids), len(turn.observation_token_ids)]})
                    records.append({
                        "id": traj.id, "task": traj.task.id, "group": traj.group,
                        "prompt_length": len(traj.prompt_token_ids), "turns": turns,
                        "final_reward": float(traj.final_reward),
                        "reward_components": {k: float(v) for k, v in traj.reward_components.items()},
                        "success": bool(traj.success), "policy_version": int(traj.policy_version),
                    })
                groups.append(records)
            entries.append({"step": source, "groups": groups})
        return {"entries": entries, "tasks": tasks,
                "tokens": torch.tensor(tokens, dtype=torch.int64),
                "logprobs": torch.tensor(logprobs, dtype=torch.float64)}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Restore what ``state_dict`` wrote; an empty or missing state empties the buffer."""
        self.entries = {}
        if not state:
            return
        tokens = [int(x) for x in state["tokens"].tolist()]
        logprobs = [float(x) for x in state["logprobs"].tolist()]
        tasks = {tid: _task_from_state(data) for tid, data in state["tasks"].items()}
        at, lp_at = 0, 0

        def take(n: int) -> tuple[int, ...]:
            nonlocal at
            at += n
            return tuple(tokens[at - n:at])

        for entry in state["entries"]:
            groups = []
            for records in entry["groups"]:
                group = []
                for rec in records:
                    prompt = take(rec["prompt_length"])
                    turns = []
                    for turn in rec["turns"]:
                        n_action, n_obs = turn["lengths"]
                        action_ids, obs_ids = take(n_action), take(n_obs)
                        turns.append(Turn(action=turn["action"], action_token_ids=action_ids,
                                          action_logprobs=tuple(logprobs[lp_at:lp_at + n_action]),
                                          observation_token_ids=obs_ids, reward=turn["reward"], info=turn["info"]))
                        lp_at += n_action
                    group.append(Trajectory(
                        id=rec["id"], task=tasks[rec["task"]], group=rec["group"], prompt_token_ids=prompt,
                        turns=tuple(turns), final_reward=rec["final_reward"],
                        reward_components=rec["reward_components"], success=rec["success"],
                        policy_version=rec["policy_version"]))
                groups.append(tuple(group))
            self.entries[int(entry["step"])] = groups
        if at != len(tokens) or lp_at != len(logprobs):
            raise ValueError(f"replay buffer state: {len(tokens) - at} token(s) and {len(logprobs) - lp_at} log-prob(s) left over")


def importance_weights(current: Any, behaviour: Any, truncation: float) -> tuple[Any, Any]:
    """Truncated importance sampling over ``[N]`` log-probs.

    Returns:
        ``(weights, truncated)``: float32 ``[N]`` ``min(exp(current - behaviour), truncation)``
        and bool ``[N]`` where the ratio exceeded ``truncation``.
    """
    import torch

    ratio = torch.exp(current.float() - behaviour.float())
    return ratio.clamp(max=truncation), ratio > truncation


def _groups(trajectories: Sequence[Trajectory]) -> list[Group]:
    """Healthy episodes with policy tokens, grouped by ``group`` in order of first appearance."""
    out: dict[int, list[Trajectory]] = {}
    for traj in trajectories:
        if traj.failure is None and traj.num_policy_tokens > 0:
            out.setdefault(traj.group, []).append(traj)
    return [tuple(group) for group in out.values()]


def _plain(value: Any) -> Any:
    """JSON-storable copy of an ``info``/``reference`` value: containers are copied, numbers
    and strings kept, scalars with ``.item()`` (numpy, torch) unwrapped, anything else ``str``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        try:
            return _plain(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def _task_state(task: Task) -> dict[str, Any]:
    return {"id": task.id, "prompt": [_plain(m) for m in task.prompt], "reference": _plain(task.reference),
            "split": task.split}


def _task_from_state(data: Mapping[str, Any]) -> Task:
    return Task(id=data["id"], prompt=tuple(dict(m) for m in data["prompt"]), reference=data["reference"],
                split=data["split"])
