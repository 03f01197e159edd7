"""agent-lightning plugin: the ``vllm`` backend (generation through vLLM).

Registered through the ``agent_lightning`` entry point; importing this module imports
neither torch nor vllm (the backend module is loaded when the backend is built).
"""

from __future__ import annotations

from agent_lightning.hookspecs import hookimpl

__version__ = "0.1.0"


def create_vllm_backend(model_config, backend_config, *, seed: int = 0):
    """vLLM generation (token ids + sampling log-probs, LoRA synced per version, truncated IS);
    training through transformers."""
    from agent_lightning_vllm.backend import VLLMBackend

    return VLLMBackend(model_config, backend_config, seed=seed)


@hookimpl
def register_backends(register):
    register("vllm", create_vllm_backend)
