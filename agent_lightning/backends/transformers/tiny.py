"""Built-in tiny random-init models for the quickstart and tests.

A tiny preset is a real ``transformers`` causal LM built from a config in code (any family of
:data:`ARCHITECTURES`: Llama, Mistral, Qwen2/3, DeepSeek V2/V3, Gemma 1/2/3, Phi/Phi-3, Cohere,
Granite), with a real ``PreTrainedTokenizerFast``: a word-level
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



def _head_dim(o: dict) -> int:
    return o["hidden_size"] // o["num_attention_heads"]


def _gemma(o: dict) -> dict:
    return {"head_dim": _head_dim(o)}


def _gemma2(o: dict) -> dict:
    # query_pre_attn_scalar is the inverse square of the attention scale (256 in the real models).
    return {"head_dim": _head_dim(o), "query_pre_attn_scalar": _head_dim(o)}


def _deepseek(o: dict) -> dict:
    """Multi-head latent attention and a small mixture of experts (layer 0 dense, the rest MoE)."""
    d = _head_dim(o)
    rope = max(2, d // 2) // 2 * 2
    return {
        "num_key_value_heads": o["num_attention_heads"],
        "q_lora_rank": o["hidden_size"] // 2,
        "kv_lora_rank": o["hidden_size"] // 2,
        "qk_rope_head_dim": rope,
        "qk_nope_head_dim": d,
        "v_head_dim": d,
        "moe_intermediate_size": max(8, o["intermediate_size"] // 4),
        "n_routed_experts": 4,
        "n_shared_experts": 1,
        "num_experts_per_tok": 2,
        "first_k_dense_replace": 1,
    }


def _deepseek_v3(o: dict) -> dict:
    return {**_deepseek(o), "n_group": 2, "topk_group": 1}


def _phi3(o: dict) -> dict:
    return {"original_max_position_embeddings": o["max_position_embeddings"]}


def _nothing(o: dict) -> dict:
    return {}


# architecture -> (transformers config class, causal LM class, extra config for tiny sizes)
ARCHITECTURE_CLASSES: dict[str, tuple[str, str, Any]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", _nothing),
    "mistral": ("MistralConfig", "MistralForCausalLM", _nothing),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", _nothing),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", _gemma),
    "deepseek_v2": ("DeepseekV2Config", "DeepseekV2ForCausalLM", _deepseek),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM", _deepseek_v3),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", _gemma),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", _gemma2),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", _gemma2),
    "phi": ("PhiConfig", "PhiForCausalLM", _nothing),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", _phi3),
    "cohere": ("CohereConfig", "CohereForCausalLM", _nothing),
    "granite": ("GraniteConfig", "GraniteForCausalLM", _nothing),
}
ARCHITECTURES = tuple(ARCHITECTURE_CLASSES)


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
    tie_embeddings: bool | None = False,
    config: dict[str, Any] | None = None,
    seed: int = 0,
) -> Any:
    """A random-init causal LM sized for a laptop CPU; deterministic for a given seed.

    Args:
        architecture: A key of :data:`ARCHITECTURE_CLASSES` (the model family).
        tie_embeddings: Share the input embedding with the lm head; ``None`` keeps the family's
            default (tied for Gemma and Cohere).
        config: Further keyword arguments of the family's transformers config, applied last
            (``{"final_logit_softcapping": 5.0}``, ``{"sliding_window": 8}``...).
    """
    import transformers

    if architecture not in ARCHITECTURE_CLASSES:
        raise ValueError(f"model.preset_options.architecture: unknown '{architecture}' (allowed: {', '.join(ARCHITECTURES)})")
    config_name, model_name, family_extras = ARCHITECTURE_CLASSES[architecture]
    config_cls, model_cls = getattr(transformers, config_name), getattr(transformers, model_name)
    sizes = dict(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        max_position_embeddings=max_positions,
    )
    kwargs = dict(
        vocab_size=len(tokenizer),
        **sizes,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if tie_embeddings is not None:
        kwargs["tie_word_embeddings"] = tie_embeddings
    kwargs.update(family_extras(sizes))
    kwargs.update(config or {})
    try:
        model_config = config_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model.preset_options: invalid {architecture} config: {exc}") from exc
    from agent_lightning.backends.transformers.seeding import seeded_init

    with seeded_init(seed):
        return model_cls(model_config)


def build_preset(name: str, options: dict[str, Any], seed: int) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for the preset ``name`` (only ``tiny`` today)."""
    if name != "tiny":
        raise ValueError(f"model.preset: unknown preset '{name}' (allowed: tiny)")
    options = dict(options)
    words = options.pop("words", DEFAULT_WORDS)
    max_number = options.pop("max_number", 32)
    tokenizer = build_tokenizer(words, max_number)
    return build_model(tokenizer, seed=seed, **options), tokenizer
