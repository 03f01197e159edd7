"""The ``vllm`` backend: generation through vLLM, training through the transformers backend.

Everything a backend does besides sampling (log-probs for training, optimizer, weights,
checkpoints) is the transformers backend's, on the same GPU. Sampling goes to a vLLM
engine holding the base weights:

* **LoRA** (``model.lora``): after every update the adapter is saved as a new version
  and requested with a new adapter id (``adapters.AdapterVersions``) — no weight reload.
* **Full fine-tuning**: the changed weights are written once per version and loaded in
  place by the engine's workers (``worker_ext``).
* Every sampled token comes back with its id and vLLM's log-prob; ``rollout.play``'s
  per-episode noise becomes a per-request vLLM seed.
* ``correct_sampler_mismatch`` (called by the trainer after ``algorithm.prepare``)
  recomputes the sampled tokens' log-probs with the trainer's numerics and attaches
  truncated importance weights (``tis``); ``rollout/logprob_mismatch`` reports the gap.

Config: ``backend: {name: vllm, device: cuda, options: {gpu_memory_utilization: 0.3,
placement: colocated | separate, engine_gpu: 1, tis_cap: 2.0, ...}}``
(``engine.VLLMSettings``).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

from agent_lightning.backends.transformers.backend import TransformersBackend, load_model_and_tokenizer
from agent_lightning.config import BackendConfig, ModelConfig, parse_options
from agent_lightning.types import Generation

from agent_lightning_vllm.adapters import AdapterVersions
from agent_lightning_vllm.engine import VLLMSettings, make_engine, sampling_seeds
from agent_lightning_vllm.tis import correct_batch, no_grad_logprobs


class VLLMBackend(TransformersBackend):
    """vLLM sampling + transformers training; see the module docstring."""

    description = "vLLM generation (ids + sampling log-probs, LoRA synced per version, truncated IS); transformers training"

    def __init__(self, model_config: ModelConfig, backend_config: BackendConfig, *, seed: int = 0):
        settings = parse_options(VLLMSettings, "backend.options", backend_config.options)
        if backend_config.device == "cpu":
            raise ValueError("backend.device: the vllm backend samples on CUDA GPUs; use backend.device=cuda "
                             "(or backend.name=transformers on CPU)")
        import torch

        if not torch.cuda.is_available():
            raise ValueError("backend.name: 'vllm' needs a CUDA device, and torch sees none (use backend.name=transformers)")
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise ValueError("backend.name: 'vllm' needs the vllm package (pip install agent-lightning-vllm on a CUDA machine)") from None
        super().__init__(model_config, backend_config.model_copy(update={"options": {}}), seed=seed)
        self.settings = settings
        self.workdir = Path(tempfile.mkdtemp(prefix="al-vllm-"))
        source = self._base_model_dir(model_config, seed)
        rank = model_config.lora.r if model_config.lora is not None else None
        dtype = settings.dtype if settings.dtype != "auto" else model_config.dtype
        self.engine = make_engine(source, settings, lora_rank=rank, seed=seed, dtype=dtype)
        self.adapters = AdapterVersions(self.workdir / "adapters", keep=settings.keep_adapters) if self.is_lora else None
        self._synced: int | None = None if self.is_lora else self.version  # full weights: the export is version 0

    def _base_model_dir(self, model_config: ModelConfig, seed: int) -> str:
        """A directory (or Hub id) vLLM can load the base weights from."""
        if model_config.name_or_path and not model_config.gguf_file:
            return model_config.name_or_path
        folder = self.workdir / "base"
        if self.is_lora:  # the base without adapters, rebuilt the same way (deterministic for presets)
            base, _ = load_model_and_tokenizer(model_config, seed)
        else:
            from agent_lightning.backends.transformers.modeling import causal_lm

            base = causal_lm(self.model)
        base.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        return str(folder)

    # ------------------------------------------------------------------ sampling

    def _sync(self) -> None:
        """Bring the engine to this policy version (once per version)."""
        if self._synced == self.version:
            return
        if self.adapters is not None:
            _, retired = self.adapters.publish(self.version, self.model.save_pretrained)
            for old in retired:
                self.engine.remove_adapter(old.int_id)
        else:
            from safetensors.torch import save_file

            path = self.workdir / f"weights-v{self.version}.safetensors"
            # Clones: tied weights share storage, which safetensors refuses.
            save_file({k: v.clone() for k, v in self.weights_state_dict().items()}, str(path))
            self.engine.load_weights_file(str(path))
            path.unlink()
        self._synced = self.version

    def generate(self, prompts: Sequence[Sequence[int]], *, temperature: float, top_p: float = 1.0,
                 max_new_tokens: int, generator: Any = None, stop: Sequence[str] = ()) -> list[Generation]:
        """Sample through vLLM (see ``TransformersBackend.generate`` for the contract)."""
        if not prompts:
            return []
        self._sync()
        seeds = sampling_seeds(len(prompts), generator if generator is not None else self.generator)
        return self.engine.generate(prompts, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                    seeds=seeds, stop_token_ids=self.stop_ids, stop=stop,
                                    adapter=self.adapters.current if self.adapters is not None else None)

    # ------------------------------------------------------------------ training

    def correct_sampler_mismatch(self, batch: Any, *, temperature: float) -> tuple[Any, dict[str, float]]:
        """Anchor ``batch`` to the trainer's log-probs and attach truncated IS weights (``tis``)."""
        return correct_batch(batch, no_grad_logprobs(self, temperature), self.settings.tis_cap)

    def train_mode(self, training: bool) -> None:
        if training:
            self.engine.sleep()  # colocated with sleep_while_training: give the update vLLM's memory
        super().train_mode(training)

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

