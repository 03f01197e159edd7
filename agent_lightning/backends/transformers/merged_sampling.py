"""Sampling from a LoRA policy without the adapters' per-token work (``backend.merged_sampling``).

A peft LoRA layer runs three matmuls and a handful of casts and adds for every decoded token;
on a CPU those small calls cost more than the base layer's matmul (SmolLM2-135M, 16 rows: 630
matmuls per decoded token instead of 210). :class:`MergedSampler` keeps a plain copy of the
causal LM whose adapted ``Linear`` weights hold ``W + scaling * B @ A`` of the active adapter,
rebuilt when an adapter weight changes (an optimizer step, a load, another role). Every other
parameter (embeddings, norms, the lm head) is the policy's own tensor, not a copy.

The samples' log-probs differ from the trainer's (adapters unmerged) by the float rounding of
the merge — about 1e-6 in float32; under bfloat16 autocast the merged weight is rounded to
bfloat16 once — shown as ``train/sampler_logprob_diff`` and corrected by the clipped ratio.
"""

from __future__ import annotations

import copy
from typing import Any


class MergedSampler:
    """A merged, adapter-free copy of a peft LoRA causal LM, for ``generate``.

    Args:
        peft_model: The policy (a ``peft.PeftModel`` with LoRA adapters on ``nn.Linear`` layers).
    """

    def __init__(self, peft_model: Any):
        import torch
        from peft.tuners.lora import LoraLayer

        self._layers: list[tuple[Any, Any]] = []  # (peft LoRA layer, the copy's Linear)
        adapted = {name: module for name, module in peft_model.named_modules() if isinstance(module, LoraLayer)}
        for name, module in adapted.items():
            if not isinstance(getattr(module, "base_layer", None), torch.nn.Linear):
                raise ValueError(f"backend.merged_sampling: cannot fold the adapter of '{name}' "
                                 f"({type(module).__name__}); only adapters on Linear layers")
        plain = copy.deepcopy(peft_model.base_model).unload()  # the causal LM without LoRA layers
        plain.requires_grad_(False)  # before sharing: the policy's own parameters keep their flags
        plain.eval()
        base_lm = peft_model.get_base_model()
        prefix = "base_model.model."
        for name, module in adapted.items():
            linear = plain.get_submodule(name[len(prefix):] if name.startswith(prefix) else name)
            self._layers.append((module, linear))
        # Share every parameter the merge does not change (no second copy of the embeddings).
        merged_weights = {id(linear.weight) for _, linear in self._layers}
        for module_name, module in list(plain.named_modules()):
            for param_name, param in list(module.named_parameters(recurse=False)):
                if id(param) in merged_weights:
                    continue
                full = f"{module_name}.{param_name}" if module_name else param_name
                original = _parameter(base_lm, full)
                if original is not None:
                    setattr(module, param_name, original)
        self.model = plain
        self._key: Any = None

    def refreshed(self, peft_model: Any) -> Any:
        """The merged model for the adapter active in ``peft_model`` now (re-merged if changed)."""
        import torch

        active = tuple(peft_model.active_adapters) if hasattr(peft_model, "active_adapters") else ("default",)
        key = (active, tuple(_versions(layer, active) for layer, _ in self._layers))
        if key != self._key:
            with torch.no_grad():
                for layer, linear in self._layers:
                    weight = layer.base_layer.weight.detach().float()
                    for adapter in active:
                        if adapter in layer.lora_A:
                            weight = weight + layer.get_delta_weight(adapter).float()
                    linear.weight.copy_(weight.to(linear.weight.dtype))
            self._key = key
        return self.model


def _versions(layer: Any, active: tuple[str, ...]) -> tuple[int, ...]:
    """Identity and in-place version of the weights a merge reads: the version changes at every
    optimizer step, the identity when a load replaces a tensor."""
    weights = [layer.base_layer.weight]
    for adapter in active:
        if adapter in layer.lora_A:
            weights += [layer.lora_A[adapter].weight, layer.lora_B[adapter].weight]
    return tuple((id(w), w._version) for w in weights)  # a replaced tensor counts as changed


def _parameter(base_lm: Any, name: str) -> Any:
    """The policy's parameter at ``name`` (a path in the plain copy), or ``None`` (an adapted
    layer's bias sits under ``base_layer`` in the policy: the copy keeps its own)."""
    try:
        return base_lm.get_parameter(name)
    except AttributeError:
        return None
