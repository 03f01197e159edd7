"""Where LoRA adapters go: :func:`attach_lora` wraps a causal LM in peft adapters on the
modules ``model.lora.target_modules`` names, in the decoder layers ``model.lora.layers``
names (the policy backend and the reward-model trainer both use it).

Default LoRA target modules per model family (``model.lora.target_modules: auto``).

``auto`` adapts every attention and MLP projection of the decoder (the lm head and the
embeddings never), named the way each family names them. Mixture-of-experts families
(DeepSeek V2/V3) get their attention projections only: peft maps the names ``gate_proj``,
``up_proj`` and ``down_proj`` of such a model onto the fused routed-expert weights (one adapter
per expert; the shared experts are then left out), and ``all-linear`` adds the router as well.
A family missing from :data:`LORA_TARGETS` gets peft's ``all-linear`` (every ``nn.Linear``
but the output layer).
"""

from __future__ import annotations

from typing import Any

from agent_lightning.backends.transformers.seeding import seeded_init

_ATTENTION_MLP = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# config.model_type -> module names (suffixes) peft should adapt.
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    **{name: _ATTENTION_MLP for name in (
        "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "cohere", "cohere2", "granite",
    )},
    # Multi-head latent attention (q_proj without a query LoRA rank, q_a/q_b with one); MoE: no MLP.
    "deepseek_v2": ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"),
    "deepseek_v3": ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"),
    "phi": ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"),
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
}


def resolve_target_modules(model: Any, target_modules: list[str] | str) -> list[str] | str:
    """The ``target_modules`` to hand to peft: ``auto`` becomes the model family's list (or
    ``all-linear`` for a family not in the table); anything else is passed through."""
    if target_modules != "auto":
        return target_modules
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    targets = LORA_TARGETS.get(model_type or "")
    return list(targets) if targets else "all-linear"


def lora_layers(model: Any, layers: int | list[int] | None) -> list[int] | None:
    """``model.lora.layers`` as peft's ``layers_to_transform``: ``None`` (every layer), a list
    of decoder-layer indices (negative ones count from the top), or an int ``n``: the top ``n``.

    Raises ``ValueError`` naming the option for an index outside the model's layers.
    """
    if layers is None:
        return None
    config = getattr(model, "config", None)
    count = getattr(getattr(config, "text_config", config), "num_hidden_layers", None)
    if not isinstance(count, int):
        raise ValueError("model.lora.layers: the model's config has no num_hidden_layers")
    if isinstance(layers, int):
        if not 1 <= layers <= count:
            raise ValueError(f"model.lora.layers: the top {layers} layers of a {count}-layer model")
        return list(range(count - layers, count))
    resolved = sorted({i + count if i < 0 else i for i in layers})
    if not resolved or resolved[0] < 0 or resolved[-1] >= count:
        raise ValueError(f"model.lora.layers: {layers} is not a non-empty list of indices of a {count}-layer model")
    return resolved


def linear_suffixes(model: Any) -> list[str]:
    """Names (last component) of the ``nn.Linear`` modules inside the decoder layers: peft's
    ``all-linear`` spelled out, which ``layers_to_transform`` needs (it takes no string)."""
    import torch

    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}"}
    if not names:
        raise ValueError("model.lora.layers: found no linear modules inside decoder layers ('.layers.' in their names)")
    return sorted(names)


def lora_config(model: Any, lora: Any) -> Any:
    """The peft ``LoraConfig`` that ``lora`` (a ``LoraSettings``) asks for on ``model`` (the
    causal LM, not a peft wrapper).

    ``target_modules`` goes through :func:`resolve_target_modules` and ``layers`` through
    :func:`lora_layers` (peft's ``layers_to_transform``); with ``layers`` set, a string target
    (``all-linear``) is spelled out by :func:`linear_suffixes`, as peft needs a list then.
    """
    from peft import LoraConfig

    targets = resolve_target_modules(model, lora.target_modules)
    if lora.layers is not None and isinstance(targets, str):  # peft takes layers_to_transform with a list only
        targets = linear_suffixes(model)
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        layers_to_transform=lora_layers(model, lora.layers),
        task_type="CAUSAL_LM",
    )


def attach_lora(model: Any, lora: Any, seed: int | None = None) -> Any:
    """``model`` wrapped by peft with the adapters ``lora`` (a ``LoraSettings``) asks for
    (:func:`lora_config`); with ``seed``, their random init is drawn from it
    (``seeding.seeded_init``: peft draws ``lora_A`` from the global generator, so the same seed
    otherwise gave different adapters)."""
    from peft import get_peft_model

    with seeded_init(seed):
        return get_peft_model(model, lora_config(model, lora))

