"""Moving policy weights to rollout workers as versioned state dicts.

The payload is what ``backend.weights_state_dict()`` returns: the adapter only when the
policy is LoRA, else every weight (CPU tensors). The driver puts it into Ray's object store
once per policy version; a worker loads it only when its own version differs.
"""

from __future__ import annotations

from typing import Any, Mapping

from agent_lightning.types import Backend


def weights_payload(backend: Backend) -> dict[str, Any] | None:
    """``{name: CPU tensor}`` of the policy's trainable weights, or ``None`` for a backend
    without weights (a scripted policy)."""
    getter = getattr(backend, "weights_state_dict", None)
    return None if getter is None else getter()


def apply_weights(backend: Backend, state: Mapping[str, Any], version: int) -> None:
    """Load a ``weights_payload`` into a replica of the same model and set its version.

    Raises:
        ValueError: The payload does not fit the replica (names the first mismatches).
    """
    loader = getattr(backend, "load_weights_state_dict", None)
    if loader is not None:
        loader(state)
    elif getattr(backend, "is_lora", False):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(backend.model, dict(state))
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise ValueError(f"worker weights: adapter tensors unknown to the replica: {unexpected[:3]}")
    else:
        missing, unexpected = backend.model.load_state_dict(dict(state), strict=False)
        if missing or unexpected:
            raise ValueError(f"worker weights: payload does not match the replica (missing {missing[:3]}, unexpected {unexpected[:3]})")
    backend.version = version
