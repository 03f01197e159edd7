"""The default policy backend: any ``AutoModelForCausalLM`` through ``transformers``.

Loads from a built-in tiny preset, a Hub id or local directory (``from_pretrained``), or
a ``.gguf`` file (dequantised by transformers); optional LoRA through peft. Samples in
batches with a KV cache and a seeded generator, and computes training log-probs from the
final hidden states through ``agent_lightning.ops.token_logprobs`` (the fused path: the
``[tokens, vocab]`` logits are never materialised).
"""

from __future__ import annotations

import contextlib
import inspect
import zlib
from pathlib import Path
from typing import Any, Sequence

from agent_lightning.backends.transformers.chat_tokens import ChatTokens, load_chat_template
from agent_lightning.backends.transformers.kv_cache import StaticKVCaches, fill_prefix, fill_rows, rows_copyable
from agent_lightning.backends.transformers.loading import _dtype, load_model_and_tokenizer
from agent_lightning.backends.transformers.precision import resolve_autocast
from agent_lightning.backends.transformers.stop_strings import StopStrings
from agent_lightning.config import BackendConfig, ModelConfig
from agent_lightning.hookspecs import hookimpl
from agent_lightning.loop.schedules import lr_factor
from agent_lightning.scaling import distributed
from agent_lightning.types import Generation, Message, NoiseKeys

ADAPTER_FILE = "adapter.safetensors"
WEIGHTS_FILE = "model.safetensors"


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("backend.device: 'cuda' was asked for but torch sees no CUDA device")
    return name


class TransformersBackend:
    """Policy backend over a Hugging Face causal LM.

    Args:
        model_config: The ``model`` section.
        backend_config: The ``backend`` section.
        seed: Seeds model creation (tiny presets) and the sampling generator.
    """

    description = "Hugging Face causal LMs (presets, Hub ids, local dirs, GGUF), LoRA via peft"
    counter_noise = True
    """``generate`` takes :class:`~agent_lightning.types.NoiseKeys` (``sampling.noise: counter``)."""

    def __init__(self, model_config: ModelConfig, backend_config: BackendConfig, *, seed: int = 0):
        import torch

        if backend_config.options:
            raise ValueError(f"backend.options: the transformers backend takes none (got {sorted(backend_config.options)})")
        if backend_config.threads:
            torch.set_num_threads(backend_config.threads)
        self.device = torch.device(_resolve_device(backend_config.device))
        if self.device.type == "cpu" and backend_config.cpu_memory == "reuse":
            from agent_lightning.backends.transformers.cpu_memory import reuse_freed_memory

            reuse_freed_memory()
        if model_config.quantization:  # QLoRA: a 4-bit base placed on the GPU at load
            from agent_lightning.backends.transformers.quantization import load_quantized

            model, tokenizer = load_quantized(model_config, seed, self.device)
        else:
            model, tokenizer = load_model_and_tokenizer(model_config, seed)
        if model_config.preset and model_config.dtype != "float32" and not model_config.quantization:
            model = model.to(_dtype(model_config.dtype))
        self.is_lora = model_config.lora is not None
        self._lora_settings = model_config.lora
        self.roles: list[str] = []
        if self.is_lora:
            from agent_lightning.backends.transformers.lora_targets import attach_lora

            model = attach_lora(model, model_config.lora, seed=seed)  # the same seed, the same adapters
        self.model = model if model_config.quantization else model.to(self.device)
        from agent_lightning.backends.transformers.modeling import packed_attention_for

        # Now, not at the first training forward: generation then takes one attention path for
        # the whole run (a resumed run samples what an uninterrupted one does).
        packed_attention_for(self.model, self.device)
        if model_config.chat_template:
            tokenizer.chat_template = load_chat_template(model_config.chat_template)
        self.tokenizer = tokenizer
        self.chat = ChatTokens(tokenizer)
        self.stop_ids = self.chat.stop_token_ids()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self._seed = seed
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        # backend.autocast: auto -> bfloat16 only where the device multiplies in bfloat16 natively
        self.autocast = resolve_autocast(backend_config.autocast, self.device)
        self.share_prompts = backend_config.share_prompts  # shared_prompts.py: a group's prompt encoded once in training
        if self.autocast is not None and self.is_lora and not model_config.quantization:
            _frozen_linears_to(self.model, getattr(torch, self.autocast))
        from agent_lightning.backends.transformers.modeling import causal_lm

        # transformers 5.x renamed past_key_values to cache; ask the causal LM (not a peft wrapper).
        self._cache_kw = "cache" if "cache" in inspect.signature(causal_lm(self.model).forward).parameters else "past_key_values"
        # backend.kv_cache: static -> StaticCache buffers reused across generate calls (kv_cache.py).
        self._static_caches = (StaticKVCaches(causal_lm(self.model).config)
                               if backend_config.kv_cache == "static" else None)
        self._merged = None
        if backend_config.merged_sampling:
            if not self.is_lora or model_config.quantization:
                raise ValueError("backend.merged_sampling: folds a LoRA adapter into a sampling copy; it needs "
                                 "model.lora and no model.quantization")
            from agent_lightning.backends.transformers.merged_sampling import MergedSampler

            self._merged = MergedSampler(self.model)
        # Encode the prompts' common prefix, and each distinct prompt, once per generate call
        # (shared_prefix_length, distinct_rows).
        self.share_prefix = True
        # One-token decode steps of a plain Llama on the CPU skip the model's forward (lean_decode.py).
        self.lean_decode = True
        self._lean_weights: Any = None  # lean_decode.LeanWeights, remade when a weight changes
        self._copyable: bool | None = None
        self._reference: Any = None
        self._sampling_head_weight: Any = None  # (head weight, its version, low-precision copy)
        self._decoded: dict[tuple[int, ...], str] = {}  # decode's memo
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.version = 0

    # ------------------------------------------------------------------ tokens

    def encode_prompt(self, messages: Sequence[Message], tools: Sequence[dict] | None = None) -> list[int]:
        return self.chat.prompt(messages, tools)

    def encode_observation(self, messages: Sequence[Message], *, after_stop: bool,
                           tools: Sequence[dict] | None = None) -> list[int]:
        return self.chat.observation(messages, after_stop=after_stop, tools=tools)

    def decode(self, token_ids: Sequence[int]) -> str:
        """The action text of sampled ids; remembered for the last ``DECODE_MEMO`` distinct
        replies (the rollout decodes a reply, then ``check_invariants`` decodes it again)."""
        key = tuple(token_ids)
        text = self._decoded.get(key)
        if text is None:
            text = self.tokenizer.decode(list(key), skip_special_tokens=True).strip()
            if len(self._decoded) >= DECODE_MEMO:
                self._decoded.clear()
            self._decoded[key] = text
        return text

    def render(self, token_ids: Sequence[int]) -> str:
        """The ids as text with the chat template's special tokens (trajectory files)."""
        return self.tokenizer.decode(list(token_ids))

    @property
    def vocab_size(self) -> int:
        """Rows of the input embedding: every valid token id is below this."""
        return int(self.model.get_input_embeddings().num_embeddings)

    # ------------------------------------------------------------------ sampling

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        temperature: float,
        top_p: float = 1.0,
        max_new_tokens: int,
        generator: Any = None,
        stop: Sequence[str] = (),
    ) -> list[Generation]:
        """Sample one continuation per prompt (left-padded batch, KV cache).

        ``temperature == 0`` is greedy. A row also ends once its decoded text contains one of
        the ``stop`` strings (kept in the reply; ``finish_reason == "stop_string"``).
        ``generator`` (a CPU ``torch.Generator``, a list with one per prompt, or ``NoiseKeys``:
        counter-based uniforms for the whole batch, ``ops.keyed_noise``) defaults to the
        backend's own, whose state is checkpointed. Log-probs are under the temperature-scaled
        full distribution (before top-p truncation), which is what training recomputes. When
        the prompts share a prefix of at least ``MIN_SHARED_PREFIX`` tokens (``share_prefix``),
        it is encoded once and its KV cache copied to every row; identical prompts are encoded once
        each when that saves ``MIN_SHARED_TOKENS`` (``distinct_rows``), their cache rows copied.
        When every prompt is the same, the whole prompt is that prefix: its forward's last logits
        sample every row's first token.
        """
        import torch

        if not prompts:
            return []
        model = self.model if self._merged is None else self._merged.refreshed(self.model)
        was_training = model.training
        model.eval()
        batch = len(prompts)
        # n samples of one prompt (a group alone in its batch, a benchmark's fixed prompt): the whole
        # prompt is encoded once, at batch 1, and its last logits start every row (no suffix pass).
        sharing = self.share_prefix and batch > 1
        whole = sharing and len(prompts[0]) > 0 and all(p == prompts[0] for p in prompts[1:])
        shared = len(prompts[0]) if whole else (shared_prefix_length(prompts) if sharing else 0)
        suffixes = [p[shared:] for p in prompts]
        ids, mask, positions = self._left_padded(suffixes, offset=shared)
        # Identical prompts (a GRPO group that took the same actions) are encoded once each.
        distinct = distinct_rows(suffixes, ids.shape[1]) if sharing and self._rows_copyable() else None
        stop_ids = torch.tensor(self.stop_ids, device=self.device)
        out_ids = torch.zeros((batch, max_new_tokens), dtype=torch.long)
        out_lp = torch.zeros((batch, max_new_tokens), dtype=torch.float32)
        finished = torch.zeros(batch, dtype=torch.bool, device=self.device)
        lengths = torch.full((batch,), max_new_tokens, dtype=torch.long)
        stop_strings = StopStrings(self.tokenizer, stop, batch) if stop else None
        noise = generator or self.generator
        if isinstance(noise, NoiseKeys):
            from agent_lightning.ops.keyed_noise import keyed_uniform, keys_tensor

            if len(noise.keys) != batch:
                raise ValueError(f"generate: {len(noise.keys)} noise keys for {batch} prompts")
            noise = keyed_uniform(keys_tensor(noise.keys), torch.arange(max_new_tokens))  # [batch, max_new_tokens]
        # A static cache (backend.kv_cache: static) is sized for the whole call: prompt, then replies.
        # Sampling runs under inference_mode (no version counters or view tracking: ~7 % of a tiny
        # model's generate); the static caches' buffers are inference tensors, reset under it too.
        with torch.inference_mode():
            static = (self._static_caches.acquire(batch, shared + ids.shape[1] + max_new_tokens)
                      if self._static_caches is not None else None)
        cache = static
        step_ids, step_pos = ids, positions
        # Decode steps of a plain Llama on the CPU run from its weights (lean_decode.py), after the prefill.
        lean, lean_ready = None, None
        if self.lean_decode and self.autocast is None and self.device.type == "cpu":
            from agent_lightning.backends.transformers.lean_decode import lean_weights
            from agent_lightning.backends.transformers.modeling import causal_lm

            lean_ready = self._lean_weights = lean_weights(causal_lm(model), self._lean_weights)
        first_logits = None  # [1, vocab]: the whole shared prompt's next-token logits
        try:
            with torch.inference_mode(), self._compute(), self._sampling_head(model):
                if distinct is not None:
                    cache = None  # the distinct prompts are encoded into a dynamic cache first
                if shared:
                    # The prompts' common prefix (system prompt, worked examples) is encoded once
                    # and its KV cache copied to every row; rows then read [prefix | pad | suffix].
                    prefix = torch.tensor([prompts[0][:shared]], dtype=torch.long, device=self.device)
                    out = model(input_ids=prefix, use_cache=True, logits_to_keep=1)
                    prefix_cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
                    if whole:
                        first_logits = out.logits[:, -1, :].float()
                        step_pos = torch.full((batch, 1), shared - 1, dtype=torch.long, device=self.device)
                    if distinct is not None:  # one row per distinct prompt for now (fill_rows below)
                        cache = prefix_cache
                        cache.batch_repeat_interleave(len(distinct[0]))
                    elif static is not None and fill_prefix(static, prefix_cache, batch):
                        cache = static
                    elif hasattr(prefix_cache, "batch_repeat_interleave"):
                        cache = prefix_cache
                        cache.batch_repeat_interleave(batch)
                    else:  # a cache type that cannot be copied per row: encode whole prompts
                        cache, shared, first_logits = static, 0, None
                        step_ids, mask, step_pos = self._left_padded(prompts, offset=0)
                if shared:
                    mask = torch.cat([torch.ones((batch, shared), dtype=mask.dtype, device=self.device), mask], dim=1)
                for t in range(max_new_tokens):
                    kwargs = {self._cache_kw: cache} if cache is not None else {}
                    # The prefill of distinct prompts runs on one row each, then is copied to every row.
                    rows = (torch.tensor(distinct[0], device=self.device) if t == 0 and distinct is not None
                            else slice(None))
                    if lean is None and t > 0 and lean_ready is not None:
                        lean = self._lean_start(lean_ready, cache, mask, step_pos, max_new_tokens - t)
                    if t == 0 and first_logits is not None:
                        logits = first_logits.expand(batch, -1)
                    elif lean is not None:
                        logits = lean.step(step_ids)
                    else:
                        out = model(input_ids=step_ids[rows], attention_mask=mask[rows], position_ids=step_pos[rows],
                                    use_cache=True, logits_to_keep=1, **kwargs)
                        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
                        logits = out.logits[:, -1, :].float()
                    if isinstance(rows, torch.Tensor):
                        inverse = torch.tensor(distinct[1], device=self.device)
                        if static is not None and fill_rows(static, cache, inverse):
                            cache = static
                        else:
                            cache.reorder_cache(inverse)
                        logits = logits[inverse]
                    token, logprob = self._sample(logits, temperature, top_p,
                                                  noise[:, t] if isinstance(noise, torch.Tensor) else noise)
                    token = torch.where(finished, torch.full_like(token, self.pad_id), token)
                    out_ids[:, t] = token.cpu()
                    out_lp[:, t] = logprob.cpu()
                    just_stopped = ~finished & torch.isin(token, stop_ids)
                    lengths[just_stopped.cpu()] = t + 1
                    finished |= just_stopped
                    if stop_strings is not None:
                        hit = stop_strings.update(out_ids[:, t], finished.cpu())
                        if hit.any():
                            lengths[hit] = t + 1
                            finished |= hit.to(finished.device)
                    if bool(finished.all()):
                        break
                    step_ids = token[:, None]
                    step_pos = step_pos[:, -1:] + 1
                    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        finally:
            model.train(was_training)
        results = []
        # One conversion per tensor (not one .item() per token): rows of Python ints and floats.
        id_rows, lp_rows, row_lengths, row_finished = (out_ids.tolist(), out_lp.tolist(), lengths.tolist(),
                                                       finished.cpu().tolist())
        for row in range(batch):
            n = row_lengths[row]
            results.append(Generation(
                token_ids=tuple(id_rows[row][:n]),
                logprobs=tuple(lp_rows[row][:n]),
                finish_reason=("stop_string" if stop_strings is not None and stop_strings.hit[row] else
                               "stop" if row_finished[row] else "length"),
            ))
        return results

    def _lean_start(self, weights: Any, cache: Any, mask: Any, positions: Any, steps: int) -> Any:
        """A ``LeanDecode`` continuing from ``cache`` (``mask [batch, past + 1]``, the next token at
        ``positions [batch, 1]``), or ``None`` where the cache does not expose its tensors."""
        from agent_lightning.backends.transformers.lean_decode import LeanDecode, cache_tensors

        past = cache_tensors(cache, mask.shape[1] - 1)
        return None if past is None else LeanDecode(weights, past, mask, positions, steps)

    def _rows_copyable(self) -> bool:
        """Whether this model's dynamic KV cache can have its rows selected and repeated (checked
        once, on an empty cache built from the config)."""
        if self._copyable is None:
            try:
                from transformers import DynamicCache

                from agent_lightning.backends.transformers.modeling import causal_lm

                self._copyable = rows_copyable(DynamicCache(config=causal_lm(self.model).config))
            except Exception:  # noqa: BLE001 - a config transformers builds no dynamic cache from
                self._copyable = False
        return self._copyable

    def _left_padded(self, rows: Sequence[Sequence[int]], offset: int) -> tuple[Any, Any, Any]:
        """``(ids, mask, positions)`` ``[batch, longest]`` of left-padded rows whose first token
        sits at position ``offset`` (after a shared prefix of that length)."""
        import torch

        lengths = torch.tensor([len(r) for r in rows])
        width = int(lengths.max())
        mask = (torch.arange(width)[None, :] >= width - lengths[:, None]).long()
        # One tensor from all rows' ids (not one per row), scattered into the left-padded layout.
        flat = torch.tensor([t for row in rows for t in row], dtype=torch.long)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long).masked_scatter_(mask.bool(), flat)
        ids, mask = ids.to(self.device), mask.to(self.device)
        return ids, mask, offset + (mask.cumsum(-1) - 1).clamp(min=0)

    def _sample(self, logits: Any, temperature: float, top_p: float, generator: Any) -> tuple[Any, Any]:
        import torch

        if temperature == 0:
            token = logits.argmax(-1)
            return token, torch.log_softmax(logits, -1).gather(-1, token[:, None])[:, 0]
        logprobs = torch.log_softmax(logits / temperature, -1)
        probs = logprobs.exp()
        if top_p < 1.0:
            sorted_p, order = probs.sort(-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < top_p
            sorted_p = sorted_p * keep
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        if isinstance(generator, torch.Tensor):  # counter-based uniforms [batch]: the inverse CDF, whole batch
            from agent_lightning.ops.keyed_noise import inverse_cdf_sample

            token = inverse_cdf_sample(probs, generator)
        elif isinstance(generator, (list, tuple)):  # one generator per row: noise independent of the batch
            cpu = probs.cpu()
            token = torch.cat([torch.multinomial(cpu[i:i + 1], 1, generator=g)[0] for i, g in enumerate(generator)])
            token = token.to(logits.device)
        else:
            token = torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(logits.device)
        return token, logprobs.gather(-1, token[:, None])[:, 0]

    # ------------------------------------------------------------------ training forward

    def token_logprobs(self, batch: Any, *, temperature: float, with_entropy: bool = False,
                       reference: bool = False, with_hidden: bool = False) -> tuple[Any, ...]:
        """Log-probs (and entropy) of the policy tokens of a packed batch.

        Args:
            batch: ``agent_lightning.loop.batch.PackedBatch``.
            temperature: The sampling temperature (logits are divided by it).
            with_entropy: Also return the per-token entropy.
            reference: Use the frozen reference policy (no gradient).
            with_hidden: Also return, third, the final hidden states that predict the policy
                tokens, ``[N, H]`` in the model's dtype (for a value head).

        Returns:
            ``(logprobs [N], entropy [N] | None)`` float32 over the batch's policy tokens in
            stream order, ``N = batch.policy_index.numel()``.
        """
        from agent_lightning import ops

        with self._policy_forward(batch, reference) as (hidden, head, targets):
            out = ops.token_logprobs(hidden, head.weight, targets, bias=head.bias,
                                     logit_scale=head.logit_scale, softcap=head.softcap,
                                     temperature=temperature, return_entropy=with_entropy)
        result = (out.logprobs, out.entropy) if with_entropy else (out, None)
        return (*result, hidden) if with_hidden else result

    def token_loss(self, batch: Any, loss_of: Any, *, temperature: float,
                   with_entropy: bool = False) -> tuple[Any, Any, Any]:
        """A row-separable loss of the policy tokens' log-probs, its gradient taken in the
        forward sweep (``ops.token_logprob_loss``: three lm-head matmuls instead of four, two
        with a frozen head).

        Args:
            batch: ``agent_lightning.loop.batch.PackedBatch``.
            loss_of: ``(logprobs [N], entropy [N] | None) -> scalar``; row ``i``'s gradient must
                depend on row ``i`` alone (every clipped-surrogate, entropy and KL term with fixed
                per-token weights does), and the tensors it closes over are constants.
            temperature: The sampling temperature (logits are divided by it).
            with_entropy: Compute the entropy and pass it to ``loss_of``.

        Returns:
            ``(loss, logprobs [N], entropy [N] | None)``: the scalar loss, differentiable w.r.t.
            the policy's weights, and the detached float32 values it was computed from.
        """
        from agent_lightning import ops

        with self._policy_forward(batch, False) as (hidden, head, targets):
            out = ops.token_logprob_loss(hidden, head.weight, targets, loss_of, bias=head.bias,
                                         logit_scale=head.logit_scale, softcap=head.softcap,
                                         temperature=temperature, with_entropy=with_entropy)
        return out.loss, out.logprobs, out.entropy

    def prompt_groups(self, batch: Any) -> tuple[list[int], list[int]] | None:
        """``(groups [B], shared [B])`` of a packed batch when the training forward encodes each
        shared prompt once (``backend.share_prompts`` on a model with packed attention): rows
        of one group (``groups[b] >= 0``) share their first ``shared[b]`` tokens; ``None`` when
        every row is encoded in full. The update keeps a group in one micro-batch."""
        from agent_lightning.backends.transformers import modeling
        from agent_lightning.backends.transformers.shared_prompts import prompt_groups, prompt_lengths

        if not self.share_prompts or not modeling.packed_attention_for(self.model, self.device):
            return None
        prompts = prompt_lengths(batch.cu_seqlens, batch.policy_index, batch.policy_cu_seqlens)
        return prompt_groups(batch.input_ids, batch.cu_seqlens, prompts), prompts

    @contextlib.contextmanager
    def _policy_forward(self, batch: Any, reference: bool) -> Any:
        """In the forward passes' precision (and without grad for the reference): the final hidden
        states that predict the policy tokens ``[N, H]``, the output head, the targets ``[N]``."""
        import torch

        from agent_lightning.backends.transformers import modeling
        from agent_lightning.backends.transformers.shared_prompts import policy_hidden_states

        model = self.reference_model() if reference else self.model
        context = torch.no_grad() if reference else contextlib.nullcontext()
        adapter = self.model.disable_adapter() if reference and self.is_lora else contextlib.nullcontext()
        with context, adapter, self._compute():
            hidden = policy_hidden_states(model, batch, self.device, share=self.share_prompts)
            targets = batch.input_ids.to(self.device)[batch.policy_index.to(self.device)]
            # weight, bias, logit scale, soft-cap of the family
            yield hidden, modeling.output_head(model), targets

    @contextlib.contextmanager
    def _sampling_head(self, model: Any) -> Any:
        """For sampling under autocast with a frozen output head (LoRA): the head's weight in the
        autocast dtype, cast once and kept while it is unchanged, swapped in for the generate call.

        Autocast keeps its low-precision copy only of weights that require grad; a frozen head
        (tied to the embeddings in many models) was cast again at every decoded token — for
        SmolLM2 a ``[49152, 576]`` cast per token, 6x the time of the head's matmul itself. The
        values are the cast autocast would make, so the samples are the same.
        """
        from agent_lightning.backends.transformers import modeling

        head = modeling.causal_lm(model).get_output_embeddings() if self.autocast else None
        weight = getattr(head, "weight", None)
        import torch

        dtype = getattr(torch, self.autocast) if self.autocast else None
        if weight is None or weight.requires_grad or not weight.is_floating_point() or weight.dtype == dtype:
            yield
            return
        cached = self._sampling_head_weight
        if cached is None or cached[0] is not weight or cached[1] != weight._version:
            cached = (weight, weight._version, torch.nn.Parameter(weight.detach().to(dtype), requires_grad=False))
            self._sampling_head_weight = cached
        head.weight = cached[2]
        try:
            yield
        finally:
            head.weight = weight  # the original Parameter: a tie to the embeddings holds again

    def _compute(self) -> Any:
        """The forward passes' precision context: ``torch.autocast`` in ``backend.autocast``'s dtype,
        or nothing (float32 throughout)."""
        import torch

        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=getattr(torch, self.autocast))

    def reference_model(self) -> Any:
        """The frozen reference: the base model with adapters off (LoRA), else a frozen copy."""
        if self.is_lora:
            return self.model
        if self._reference is None:
            import copy

            self._reference = copy.deepcopy(self.model).eval()
            for p in self._reference.parameters():
                p.requires_grad_(False)
        return self._reference

    # ------------------------------------------------------------------ optimisation

    def trainable_parameters(self) -> list[Any]:
        """What the optimizer steps: the trainable weights, or with roles every role's adapter
        (only the active role's get gradients; AdamW skips the others)."""
        if self.roles:
            marks = tuple(f".{role}." for role in self.roles)
            return [p for n, p in self.model.named_parameters() if any(m in n for m in marks)]
        return [p for p in self.model.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ roles (policy endpoint)

    def add_role(self, name: str, lora: Any = None) -> None:
        """A LoRA adapter of its own for the agent role ``name`` (``agent.roles``), starting at
        the base model; ``lora``: its ``LoraSettings`` (default: ``model.lora``). Call before the
        optimizer is configured."""
        if not self.is_lora:
            raise ValueError("agent.roles: each role trains its own LoRA adapter; set model.lora")
        if not name.isidentifier() or name == "default" or name in self.roles:
            raise ValueError(f"agent.roles: '{name}' must be a new identifier (not 'default')")
        from agent_lightning.backends.transformers.lora_targets import lora_config
        from agent_lightning.backends.transformers.seeding import seeded_init

        with seeded_init(self._seed + zlib.crc32(name.encode())):  # per role, whatever the order they come in
            self.model.add_adapter(name, lora_config(self.model.get_base_model(), lora or self._lora_settings))
        self.roles.append(name)
        if self._merged is not None:  # the role's adapter may sit on other layers
            from agent_lightning.backends.transformers.merged_sampling import MergedSampler

            self._merged = MergedSampler(self.model)
        self.use_role(self.roles[0])

    def use_role(self, name: str) -> None:
        """Sample and train with the role's adapter (only it is trainable)."""
        if name not in self.roles:
            raise ValueError(f"no role '{name}' (roles: {', '.join(self.roles) or 'none'})")
        self.model.set_adapter(name)

    def configure_optimizer(self, *, lr: float, weight_decay: float, betas: tuple[float, float],
                            warmup_steps: int, total_steps: int, schedule: str,
                            extra_param_groups: Sequence[dict[str, Any]] = ()) -> None:
        """AdamW over the trainable parameters with a warmup + ``constant|linear|cosine`` schedule.

        ``extra_param_groups``: more AdamW groups (``{"params": [...], "name": str, "lr": ...}``),
        such as an algorithm's value head or critic: stepped, scheduled, clipped (each group on
        its own) and checkpointed with the policy."""
        import torch

        groups = [{"params": self.trainable_parameters()}, *extra_param_groups]
        fused = fused_adamw_supported([p for g in groups for p in g["params"]])
        self.optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=betas,
                                           **({"fused": True} if fused else {"foreach": False}))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(schedule, warmup_steps, total_steps))

    def optimizer_step(self, max_grad_norm: float, *, skip: bool = False) -> dict[str, float]:
        """Clip (each param group on its own), step, schedule, zero; returns ``grad_norm`` and
        ``lr`` of the policy, and ``grad_norm_<name>`` of each extra group.

        With ``skip`` (a non-finite loss somewhere), or when a gradient norm is NaN/inf, the
        gradients are dropped and nothing else changes (no optimizer or schedule step, same
        ``version``); the result then holds ``skipped: 1.0``.
        """
        import torch

        groups = self.optimizer.param_groups
        lr = groups[0]["lr"]
        if skip:
            self.optimizer.zero_grad(set_to_none=True)
            return {"grad_norm": float("nan"), "lr": float(lr), "skipped": 1.0}
        limit = max_grad_norm if max_grad_norm > 0 else float("inf")
        distributed.average_gradients([p for g in groups for p in g["params"]])  # across ranks (torchrun)
        norms = [distributed.clip_grad_norm_(g["params"], limit) for g in groups]  # torch's, FSDP-aware
        finite = all(torch.isfinite(n) for n in norms)
        if finite:
            self.optimizer.step()
            if groups[0].get("fused"):
                # The fused kernel writes the weights without bumping their version counters, which
                # the sampling-side caches (merged_sampling, _sampling_head) read to see a change.
                from torch.autograd.graph import increment_version

                increment_version([p for g in groups for p in g["params"]])
            self.scheduler.step()
            self.version += 1
        self.optimizer.zero_grad(set_to_none=True)
        extra = {f"grad_norm_{g.get('name', i)}": float(n) for i, (g, n) in enumerate(zip(groups, norms)) if i}
        return {"grad_norm": float(norms[0]), "lr": float(lr), **extra, **({} if finite else {"skipped": 1.0})}

    def train_mode(self, training: bool) -> None:
        self.model.train(training)

    # ------------------------------------------------------------------ weights and state

    def weights_state_dict(self, adapter: str = "default") -> dict[str, Any]:
        """Trainable weights only when LoRA (the ``adapter``), else the whole model."""
        if self.is_lora:
            from peft import get_peft_model_state_dict

            return {k: v.detach().cpu().contiguous()
                    for k, v in get_peft_model_state_dict(self.model, adapter_name=adapter).items()}
        return {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}

    def save(self, directory: str) -> None:
        """Weights as safetensors (adapter only when LoRA), plus optimizer, scheduler and
        sampling generator state (no pickle)."""
        from safetensors.torch import save_file

        from agent_lightning.loop.checkpoint import save_state

        path = Path(directory)
        tensors = self.weights_state_dict()
        if not self.is_lora:
            tensors = _dedupe_shared(tensors)
        save_file(tensors, str(path / (ADAPTER_FILE if self.is_lora else WEIGHTS_FILE)))
        for role in self.roles:  # one adapter file per agent role
            save_file(self.weights_state_dict(role), str(path / role_adapter_file(role)))
        state = {"version": self.version, "generator": self.generator.get_state()}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
            state["scheduler"] = self.scheduler.state_dict()
        save_state(state, path / "backend")

    def load(self, directory: str) -> None:
        """Restore what ``save`` wrote (weights first, then optimizer/scheduler if configured)."""
        from safetensors.torch import load_file

        from agent_lightning.loop.checkpoint import load_state

        path = Path(directory)
        if self.is_lora:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.model, require_finite(load_file(str(path / ADAPTER_FILE)), path / ADAPTER_FILE))
            for role in self.roles:
                file = path / role_adapter_file(role)
                if not file.is_file():
                    raise ValueError(f"checkpoint {path}: no adapter for role '{role}' ({file.name})")
                set_peft_model_state_dict(self.model, require_finite(load_file(str(file)), file), adapter_name=role)
        else:
            tensors = require_finite(load_file(str(path / WEIGHTS_FILE)), path / WEIGHTS_FILE)
            missing, unexpected = self.model.load_state_dict(tensors, strict=False)
            missing = [k for k in missing if not _is_tied(self.model, k)]
            if missing or unexpected:
                raise ValueError(f"checkpoint {path}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
        state = load_state(path / "backend")
        self.version = int(state["version"])
        self.generator.set_state(state["generator"])
        if self.optimizer is not None and "optimizer" in state:
            implementation = {k: self.optimizer.param_groups[0].get(k) for k in ("fused", "foreach")}
            self.optimizer.load_state_dict(state["optimizer"])
            for group in self.optimizer.param_groups:  # the saved groups carry the saving run's kernel choice
                group.update(implementation)
            self.scheduler.load_state_dict(state["scheduler"])

    def describe(self) -> dict[str, Any]:
        total = sum(p.numel() for p in self.model.parameters())
        trainable = sum(p.numel() for p in self.trainable_parameters())
        return {"model/parameters": total, "model/trainable_parameters": trainable, "model/device": str(self.device),
                "model/autocast": self.autocast or "off"}


def _frozen_linears_to(model: Any, dtype: Any) -> None:
    """Store the frozen base's decoder ``Linear`` weights in ``dtype`` (LoRA under autocast).

    Autocast caches its low-precision copy of a weight only for weights that require grad;
    frozen ones are cast again at every call — every decoded token — which made LoRA under
    autocast slower than float32. A frozen weight needs no float32 master copy, so it is kept
    in ``dtype`` (half the memory too). The adapters, embeddings, norms and the lm head
    (tied to the embeddings in many models; the training log-probs read it) stay float32.
    """
    import torch

    for name, module in model.named_modules():
        if (isinstance(module, torch.nn.Linear) and "lora_" not in name and not name.endswith("lm_head")
                and not module.weight.requires_grad):
            module.to(dtype)


def role_adapter_file(role: str) -> str:
    """The checkpoint file of an agent role's adapter."""
    return f"adapter-{role}.safetensors"


def require_finite(tensors: dict[str, Any], source: Path) -> dict[str, Any]:
    """``tensors`` unchanged, or a ``CheckpointError`` naming ``source`` and the first
    floating-point tensor that holds NaN or inf."""
    import torch

    from agent_lightning.loop.checkpoint import CheckpointError

    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{source}: weight '{name}' holds non-finite values (NaN/inf)")
    return tensors


DECODE_MEMO = 4096
"""Distinct replies whose decoded text a backend remembers (then it starts over)."""


def fused_adamw_supported(params: Sequence[Any]) -> bool:
    """Whether AdamW can take its fused kernel (``fused=True``: one kernel per parameter instead of
    a dozen elementwise ops) for ``params``: plain floating-point tensors (not FSDP's DTensors), all
    on the CPU or all on one CUDA device. On 2 CPU threads an AdamW step of SmolLM2-135M's weights
    took 549 ms with the single-tensor loop and 77 ms fused; of a 2-layer 64-wide Llama, 1.8 vs
    0.4 ms. The updates agree to float rounding (1.5e-8 after five steps)."""
    import torch

    devices = {p.device for p in params}
    return (bool(params) and len(devices) == 1 and next(iter(devices)).type in ("cpu", "cuda")
            and all(type(p.data) is torch.Tensor and p.dtype in (torch.float16, torch.bfloat16, torch.float32,
                                                                     torch.float64) for p in params))


MIN_SHARED_PREFIX = 16
MIN_SHARED_TOKENS = 512
"""A shorter shared prefix is still encoded once when that saves this many prompt tokens
(``(rows - 1) * length``): for 128 rows of one 11-token prompt (the quickstart's tiny model,
2 CPU threads) the 128 copies' prefill was about a fifth of ``generate`` (torch.profiler)."""


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix all prompts share, when worth encoding once (at least
    ``MIN_SHARED_PREFIX`` tokens, or ``MIN_SHARED_TOKENS`` saved over the rows; else 0). Every
    prompt keeps at least one token of its own, so each row has a last position to sample from."""
    first, shortest = prompts[0], min(len(p) for p in prompts)
    length = 0
    while length < shortest - 1 and all(p[length] == first[length] for p in prompts):
        length += 1
    worth = length >= MIN_SHARED_PREFIX or (length > 0 and length * (len(prompts) - 1) >= MIN_SHARED_TOKENS)
    return length if worth else 0


def distinct_rows(rows: Sequence[Sequence[int]], width: int) -> tuple[list[int], list[int]] | None:
    """``(first, inverse)`` when several rows are the same prompt and encoding each distinct one
    once saves at least ``MIN_SHARED_TOKENS`` of the left-padded ``width``: ``first[u]`` is the
    first row holding distinct prompt ``u`` and ``inverse[r]`` the distinct prompt of row ``r``
    (``rows[r] == rows[first[inverse[r]]]``). ``None`` when every row differs or it saves less.

    In a multi-turn GRPO rollout the members of a group often sent the same action and got the
    same observation, so their next prompts are identical (and long: a listing, a page).
    """
    first: list[int] = []
    inverse: list[int] = []
    seen: dict[tuple[int, ...], int] = {}
    for r, row in enumerate(rows):
        key = tuple(row)
        if key not in seen:
            seen[key] = len(first)
            first.append(r)
        inverse.append(seen[key])
    if (len(rows) - len(first)) * width < MIN_SHARED_TOKENS:
        return None
    return first, inverse


def _dedupe_shared(tensors: dict[str, Any]) -> dict[str, Any]:
    """safetensors refuses tensors sharing storage (tied embeddings): keep the first name."""
    seen: dict[tuple[int, int], str] = {}
    out = {}
    for name, tensor in tensors.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen and tensor.numel() > 0:
            continue
        seen[key] = name
        out[name] = tensor
    return out


def _is_tied(model: Any, name: str) -> bool:
    return bool(getattr(model.config, "tie_word_embeddings", False)) and "lm_head" in name


def create_backend(model_config: ModelConfig, backend_config: BackendConfig, *, seed: int = 0) -> TransformersBackend:
    return TransformersBackend(model_config, backend_config, seed=seed)


create_backend.description = TransformersBackend.description  # type: ignore[attr-defined]


@hookimpl
def register_backends(register):
    register("transformers", create_backend)

