"""Methods vLLM mixes into its GPU workers (``worker_extension_cls``), reached through
``LLM.collective_rpc``: loading full weights in place, without restarting the engine."""

from __future__ import annotations


class WeightSyncExtension:
    """Mixed into vLLM's worker class; ``self.model_runner`` is the worker's."""

    def al_load_safetensors(self, path: str) -> int:
        """Load a safetensors file of Hugging Face-named weights into the running model;
        returns how many tensors were handed over."""
        from safetensors.torch import load_file

        state = load_file(path)
        self.model_runner.model.load_weights(weights=list(state.items()))
        return len(state)
