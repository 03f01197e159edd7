"""A backend written from ``agent_lightning.types.Backend`` alone: a pure-torch GRU policy.

It subclasses nothing and imports no other backend. Tokens: a fixed vocabulary of 64 ids,
five special ids, the ten digits, and every other word hashed into the rest (``crc32``), so
any chat message encodes; ``decode`` keeps the digits of sampled ids (what guess-number reads).
"""

from __future__ import annotations

import copy
import json
import zlib
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file

from agent_lightning.loop.schedules import lr_factor
from agent_lightning.types import Generation, Message

BOS, EOT, USER, ASSISTANT, SYSTEM = range(5)
DIGIT0 = 5
VOCAB = 64
ROLES = {"user": USER, "assistant": ASSISTANT, "system": SYSTEM, "tool": USER}


def _word_id(word: str) -> int:
    if len(word) == 1 and word.isdigit():
        return DIGIT0 + int(word)
    return DIGIT0 + 10 + zlib.crc32(word.encode()) % (VOCAB - DIGIT0 - 10)


class GRUPolicy(torch.nn.Module):
    """``ids [L] -> logits [L, VOCAB]``: embedding, one GRU layer, a linear head."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, hidden)
        self.gru = torch.nn.GRU(hidden, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.embed(ids)[None])
        return self.head(out[0])


class ContractBackend:
    """Satisfies ``agent_lightning.types.Backend`` (required members only)."""

    description = "a pure-torch GRU policy written from the Backend Protocol (tests)"

    def __init__(self, model_config: Any, backend_config: Any, *, seed: int = 0):
        torch.manual_seed(seed)
        self.policy = GRUPolicy()
        self.reference = copy.deepcopy(self.policy).requires_grad_(False)
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.version = 0
        self.vocab_size = VOCAB

    # tokens
    def _message_ids(self, messages: Sequence[Message]) -> list[int]:
        ids = []
        for message in messages:
            ids.append(ROLES.get(message.get("role", "user"), USER))
            ids += [_word_id(w) for w in str(message.get("content", "")).lower().replace(".", " ").split()]
        return ids

    def encode_prompt(self, messages: Sequence[Message]) -> list[int]:
        return [BOS, *self._message_ids(messages), ASSISTANT]

    def encode_observation(self, messages: Sequence[Message], *, after_stop: bool) -> list[int]:
        return [EOT, *self._message_ids(messages), ASSISTANT]

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(str(t - DIGIT0) for t in token_ids if DIGIT0 <= t < DIGIT0 + 10)

    # sampling
    def generate(self, prompts: Sequence[Sequence[int]], *, temperature: float, top_p: float = 1.0,
                 max_new_tokens: int, generator: Any = None, stop: Sequence[str] = ()) -> list[Generation]:
        out = []
        with torch.no_grad():
            for i, prompt in enumerate(prompts):
                gen = generator[i] if isinstance(generator, list) else (generator or self.generator)
                ids, logps, finish = list(prompt), [], "length"
                for _ in range(max_new_tokens):
                    logits = self.policy(torch.tensor(ids))[-1].float() / temperature
                    logp = torch.log_softmax(logits, -1)
                    token = int(torch.multinomial(logp.exp(), 1, generator=gen))
                    ids.append(token)
                    logps.append(float(logp[token]))
                    if token == EOT:
                        finish = "stop"
                        break
                out.append(Generation(tuple(ids[len(prompt):]), tuple(logps), finish))
        return out

    # training
    def token_logprobs(self, batch: Any, *, temperature: float, with_entropy: bool = False,
                       reference: bool = False) -> tuple[Any, Any]:
        model = self.reference if reference else self.policy
        cu = batch.cu_seqlens.tolist()
        index = batch.policy_index
        context = torch.no_grad() if reference else torch.enable_grad()
        with context:
            logits = torch.cat([model(batch.input_ids[cu[b]:cu[b + 1]]) for b in range(len(cu) - 1)])
            logp_all = torch.log_softmax(logits[index - 1].float() / temperature, -1)
            logp = logp_all.gather(1, batch.input_ids[index][:, None])[:, 0]
            entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
        return logp, entropy

    def configure_optimizer(self, *, lr: float, weight_decay: float, betas: tuple[float, float], warmup_steps: int,
                            total_steps: int, schedule: str, extra_param_groups: tuple[dict[str, Any], ...] = ()) -> None:
        groups = [{"params": list(self.policy.parameters())}, *extra_param_groups]
        self.optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=betas)

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(schedule, warmup_steps, total_steps))

    def optimizer_step(self, max_grad_norm: float, *, skip: bool = False) -> dict[str, float]:
        lr = float(self.optimizer.param_groups[0]["lr"])
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if skip:
            self.optimizer.zero_grad(set_to_none=True)
            return {"grad_norm": float("nan"), "lr": lr, "skipped": 1.0}
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
        finite = bool(torch.isfinite(norm))
        if finite:
            self.optimizer.step()
            self.scheduler.step()
            self.version += 1
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": float(norm), "lr": lr, **({} if finite else {"skipped": 1.0})}

    def train_mode(self, training: bool) -> None:
        self.policy.train(training)

    # weights and state
    def save(self, directory: str) -> None:
        from agent_lightning.loop.checkpoint import save_state

        save_file({k: v.contiguous() for k, v in self.policy.state_dict().items()}, str(Path(directory) / "gru.safetensors"))
        state = {"generator": self.generator.get_state(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict()}
        save_state(state, Path(directory) / "gru_state")
        (Path(directory) / "gru.json").write_text(json.dumps({"version": self.version}))

    def load(self, directory: str) -> None:
        from agent_lightning.loop.checkpoint import load_state

        self.policy.load_state_dict(load_file(str(Path(directory) / "gru.safetensors")))
        state = load_state(Path(directory) / "gru_state")
        self.generator.set_state(state["generator"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        self.version = int(json.loads((Path(directory) / "gru.json").read_text())["version"])

    def describe(self) -> dict[str, Any]:
        n = sum(p.numel() for p in self.policy.parameters())
        return {"model/parameters": n, "model/trainable_parameters": n, "model/device": "cpu"}
