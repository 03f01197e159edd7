"""Built-in tiny random-init models for the quickstart and tests.

A tiny preset is a real ``transformers`` causal LM (Llama, Qwen2 or Mistral architecture)
built from a config in code, with a real ``PreTrainedTokenizerFast``: a word-level
vocabulary (lower-cased, split on whitespace and punctuation) with role markers as special
tokens and a chat template, so everything downstream (chat templating, stop tokens,
token-in/token-out) runs the same code paths as a Hub model.
"""

from __future__ import annotations

from typing import Any, Sequence

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>")
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>")
END_TOKEN = "<|end|>"

DEFAULT_WORDS: tuple[str, ...] = (
    "guess", "my", "the", "a", "number", "between", "and", "from", "to", "is", "it", "i",
    "higher", "lower", "than", "correct", "invalid", "try", "again", "turns", "left", "you", "win",
    "lose", "answer", "reply", "with", "one", "only", ".", ",", "!", "?", ":",
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|> {{ message['content'] }} <|end|> "
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)

ARCHITECTURES = ("llama", "qwen2", "mistral")


def build_vocab(words: Sequence[str] = DEFAULT_WORDS, max_number: int = 32) -> list[str]:
    """Token strings, in id order: specials, roles, end marker, numbers ``0..max_number``, words."""
    vocab = list(SPECIAL_TOKENS) + list(ROLE_TOKENS) + [END_TOKEN]
    vocab += [str(i) for i in range(max_number + 1)]
    vocab += [w for w in dict.fromkeys(w.lower() for w in words) if w not in vocab]
    return vocab


def build_tokenizer(words: Sequence[str] = DEFAULT_WORDS, max_number: int = 32) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` with a chat template; ``<|end|>`` is EOS."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = build_vocab(words, max_number)
    core = Tokenizer(models.WordLevel({tok: i for i, tok in enumerate(vocab)}, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token=END_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS),
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(
    tokenizer: Any,
    *,
    architecture: str = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_positions: int = 512,
    tie_embeddings: bool = False,
    seed: int = 0,
) -> Any:
    """A random-init causal LM sized for a laptop CPU; deterministic for a given seed."""
    import torch
    import transformers

    if architecture not in ARCHITECTURES:
        raise ValueError(f"model.preset_options.architecture: unknown '{architecture}' (allowed: {', '.join(ARCHITECTURES)})")
    config_cls = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "mistral": transformers.MistralConfig,
    }[architecture]
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model_cls = {
        "llama": transformers.LlamaForCausalLM,
        "qwen2": transformers.Qwen2ForCausalLM,
        "mistral": transformers.MistralForCausalLM,
    }[architecture]
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = model_cls(config)
    finally:
        torch.random.set_rng_state(state)
    return model


def build_preset(name: str, options: dict[str, Any], seed: int) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for the preset ``name`` (only ``tiny`` today)."""
    if name != "tiny":
        raise ValueError(f"model.preset: unknown preset '{name}' (allowed: tiny)")
    options = dict(options)
    words = options.pop("words", DEFAULT_WORDS)
    max_number = options.pop("max_number", 32)
    tokenizer = build_tokenizer(words, max_number)
    return build_model(tokenizer, seed=seed, **options), tokenizer
