"""Bradley–Terry reward models: train one from preference JSONL, save it, load it.

A reward model is a causal LM (any ``AutoModelForCausalLM``; LoRA allowed) with a scalar
head ``r = w . h_last + b`` on the final hidden state of a conversation's last token.
Conversations are tokenised exactly as rollouts are (``agent_lightning.preferences.data``), so a
model trained here scores the policy's own token streams. Training minimises

    loss = -log sigmoid(r(chosen) - r(rejected))          (mean over pairs)

with AdamW over ``epochs`` seeded shuffles of the training split, and reports the held-out
pairwise accuracy (``r(chosen) > r(rejected)``, a tie counting one half; chance is 0.5)
before and after training.

``alightning train-reward-model DATA.jsonl --output-dir DIR [model.key=value ...]`` writes::

    DIR/config.json, model.safetensors     the backbone (LoRA merged in), save_pretrained
    DIR/tokenizer.json, ...                the tokenizer, save_pretrained
    DIR/reward_head.safetensors            head weight [1, H] and bias [1]
    DIR/reward_model.json                  format, stop token, training reward mean/std,
                                           held-out accuracy before/after, options

The ``reward-model`` reward plugin (``agent_lightning.rewards.reward_model``) loads it.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field

from agent_lightning.config import ModelConfig

FORMAT = "agent-lightning-reward-model"
META_FILE = "reward_model.json"
HEAD_FILE = "reward_head.safetensors"
DEFAULT_MODEL = {"preset": "tiny", "preset_options": {"hidden_size": 64, "num_layers": 2, "num_heads": 4}}


class RewardTrainingConfig(BaseModel):
    """Options of ``alightning train-reward-model``."""

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = Field(default_factory=lambda: ModelConfig(**DEFAULT_MODEL))
    epochs: int = Field(3, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(16, ge=1, description="pairs per optimizer step")
    eval_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    eval_data: str | None = None
    max_length: int = Field(2048, ge=2, description="pairs with a longer side are dropped")
    max_grad_norm: float = Field(1.0, ge=0)
    seed: int = 0


class ScalarRewardModel:
    """A causal LM backbone plus a ``Linear(H, 1)`` head on the last token's final hidden state."""

    def __init__(self, backbone: Any, head: Any, stop_id: int):
        self.backbone = backbone
        self.head = head
        self.stop_id = stop_id

    @property
    def device(self) -> Any:
        return self.head.weight.device

    def parameters(self) -> list[Any]:
        return [p for p in self.backbone.parameters() if p.requires_grad] + list(self.head.parameters())

    def train(self, mode: bool = True) -> None:
        self.backbone.train(mode)
        self.head.train(mode)

    def score_ids(self, sequences: Sequence[Sequence[int]]) -> Any:
        """Rewards of token sequences, float32 ``[B]``, from one packed (padding-free) forward."""
        import torch

        from agent_lightning import ops

        from agent_lightning.backends.transformers import modeling

        layout = ops.pack_lengths([len(s) for s in sequences])
        ids = torch.tensor([t for s in sequences for t in s], dtype=torch.long, device=self.device)
        cu = layout.cu_seqlens.to(self.device)
        hidden = modeling.final_hidden_states(self.backbone, ids, layout.position_ids.to(self.device), cu)
        last = hidden[cu[1:].long() - 1]
        return self.head(last.to(self.head.weight.dtype)).squeeze(-1).float()


def build_head(hidden_size: int, seed: int) -> Any:
    """``Linear(H, 1)`` with seeded small random weights (so an untrained model ranks at chance)."""
    import torch

    head = torch.nn.Linear(hidden_size, 1)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.normal_(0.0, hidden_size ** -0.5, generator=generator)
        head.bias.zero_()
    return head


def pairwise_accuracy(chosen: Any, rejected: Any) -> float:
    """Fraction of pairs with ``chosen > rejected``, a tie counting one half."""
    diff = chosen - rejected
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean()) if diff.numel() else float("nan")


@dataclass
class TrainingReport:
    """What ``train_reward_model`` measured (accuracies are pairwise, chance 0.5)."""

    train_pairs: int
    eval_pairs: int
    dropped_pairs: int
    eval_accuracy_before: float
    eval_accuracy_after: float
    train_accuracy_after: float
    final_loss: float
    reward_mean: float
    reward_std: float
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def _encode_pairs(encoder: Any, pairs: Sequence[Any], max_length: int) -> tuple[list[tuple[list[int], list[int]]], int]:
    out, dropped = [], 0
    for pair in pairs:
        chosen, rejected = encoder.encode_pair(pair)
        if max(len(chosen.token_ids), len(rejected.token_ids)) > max_length:
            dropped += 1
            continue
        out.append((chosen.token_ids, rejected.token_ids))
    return out, dropped


def _score_pairs(model: ScalarRewardModel, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int) -> tuple[Any, Any]:
    import torch

    chosen, rejected = [], []
    model.train(False)
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            part = pairs[start:start + batch_size]
            rewards = model.score_ids([c for c, _ in part] + [r for _, r in part]).cpu()
            chosen.append(rewards[:len(part)])
            rejected.append(rewards[len(part):])
    empty = torch.zeros(0)
    return (torch.cat(chosen) if chosen else empty), (torch.cat(rejected) if rejected else empty)


def train_reward_model(data: str, output_dir: str, config: RewardTrainingConfig, *, log: Any = print) -> TrainingReport:
    """Train a Bradley–Terry reward model on ``data`` and save it to ``output_dir``."""
    import torch
    import torch.nn.functional as F

    from agent_lightning.backends.transformers.loading import load_model_and_tokenizer
    from agent_lightning.backends.transformers.lora_targets import attach_lora
    from agent_lightning.backends.transformers.seeding import seeded_init
    from agent_lightning.preferences.data import ConversationEncoder, load_preferences, split_pairs

    started = time.perf_counter()
    pairs = load_preferences(data, key="data")
    if config.eval_data:
        train, held = pairs, load_preferences(config.eval_data, key="--eval-data")
    else:
        train, held = split_pairs(pairs, config.eval_fraction, config.seed)
    with seeded_init(config.seed):
        backbone, tokenizer = load_model_and_tokenizer(config.model, config.seed)
        backbone = backbone.float() if config.model.dtype == "float32" else backbone
        if config.model.lora is not None:
            backbone = attach_lora(backbone, config.model.lora)
        head = build_head(backbone.config.get_text_config().hidden_size, config.seed)
    encoder = ConversationEncoder(tokenizer)
    model = ScalarRewardModel(backbone, head, encoder.stop_id)
    train_ids, dropped = _encode_pairs(encoder, train, config.max_length)
    eval_ids, dropped_eval = _encode_pairs(encoder, held, config.max_length)
    if not train_ids:
        raise ValueError(f"data: no pair of {data} fits --max-length {config.max_length}")
    before = pairwise_accuracy(*_score_pairs(model, eval_ids, config.batch_size))
    log(f"{len(train_ids)} training pairs, {len(eval_ids)} held-out; held-out pairwise accuracy before: {before:.3f}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=False)
    rng = random.Random(config.seed)
    loss_value = float("nan")
    for epoch in range(config.epochs):
        order = list(range(len(train_ids)))
        rng.shuffle(order)
        model.train(True)
        losses = []
        for start in range(0, len(order), config.batch_size):
            part = [train_ids[i] for i in order[start:start + config.batch_size]]
            rewards = model.score_ids([c for c, _ in part] + [r for _, r in part])
            loss = -F.logsigmoid(rewards[:len(part)] - rewards[len(part):]).mean()
            loss.backward()
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        loss_value = sum(losses) / len(losses)
        accuracy = pairwise_accuracy(*_score_pairs(model, eval_ids, config.batch_size))
        log(f"epoch {epoch + 1}/{config.epochs}: loss {loss_value:.4f}, held-out pairwise accuracy {accuracy:.3f}")
    train_c, train_r = _score_pairs(model, train_ids, config.batch_size)
    all_train = torch.cat([train_c, train_r])
    report = TrainingReport(
        train_pairs=len(train_ids), eval_pairs=len(eval_ids), dropped_pairs=dropped + dropped_eval,
        eval_accuracy_before=before, eval_accuracy_after=pairwise_accuracy(*_score_pairs(model, eval_ids, config.batch_size)),
        train_accuracy_after=pairwise_accuracy(train_c, train_r), final_loss=loss_value,
        reward_mean=float(all_train.mean()), reward_std=float(all_train.std()) if all_train.numel() > 1 else 1.0,
        seconds=time.perf_counter() - started,
    )
    save_reward_model(model, tokenizer, output_dir, report=report, options=config.model_dump(mode="json"))
    return report


def save_reward_model(model: ScalarRewardModel, tokenizer: Any, output_dir: str, *, report: TrainingReport | None = None,
                      options: dict[str, Any] | None = None) -> Path:
    """Write the backbone (LoRA merged), tokenizer, head and ``reward_model.json`` (no pickle)."""
    from safetensors.torch import save_file

    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    backbone = model.backbone
    if hasattr(backbone, "merge_and_unload"):
        backbone = backbone.merge_and_unload()
    backbone.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    head = {"weight": model.head.weight.detach().cpu().contiguous(), "bias": model.head.bias.detach().cpu().contiguous()}
    save_file(head, str(folder / HEAD_FILE))
    meta = {"format": FORMAT, "version": 1, "stop_id": model.stop_id, "hidden_size": int(head["weight"].shape[1])}
    if report is not None:
        meta.update(report.as_dict())
    if options is not None:
        meta["options"] = options
    (folder / META_FILE).write_text(json.dumps(meta, indent=1))
    return folder


def is_reward_model_dir(path: str | Path) -> bool:
    return (Path(path) / META_FILE).is_file()


def load_reward_model(path: str | Path, *, device: str = "cpu") -> tuple[ScalarRewardModel, Any, dict[str, Any]]:
    """``(model, tokenizer, meta)`` from a directory written by :func:`save_reward_model`."""
    import torch
    import transformers
    from safetensors.torch import load_file

    folder = Path(path)
    meta = json.loads((folder / META_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder / META_FILE}: not an agent-lightning reward model (format {meta.get('format')!r})")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    backbone = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    tensors = load_file(str(folder / HEAD_FILE))
    head = torch.nn.Linear(tensors["weight"].shape[1], 1)
    head.load_state_dict(tensors)
    model = ScalarRewardModel(backbone.to(device).eval(), head.to(device).eval(), int(meta["stop_id"]))
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer, meta


# ----------------------------------------------------------------------------- command line


def add_command(sub: Any) -> None:
    """Register ``alightning train-reward-model`` on the CLI's subparsers."""
    from agent_lightning.cli.args import rest_positional

    parser = sub.add_parser("train-reward-model", help="train a Bradley-Terry reward model from preference JSONL")
    parser.add_argument("data", help="preference JSONL (prompt / chosen / rejected; see agent_lightning.preferences.data)")
    parser.add_argument("overrides", nargs="*", metavar="model.key=value",
                        help="the policy model section, e.g. model.preset=tiny model.lora.r=8 (default: a tiny random-init Llama)")
    parser.add_argument("--output-dir", required=True, help="where the reward model is written")
    for flag, kind in (("epochs", int), ("lr", float), ("batch-size", int), ("eval-fraction", float),
                       ("max-length", int), ("seed", int)):
        parser.add_argument(f"--{flag}", type=kind, default=None)
    parser.add_argument("--eval-data", default=None, help="held-out preference JSONL (default: --eval-fraction of DATA)")
    parser.set_defaults(handler=run_command)
    rest_positional(parser, "overrides")  # model.* overrides may also follow the flags


def run_command(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from agent_lightning.config import ConfigError, apply_overrides

    for item in args.overrides:
        if not item.startswith("model."):
            raise ConfigError(f"train-reward-model: override '{item}' must set a model.* key")
    data = apply_overrides({"model": json.loads(json.dumps(DEFAULT_MODEL))}, args.overrides)
    if any(k in data["model"] for k in ("name_or_path", "gguf_file")) and not any(o.startswith("model.preset=") for o in args.overrides):
        data["model"].pop("preset", None)
        data["model"].pop("preset_options", None)
    options = {k.replace("-", "_"): v for k, v in vars(args).items()
               if k in {"epochs", "lr", "batch_size", "eval_fraction", "max_length", "seed", "eval_data"} and v is not None}
    try:
        config = RewardTrainingConfig(model=data["model"], **options)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ConfigError(f"invalid value {error.get('input')!r} for '{'.'.join(str(p) for p in error['loc'])}': {error['msg']}") from None
    try:
        report = train_reward_model(args.data, args.output_dir, config)
    except ValueError as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
    print(f"held-out pairwise accuracy: {report.eval_accuracy_before:.3f} -> {report.eval_accuracy_after:.3f} "
          f"({report.eval_pairs} pairs; train {report.train_accuracy_after:.3f} on {report.train_pairs}) "
          f"in {report.seconds:.1f}s")
    print(f"reward model: {args.output_dir}")
    return 0
