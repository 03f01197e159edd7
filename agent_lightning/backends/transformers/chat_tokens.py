"""Chat-template arithmetic for token-in/token-out rollouts.

The training sequence is the prompt's tokens, then for each turn the *sampled* ids and
the observation's tokens. Observation tokens are the text the chat template puts after
an assistant message and before the next generation: computed once per template as a
string delta, then tokenised on its own — sampled ids are never re-tokenised.
"""

from __future__ import annotations

from typing import Any, Sequence

from agent_lightning.types import Message

_PROBE_USER = "AL_PROBE_USER"
_PROBE_REPLY = "AL_PROBE_REPLY"


class ChatTokens:
    """Encodes prompts and observation deltas with a tokenizer's chat template."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"tokenizer {type(tokenizer).__name__} has no chat template; set one on the tokenizer "
                "(tokenizer.chat_template) or use an instruct/chat model"
            )
        base = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_REPLY}]
        rendered = self._render(base, add_generation_prompt=False)
        cut = rendered.rfind(_PROBE_REPLY)
        if cut < 0:
            raise ValueError("the chat template does not render assistant messages verbatim")
        self._prefix = rendered[: cut + len(_PROBE_REPLY)]
        self._assistant_end = rendered[cut + len(_PROBE_REPLY):]
        self._base = base
        self._stop_texts = {self.tokenizer.decode([i]) for i in self.stop_token_ids()}

    def _render(self, messages: Sequence[Message], *, add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
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

    def prompt(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of the opening messages followed by the generation prompt."""
        return self._encode_text(self._render(messages, add_generation_prompt=True))

    def observation(self, messages: Sequence[Message], *, after_stop: bool) -> list[int]:
        """Token ids that follow the policy's reply: the end of the assistant turn (unless
        the policy already sampled the stop token), the observation messages, and the next
        generation prompt."""
        full = self._render(self._base + list(messages), add_generation_prompt=True)
        if not full.startswith(self._prefix):
            raise ValueError("the chat template re-renders earlier turns differently; cannot form observation tokens")
        delta = full[len(self._prefix):]
        if after_stop:
            end = self._assistant_end
            for stop_text in sorted(self._stop_texts, key=len, reverse=True):
                stripped = end.lstrip()
                if stop_text and stripped.startswith(stop_text):
                    # The sampled stop token already closed the turn; keep what follows it.
                    lead = len(end) - len(stripped)
                    delta = delta[lead + len(stop_text):] if delta.startswith(end[: lead + len(stop_text)]) else delta
                    break
        return self._encode_text(delta)
