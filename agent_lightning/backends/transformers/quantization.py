"""QLoRA: a frozen 4-bit NF4 base model (bitsandbytes) under trainable LoRA adapters.

``model.quantization: 4bit`` (with ``model.lora``) loads the base weights as NF4 with
double quantisation and computes in ``model.dtype`` (bfloat16 unless set; float32 is
allowed), then ``peft.prepare_model_for_kbit_training`` readies it (norms in float32,
input gradients on). The adapters train as with plain LoRA; checkpoints hold only them.
bitsandbytes' 4-bit kernels need a CUDA GPU: anywhere else the option is refused in one
line. Install with ``pip install 'agent-lightning[qlora]'``.
"""

from __future__ import annotations

import tempfile
from typing import Any

QUANTIZATIONS = ("4bit",)


def check_quantization(model_config: Any, device: Any) -> None:
    """Raise ``ValueError`` (one line, naming ``model.quantization``) when 4-bit loading
    cannot work here: no CUDA device, no LoRA, or no bitsandbytes."""
    import importlib.util

    value = model_config.quantization
    if value not in QUANTIZATIONS:
        raise ValueError(f"model.quantization: '{value}' is not supported (supported: {', '.join(QUANTIZATIONS)})")
    if getattr(device, "type", str(device)) != "cuda":
        raise ValueError(f"model.quantization: '{value}' (bitsandbytes NF4) needs a CUDA device, but the backend runs on "
                         f"'{device}'; remove model.quantization or use backend.device=cuda")
    if model_config.lora is None:
        raise ValueError(f"model.quantization: '{value}' freezes the base model, so it needs model.lora (adapters to train)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"model.quantization: '{value}' needs bitsandbytes (pip install 'agent-lightning[qlora]')")


def _compute_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16}.get(name, torch.bfloat16)


def load_quantized(model_config: Any, seed: int, device: Any) -> tuple[Any, Any]:
    """``(model, tokenizer)`` with 4-bit NF4 base weights on ``device`` (a CUDA device),
    prepared for k-bit training; LoRA is attached by the caller.

    Built-in presets and GGUF files are first built in full precision, written to a
    temporary directory and loaded back through ``from_pretrained`` with the 4-bit config
    (the only loading path bitsandbytes quantises on).
    """
    import transformers
    from peft import prepare_model_for_kbit_training

    from agent_lightning.backends.transformers.loading import load_model_and_tokenizer

    check_quantization(model_config, device)
    dtype = _compute_dtype(model_config.dtype)
    quant = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                            bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
    index = device.index if getattr(device, "index", None) is not None else 0
    kwargs: dict[str, Any] = {"quantization_config": quant, "dtype": dtype, "device_map": {"": index},
                              "trust_remote_code": model_config.trust_remote_code}
    if model_config.name_or_path and not model_config.gguf_file:
        if model_config.revision:
            kwargs["revision"] = model_config.revision
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_config.name_or_path, **{
            k: v for k, v in kwargs.items() if k in ("trust_remote_code", "revision")})
        model = transformers.AutoModelForCausalLM.from_pretrained(model_config.name_or_path, **kwargs)
    else:
        full, tokenizer = load_model_and_tokenizer(model_config, seed)
        with tempfile.TemporaryDirectory(prefix="al-qlora-") as folder:
            full.save_pretrained(folder)
            del full
            model = transformers.AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model, tokenizer
