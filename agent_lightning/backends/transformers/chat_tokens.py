"""Chat-template arithmetic for token-in/token-out rollouts.

The training sequence is the prompt's tokens, then for each turn the *sampled* ids and
the observation's tokens. Observation tokens are the text the chat template puts after
an assistant message and before the next generation: computed once per template as a
string delta, then tokenised on its own — sampled ids are never re-tokenised.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from agent_lightning.types import Message

BUILTIN_TEMPLATES = ("chatml-tools",)
"""Chat templates shipped in ``templates/`` (``model.chat_template: <name>``)."""

_PROBE_USER = "AL_PROBE_USER"
_PROBE_REPLY = "AL_PROBE_REPLY"


def load_chat_template(source: str) -> str:
    """The text of a chat template: a built-in name (:data:`BUILTIN_TEMPLATES`) or a file path;
    ``ValueError`` naming ``model.chat_template`` otherwise."""
    from pathlib import Path

    if source in BUILTIN_TEMPLATES:
        return (Path(__file__).parent / "templates" / f"{source.replace('-', '_')}.jinja").read_text(encoding="utf-8")
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"model.chat_template: '{source}' is neither a built-in template "
                         f"({', '.join(BUILTIN_TEMPLATES)}) nor a file")
    return path.read_text(encoding="utf-8")


class ChatTokens:
    """Encodes prompts and observation deltas with a tokenizer's chat template."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"tokenizer {type(tokenizer).__name__} has no chat template; set one on the tokenizer "
                "(tokenizer.chat_template) or use an instruct/chat model"
            )
        self._base = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_REPLY}]
        self._probes: dict[str, tuple[str, str]] = {}
        self._probe(None)  # a template that cannot form observation deltas fails here, at load
        self._stop_texts = {self.tokenizer.decode([i]) for i in self.stop_token_ids()}

    def _probe(self, tools: Sequence[dict] | None) -> tuple[str, str]:
        """(text up to the end of a probe assistant reply, what the template puts after the
        reply: the end of an assistant turn) for this tool list; computed once per distinct ``tools``."""
        key = json.dumps(tools, sort_keys=True) if tools else ""
        if key not in self._probes:
            rendered = self._render(self._base, add_generation_prompt=False, tools=tools)
            cut = rendered.rfind(_PROBE_REPLY)
            if cut < 0:
                raise ValueError("the chat template does not render assistant messages verbatim")
            if len(self._probes) >= 64:  # bounded: clients may send many different tool lists
                self._probes.pop(next(iter(self._probes)))
            self._probes[key] = (rendered[: cut + len(_PROBE_REPLY)], rendered[cut + len(_PROBE_REPLY):])
        return self._probes[key]

    def _render(self, messages: Sequence[Message], *, add_generation_prompt: bool,
                tools: Sequence[dict] | None = None) -> str:
        extra = {"tools": list(tools)} if tools else {}
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt, **extra
        )

    def _encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def stop_token_ids(self) -> list[int]:
        """EOS plus any end-of-turn token the template uses after assistant messages."""
        ids = []
        eos = self.tokenizer.eos_token_id
        if isinstance(eos, int):
            ids.append(eos)
        for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
            tid = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid not in ids:
                ids.append(tid)
        return ids

    def prompt(self, messages: Sequence[Message], tools: Sequence[dict] | None = None) -> list[int]:
        """Token ids of the opening messages followed by the generation prompt; ``tools``
        (OpenAI function schemas) are rendered by the chat template where it supports them."""
        return self._encode_text(self._render(messages, add_generation_prompt=True, tools=tools))

    def observation(self, messages: Sequence[Message], *, after_stop: bool,
                    tools: Sequence[dict] | None = None) -> list[int]:
        """Token ids that follow the policy's reply: the end of the assistant turn (unless
        the policy already sampled the stop token), the observation messages, and the next
        generation prompt. ``tools``: the conversation's tool list (as given to :meth:`prompt`)."""
        _, end = self._probe(tools)
        full = self._render(self._base + list(messages), add_generation_prompt=True, tools=tools)
        # What follows the probe reply. Templates that re-render earlier turns (Qwen3 drops the
        # reasoning block of assistant turns before the last user message) change only what
        # comes *before* an earlier reply; the sampled ids already hold what the policy wrote.
        cut = full.find(_PROBE_REPLY)
        if cut < 0:
            raise ValueError("the chat template drops earlier assistant replies; cannot form observation tokens")
        delta = full[cut + len(_PROBE_REPLY):]
        if after_stop:
            for stop_text in sorted(self._stop_texts, key=len, reverse=True):
                stripped = end.lstrip()
                if stop_text and stripped.startswith(stop_text):
                    # The sampled stop token already closed the turn; keep what follows it.
                    lead = len(end) - len(stripped)
                    delta = delta[lead + len(stop_text):] if delta.startswith(end[: lead + len(stop_text)]) else delta
                    break
        return self._encode_text(delta)
