"""The vLLM engine behind the ``vllm`` backend: token ids in, token ids and log-probs out.

Written against vLLM's documented offline API (``vllm.LLM``, ``SamplingParams``,
``vllm.inputs.TokensPrompt``, ``vllm.lora.request.LoRARequest``, ``LLM.collective_rpc``
with a ``worker_extension_cls``); vllm is imported only when an engine is built.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from agent_lightning.types import Generation

from agent_lightning_vllm.adapters import AdapterVersion

WORKER_EXTENSION = "agent_lightning_vllm.worker_ext.WeightSyncExtension"


class VLLMSettings(BaseModel):
    """``backend.options`` of the ``vllm`` backend."""

    model_config = ConfigDict(extra="forbid")

    placement: Literal["colocated", "separate"] = Field(
        "colocated", description="colocated: vLLM shares the training GPU; separate: vLLM on GPU engine_gpu (a Ray actor)")
    gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0, description="fraction of the GPU vLLM may take")
    engine_gpu: int = Field(1, ge=0, description="separate placement: the CUDA device index vLLM runs on")
    tis_cap: float = Field(2.0, gt=0.0, description="truncation of the sampler/trainer importance weights")
    max_model_len: int | None = Field(None, ge=16)
    enforce_eager: bool = Field(False, description="no CUDA graphs (faster start, slower decoding)")
    dtype: str = Field("auto", description="vLLM dtype; auto: the model section's dtype")
    max_lora_rank: int | None = Field(None, ge=1, description="default: model.lora.r")
    keep_adapters: int = Field(2, ge=1, description="adapter versions kept on disk")
    sleep_while_training: bool = Field(False, description="colocated: free vLLM's GPU memory during updates")
    logprobs_mode: str = Field("processed_logprobs", description="after temperature: what training recomputes")


def sampling_seeds(count: int, generator: Any) -> list[int]:
    """One vLLM request seed per prompt from the rollout's noise.

    ``generator`` is a list of ``torch.Generator`` (one per prompt, as ``rollout.play``
    passes with per-episode seeds) or a single generator (one seed drawn per prompt).
    """
    import torch

    if isinstance(generator, (list, tuple)):
        if len(generator) != count:
            raise ValueError(f"{len(generator)} generators for {count} prompts")
        return [int(torch.randint(0, 2**31 - 1, (1,), generator=g)) for g in generator]
    return [int(x) for x in torch.randint(0, 2**31 - 1, (count,), generator=generator)]


class VLLMEngine:
    """A ``vllm.LLM`` with LoRA slots and in-place weight loading.

    Args:
        model_path: A Hugging Face model directory or Hub id (the base weights).
        settings: The backend's options.
        lora_rank: Rank of the policy's LoRA adapter; ``None`` when training the full model.
        seed: The engine's seed.
        dtype: vLLM dtype string.
    """

    def __init__(self, model_path: str, settings: VLLMSettings, *, lora_rank: int | None, seed: int, dtype: str = "auto"):
        from vllm import LLM

        kwargs: dict[str, Any] = dict(model=model_path, seed=seed, dtype=dtype,
                                      gpu_memory_utilization=settings.gpu_memory_utilization,
                                      enforce_eager=settings.enforce_eager, logprobs_mode=settings.logprobs_mode,
                                      worker_extension_cls=WORKER_EXTENSION)
        if settings.max_model_len:
            kwargs["max_model_len"] = settings.max_model_len
        if lora_rank is not None:
            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=settings.max_lora_rank or lora_rank)
        if settings.sleep_while_training:
            kwargs["enable_sleep_mode"] = True
        self.llm = LLM(**kwargs)
        self.can_sleep = settings.sleep_while_training
        self.asleep = False

    def generate(self, prompts: Sequence[Sequence[int]], *, temperature: float, top_p: float, max_new_tokens: int,
                 seeds: Sequence[int] | None, stop_token_ids: Sequence[int] = (),
                 adapter: AdapterVersion | None = None, stop: Sequence[str] = ()) -> list[Generation]:
        """One sampled continuation per prompt with the sampled token's log-prob.

        The returned ids include the stop token when one ended the sequence
        (``finish_reason == "stop"``), like the transformers backend's. ``stop`` strings end a
        sequence too and stay in it (``finish_reason == "stop_string"``); they need detokenising.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest

        self.wake_up()
        params = [SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, logprobs=0,
                                 seed=None if seeds is None else int(seeds[i]), stop_token_ids=list(stop_token_ids),
                                 stop=list(stop), include_stop_str_in_output=True, detokenize=bool(stop))
                  for i in range(len(prompts))]
        request = None if adapter is None else LoRARequest(adapter.name, adapter.int_id, adapter.path)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                                    lora_request=request, use_tqdm=False)
        return [_to_generation(out.outputs[0]) for out in outputs]

    def remove_adapter(self, int_id: int) -> None:
        """Forget a retired adapter id (best effort: vLLM evicts by LRU anyway)."""
        remove = getattr(self.llm.llm_engine, "remove_lora", None)
        if remove is not None:
            remove(int_id)

    def load_weights_file(self, path: str) -> None:
        """Load full weights (Hugging Face names, safetensors) into the running model."""
        self.wake_up()
        self.llm.collective_rpc("al_load_safetensors", args=(path,))
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """Free the GPU memory vLLM holds (weights to CPU, KV cache dropped) until the next call."""
        if self.can_sleep and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False


def _to_generation(completion: Any) -> Generation:
    """``vllm.CompletionOutput`` -> ``Generation`` (``logprobs`` holds one dict per token,
    keyed by token id, whose entry for the sampled id carries ``.logprob``)."""
    ids = tuple(int(t) for t in completion.token_ids)
    steps = completion.logprobs or []
    if len(steps) != len(ids):
        raise ValueError(f"vLLM returned {len(steps)} log-prob entries for {len(ids)} tokens")
    logprobs = tuple(float(step[token].logprob) for step, token in zip(steps, ids))
    if completion.finish_reason != "stop":
        reason = "length"
    else:  # vLLM's stop_reason is the stop string, the stop token id, or None for EOS
        reason = "stop_string" if isinstance(getattr(completion, "stop_reason", None), str) else "stop"
    return Generation(token_ids=ids, logprobs=logprobs, finish_reason=reason)


def make_engine(model_path: str, settings: VLLMSettings, *, lora_rank: int | None, seed: int, dtype: str) -> Any:
    """The engine in this process (colocated) or in a Ray actor on ``engine_gpu`` (separate).

    The actor's methods are wrapped so that callers use either the same way.
    """
    if settings.placement == "colocated":
        return VLLMEngine(model_path, settings, lora_rank=lora_rank, seed=seed, dtype=dtype)
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level="WARNING")
    env = {"CUDA_VISIBLE_DEVICES": str(settings.engine_gpu), "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}
    actor = ray.remote(VLLMEngine).options(num_gpus=0, runtime_env={"env_vars": env}).remote(
        model_path, settings, lora_rank=lora_rank, seed=seed, dtype=dtype)
    return _RemoteEngine(actor)


class _RemoteEngine:
    """Blocking calls to a ``VLLMEngine`` actor."""

    def __init__(self, actor: Any):
        self.actor = actor

    def __getattr__(self, name: str) -> Any:
        import ray

        method = getattr(self.actor, name)
        return lambda *args, **kwargs: ray.get(method.remote(*args, **kwargs))
