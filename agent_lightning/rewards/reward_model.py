"""``reward-model``: score trajectories with a learned reward model.

Config::

    reward:
      name: reward-model
      path: runs/rm              # from `alightning train-reward-model`, or any
                                 # AutoModelForSequenceClassification directory (one label)
      normalize: fixed           # none | running | fixed
      mean: null                 # fixed: default the reward model's training mean/std
      std: null
      clip: 5.0                  # clamp the (normalised) reward to [-clip, clip]; null: no clip
      batch_size: 16             # sequences per forward pass
      input: auto                # auto | tokens | text
      device: cpu                # cpu | cuda | auto

What the model reads (``input``):

* ``tokens`` (the default for agent-lightning reward models): the trajectory's own token
  stream, closed with the end-of-turn token when the last action did not sample it, exactly
  as ``train-reward-model`` encodes a conversation. The reward model must share the
  policy's tokenizer (train it from the same base model); an id outside its vocabulary fails
  that episode.
* ``text`` (the default for ``AutoModelForSequenceClassification`` directories): the task's
  prompt messages followed by the agent's actions as assistant messages, rendered with the
  reward model's chat template (or ``role: content`` lines without one). The environment's
  intermediate observations exist only as the policy's tokens, so they are not shown.

Normalisation: ``running`` keeps a mean/std of every raw score so far (this batch included;
not checkpointed), ``fixed`` uses ``mean``/``std``. Scores are computed in batches (the
scorer calls ``batch``; a single call scores one trajectory).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from agent_lightning.config import parse_options
from agent_lightning.hookspecs import hookimpl
from agent_lightning.types import Trajectory


class RewardModelOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    normalize: Literal["none", "running", "fixed"] = "none"
    mean: float | None = None
    std: float | None = Field(None, gt=0)
    clip: float | None = Field(None, gt=0)
    batch_size: int = Field(16, ge=1)
    input: Literal["auto", "tokens", "text"] = "auto"
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    max_length: int = Field(4096, ge=2, description="longer inputs keep their last max_length tokens")


class RunningStats:
    """Mean and (population) standard deviation of a stream of values (Welford)."""

    def __init__(self) -> None:
        self.count, self.mean, self._m2 = 0, 0.0, 0.0

    def update(self, values: Sequence[float]) -> None:
        for value in values:
            self.count += 1
            delta = value - self.mean
            self.mean += delta / self.count
            self._m2 += delta * (value - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self._m2 / self.count) if self.count else 0.0


class RewardModelScorer:
    """Callable reward: ``scorer(trajectory) -> float``; ``scorer.batch(trajectories)`` scores many."""

    def __init__(self, options: RewardModelOptions):
        import torch

        self.options = options
        folder = Path(options.path).expanduser()
        if not folder.is_dir():
            raise ValueError(f"reward.path: '{options.path}' is not a directory")
        device = "cuda" if options.device == "auto" and torch.cuda.is_available() else options.device
        device = "cpu" if device == "auto" else device
        from agent_lightning.preferences.reward_model import is_reward_model_dir, load_reward_model

        self.native = is_reward_model_dir(folder)
        self.meta: dict[str, Any] = {}
        if self.native:
            self.model, self.tokenizer, self.meta = load_reward_model(folder, device=device)
        else:
            self.model, self.tokenizer = _load_sequence_classifier(folder, device)
        self.input = options.input if options.input != "auto" else ("tokens" if self.native else "text")
        mean, std = options.mean, options.std
        if options.normalize == "fixed":
            mean = self.meta.get("reward_mean") if mean is None else mean
            std = self.meta.get("reward_std") if std is None else std
            if mean is None or std is None:
                raise ValueError(f"reward.normalize: 'fixed' needs reward.mean and reward.std ({folder} records none)")
        self.mean, self.std = mean, std
        self.running = RunningStats()
        self.vocab_size = len(self.tokenizer)

    # ------------------------------------------------------------------ inputs

    def _tokens(self, traj: Trajectory) -> list[int]:
        if self.input == "tokens":
            ids = list(traj.token_ids)
            stop = getattr(self.model, "stop_id", None)
            if stop is not None and ids and ids[-1] != stop and not (traj.turns and traj.turns[-1].observation_token_ids):
                ids.append(stop)
            bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
            if bad is not None:
                raise ValueError(f"trajectory '{traj.id}': token id {bad} is outside the reward model's vocabulary "
                                 f"of {self.vocab_size}; use reward.input=text or a reward model of the policy's tokenizer")
        else:
            ids = self._text_tokens(traj)
        return ids[-self.options.max_length:]

    def _text_tokens(self, traj: Trajectory) -> list[int]:
        messages = list(traj.task.prompt) + [{"role": "assistant", "content": t.action} for t in traj.turns]
        if self.native:
            from agent_lightning.preferences.data import ConversationEncoder

            encoder = ConversationEncoder(self.tokenizer)
            return encoder.encode(list(traj.task.prompt), messages[len(traj.task.prompt):], id=traj.id).token_ids
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False)
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        return list(self.tokenizer(text)["input_ids"])

    # ------------------------------------------------------------------ scoring

    def raw_scores(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """Unnormalised rewards of token sequences, in chunks of ``batch_size``."""
        import torch

        out: list[float] = []
        with torch.no_grad():
            for start in range(0, len(sequences), self.options.batch_size):
                part = sequences[start:start + self.options.batch_size]
                scores = self.model.score_ids(part) if self.native else _classifier_scores(self.model, self.tokenizer, part)
                out.extend(float(v) for v in scores.cpu())
        return out

    def _finish(self, raw: list[float]) -> list[float]:
        if self.options.normalize == "running":
            self.running.update(raw)
            mean, std = self.running.mean, self.running.std
        elif self.options.normalize == "fixed":
            mean, std = self.mean, self.std
        else:
            mean, std = 0.0, 1.0
        clip = self.options.clip
        out = []
        for value in raw:
            value = (value - mean) / max(std, 1e-8)
            out.append(min(clip, max(-clip, value)) if clip is not None else value)
        return out

    def batch(self, trajectories: Sequence[Trajectory]) -> list[float | BaseException]:
        """Scores in order; a trajectory that cannot be encoded gets its exception instead."""
        results: list[float | BaseException] = []
        encoded: list[tuple[int, list[int]]] = []
        for i, traj in enumerate(trajectories):
            try:
                encoded.append((i, self._tokens(traj)))
                results.append(0.0)
            except Exception as exc:  # noqa: BLE001 - fails this episode only
                results.append(exc)
        if encoded:
            scores = self._finish(self.raw_scores([ids for _, ids in encoded]))
            for (i, _), value in zip(encoded, scores):
                results[i] = value
        return results

    def __call__(self, trajectory: Trajectory) -> float:
        value = self.batch([trajectory])[0]
        if isinstance(value, BaseException):
            raise value
        return value


def _load_sequence_classifier(folder: Path, device: str) -> tuple[Any, Any]:
    import torch
    import transformers

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        model = transformers.AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ValueError(f"reward.path: {folder} is neither an agent-lightning reward model nor an "
                         f"AutoModelForSequenceClassification directory ({str(exc).splitlines()[0]})") from None
    if model.config.num_labels != 1:
        raise ValueError(f"reward.path: {folder} has {model.config.num_labels} labels; a reward model has exactly one")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device).eval(), tokenizer


def _classifier_scores(model: Any, tokenizer: Any, sequences: Sequence[Sequence[int]]) -> Any:
    """Scores of a right-padded batch; the model pools its last non-pad token."""
    import torch

    pad = model.config.pad_token_id
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, :len(seq)] = 1
    device = next(model.parameters()).device
    return model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0].float()


def reward_model(**options: Any) -> RewardModelScorer:
    """Build the ``reward-model`` reward (options in the module docstring)."""
    return RewardModelScorer(parse_options(RewardModelOptions, "reward", options))


reward_model.description = "a learned reward model (train-reward-model output or a sequence classifier), batched"  # type: ignore[attr-defined]


@hookimpl
def register_rewards(register):
    register("reward-model", reward_model)
