"""Padding-free forward passes through Hugging Face causal LMs.

A training batch is a packed stream of independent sequences: ``input_ids [total]``,
``position_ids [total]`` restarting at 0 for every sequence and ``cu_seqlens [B+1]``
(int32 offsets, see :func:`agent_lightning.ops.pack_lengths`). :func:`final_hidden_states`
runs the decoder over that stream as one ``[1, total]`` row, so no FLOP is spent on padding.

How attention stays within a sequence:

* CPU (and GPU without flash-attn): the attention implementation ``"al_packed"``
  (registered in ``transformers.AttentionInterface`` and ``AttentionMaskInterface``) calls
  SDPA once per sequence with a causal mask or, for rows of many sequences
  (``BUCKETED_MIN_SEQUENCES``), once per length bucket on the bucket's sequences laid out
  right-padded (causal: no padding mask needed). Its cost is ``sum(L_i^2)`` (buckets: within
  25 % of it) instead of ``B * max(L)^2`` (padded) or ``total^2`` (a dense block-diagonal mask).
* GPU with a ``flash_attention_*`` implementation chosen at load time: the model's own
  varlen path is used, fed by ``position_ids`` and the ``cu_seq_lens_*`` keyword arguments.

**The switch is permanent.** The first :func:`final_hidden_states` call sets the model's
attention implementation to ``"al_packed"`` (``set_attn_implementation``) and leaves it set;
call :func:`use_packed_attention` at load time to do it up front. ``"al_packed"`` is a
superset of ``"sdpa"``: any call that is not a packed row (a padded batch with an attention
mask, generation with a KV cache) is handed to transformers' own SDPA attention with the mask
transformers builds for SDPA, so generation and padded forwards give the same results as
before. Restoring the old implementation after each call would be wrong under gradient
checkpointing: the backward pass re-runs each layer's forward and must see packed attention
again. Models whose attention cannot be switched (not written against ``AttentionInterface``)
fall back to a padded forward (pad -> attention mask -> unpad): same hidden states, padding cost.
Attention logit soft-capping (Gemma 2's ``attn_logit_softcapping``), which SDPA cannot do, is
computed per sequence in plain torch (the eager formula), packed or not.

From hidden states to logits: :func:`output_head` gives the lm head's weight and bias plus the
transforms some families apply after it (a logit scale, a final soft-cap), everything
``agent_lightning.ops.token_logprobs`` needs to reproduce ``model(...).logits`` exactly.
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any, NamedTuple

from agent_lightning.backends.transformers.softcap_attention import softcap_attention

if TYPE_CHECKING:
    import torch

PACKED_ATTENTION = "al_packed"

# Families whose causal LM scales the lm-head output (model_type -> (config attribute, divide?)).
# The final soft-cap needs no table: every family that has one reads ``final_logit_softcapping``.
LOGIT_SCALES: dict[str, tuple[str, bool]] = {
    "cohere": ("logit_scale", False),  # logits * logit_scale
    "cohere2": ("logit_scale", False),
    "granite": ("logits_scaling", True),  # logits / logits_scaling
    "granitemoe": ("logits_scaling", True),
    "granitemoeshared": ("logits_scaling", True),
    "hyperclovax": ("logits_scaling", False),  # logits * logits_scaling (MuP)
}

_lock = threading.Lock()
_registered = False


def causal_lm(model: Any) -> Any:
    """The transformers causal LM inside ``model`` (a ``PeftModel`` is unwrapped, LoRA layers stay active)."""
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base):
        return get_base()
    return model


def decoder(model: Any) -> Any:
    """The decoder stack (``LlamaModel``, ``Qwen2Model``...) whose output is the final-normed hidden state."""
    lm = causal_lm(model)
    inner = getattr(lm, "base_model", None)
    if inner is None or inner is lm:
        raise TypeError(
            f"{type(lm).__name__} has no separate decoder (base_model); final_hidden_states needs a "
            "transformers *ForCausalLM model or a peft PeftModel wrapping one"
        )
    return inner


def lm_head(model: Any) -> tuple["torch.Tensor", "torch.Tensor | None"]:
    """The output projection of ``model``: ``(weight [V, H], bias [V] or None)``.

    Uses ``get_output_embeddings()``, so tied embeddings return the shared embedding matrix and
    a peft-wrapped model returns its base model's head.
    """
    lm = causal_lm(model)
    head = lm.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise TypeError(f"{type(lm).__name__} has no output embeddings (get_output_embeddings() returned {head!r})")
    return head.weight, getattr(head, "bias", None)


class OutputHead(NamedTuple):
    """How a causal LM turns its final hidden state ``h [.., H]`` into logits::

        y = h @ weight.T + bias;  y = y * logit_scale;  logits = softcap * tanh(y / softcap)

    (the last step only when ``softcap`` is set) — the arguments of the same names of
    ``agent_lightning.ops.token_logprobs``.
    """

    weight: "torch.Tensor"
    """``[V, H]`` lm-head weight (the embedding matrix when embeddings are tied)."""
    bias: "torch.Tensor | None"
    """``[V]`` lm-head bias (Phi), or ``None``."""
    logit_scale: float
    """Multiplies the lm-head output (Cohere ``logit_scale``, Granite ``1 / logits_scaling``)."""
    softcap: float | None
    """Final logit soft-cap (Gemma 2/3 ``final_logit_softcapping``), or ``None``."""


def output_head(model: Any) -> OutputHead:
    """The lm head of ``model`` (a causal LM or a peft wrapper) with its family's logit transforms.

    The weight and bias come from :func:`lm_head`; the soft-cap from the config's
    ``final_logit_softcapping``; the scale from :data:`LOGIT_SCALES` by ``config.model_type``.
    """
    lm = causal_lm(model)
    weight, bias = lm_head(model)
    config = lm.config
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = 1.0
    rule = LOGIT_SCALES.get(getattr(config, "model_type", ""))
    if rule is not None:
        attr, divide = rule
        value = float(getattr(config, attr))
        scale = 1.0 / value if divide else value
    return OutputHead(weight, bias, scale, None if softcap is None else float(softcap))


def _segment_sizes(query: "torch.Tensor", cu_seq_lens_q: "torch.Tensor | None", position_ids: "torch.Tensor | None"):
    """Sequence lengths of the packed row: from ``cu_seq_lens_q``, else from restarts of ``position_ids``."""
    import torch

    total = query.shape[2]
    if cu_seq_lens_q is not None:
        bounds = cu_seq_lens_q.tolist()
        if bounds[-1] != total:
            raise ValueError(f"packed attention: cu_seq_lens_q ends at {bounds[-1]} but the row has {total} tokens")
        return [end - start for start, end in zip(bounds[:-1], bounds[1:])]
    if position_ids is None:
        return [total]
    starts = torch.nonzero(position_ids.reshape(-1) == 0).flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    return [end - start for start, end in zip(starts, [*starts[1:], total])]


def packed_sdpa_attention(
    module: Any,
    query: "torch.Tensor",
    key: "torch.Tensor",
    value: "torch.Tensor",
    attention_mask: "torch.Tensor | None",
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    cu_seq_lens_q: "torch.Tensor | None" = None,
    position_ids: "torch.Tensor | None" = None,
    segment_parents: "tuple[int, ...] | None" = None,
    **kwargs: Any,
) -> tuple["torch.Tensor", None]:
    """The ``"al_packed"`` attention: causal attention restricted to each sequence of a packed row.

    A packed row is one batch row (``query.shape[0] == 1``) without attention mask or KV-cache
    prefix; its sequences come from ``cu_seq_lens_q`` or, failing that, from where
    ``position_ids`` restart at 0. Anything else is delegated to transformers' SDPA attention.

    Args:
        module: The attention module (its ``num_key_value_groups`` is used by the SDPA delegate).
        query: ``[batch, H, q_len, D]``.
        key, value: ``[batch, Hkv, kv_len, D]`` (grouped-query attention when ``Hkv < H``).
        attention_mask: ``None`` for a packed row; the SDPA mask built by transformers otherwise.
        scaling: Softmax scale (``D**-0.5`` when ``None``).
        dropout: Attention dropout probability (training mode only).
        sliding_window: Attend to at most this many most recent tokens (incl. itself), when set.
        softcap (keyword): Attention logit soft-cap ``c`` (scores become ``c * tanh(s / c)``), when set.
        cu_seq_lens_q: ``[B+1]`` integer offsets of the sequences in the packed row.
        position_ids: ``[1, q_len]`` positions (restart at 0 per sequence).
        segment_parents: Per sequence of the packed row, the earlier one whose tokens it also
            attends to (a shared prompt), or ``-1``
            (:mod:`agent_lightning.backends.transformers.segment_attention`); ``None``: none do.

    Returns:
        ``(attn_output [batch, q_len, H, D], None)``.
    """
    import torch
    import torch.nn.functional as F

    softcap = kwargs.pop("softcap", None)
    packed_row = attention_mask is None and query.shape[0] == 1 and query.shape[2] == key.shape[2]
    if not packed_row:
        if cu_seq_lens_q is not None or segment_parents is not None:
            raise ValueError(
                "packed attention got cu_seq_lens_q (or segment_parents) together with an attention mask, a "
                f"batch of {query.shape[0]} rows or a KV-cache prefix; a packed batch is one row without mask or cache"
            )
        if softcap is not None:
            return softcap_attention(module, query, key, value, _allowed(module, query, key, attention_mask),
                                     scaling, dropout, softcap), None
        if (query.shape[2] == 1 and query.device.type == "cpu" and not (dropout and module.training)
                and kwargs.get("position_bias") is None and kwargs.get("s_aux") is None):
            return _decode_step_attention(query, key, value, attention_mask, scaling), None
        from transformers import AttentionInterface

        sdpa = AttentionInterface()["sdpa"]
        return sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                    position_ids=position_ids, **kwargs)
    low = (torch.bfloat16, torch.float16)
    if query.device.type == "cpu" and (torch.is_autocast_enabled("cpu") or any(t.dtype in low for t in (query, key, value))):
        # CPU SDPA in bfloat16 (its inputs' dtype, or autocast's: the rotary embedding leaves q and
        # k in float32, v in bfloat16) is 3.5x slower than in float32 at training shapes (16
        # sequences of ~50 tokens, SmolLM2's 9 heads: 20 vs 6 ms forward + backward per layer, 2
        # threads): the attention of a packed row runs in float32, returned in the query's dtype.
        with torch.autocast("cpu", enabled=False):
            out, _ = packed_sdpa_attention(module, query.float(), key.float(), value.float(), None, scaling, dropout,
                                           sliding_window, cu_seq_lens_q, position_ids, segment_parents,
                                           softcap=softcap, **kwargs)
        return out.to(query.dtype), None
    sizes = _segment_sizes(query, cu_seq_lens_q, position_ids)
    if segment_parents is not None:
        from agent_lightning.backends.transformers.segment_attention import segment_sdpa

        return segment_sdpa(module, query, key, value, sizes, segment_parents, scaling, dropout, sliding_window,
                            softcap), None
    gqa = key.shape[1] != query.shape[1]
    if (softcap is None and (sliding_window is None or max(sizes) <= sliding_window)
            and len(sizes) >= BUCKETED_MIN_SEQUENCES):
        return _bucketed_causal_sdpa(query, key, value, sizes, scaling, dropout, gqa), None
    # One split per tensor (not a slice per sequence): its backward is a single concatenation,
    # where per-slice autograd would materialise a full-size zero gradient for every sequence.
    outputs = []
    for q, k, v in zip(*(t.split(sizes, dim=2) for t in (query, key, value))):
        length = q.shape[2]
        if length == 0:
            continue
        mask = None
        if sliding_window is not None and length > sliding_window or softcap is not None:
            idx = torch.arange(length, device=query.device)
            diff = idx[:, None] - idx[None, :]
            mask = (diff >= 0) & (diff < (sliding_window or length))
        if softcap is not None:
            outputs.append(softcap_attention(module, q, k, v, mask, scaling, dropout, softcap))
            continue
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=mask is None, scale=scaling, enable_gqa=gqa
        )
        outputs.append(out.transpose(1, 2))  # [1, L, H, D]
    return torch.cat(outputs, dim=1), None


def _decode_step_attention(query: "torch.Tensor", key: "torch.Tensor", value: "torch.Tensor",
                           attention_mask: "torch.Tensor | None", scaling: float | None) -> "torch.Tensor":
    """One query per row (a decoded token) on the CPU, as two batched matmuls and a softmax.

    CPU SDPA spends ~0.2 ms per call on a ``[128, 4, 1, 16]`` query over 16 keys (its
    per-(row, head) scheduling; the FLOPs are 0.3 M), several times these three ops.
    ``query [b, H, 1, D]``, ``key [b, Hkv, k, D]``, ``value [b, Hkv, k, Dv]``, ``attention_mask``
    bool (True: attend) or additive, broadcastable to ``[b, 1, 1, k]``, or ``None``
    -> ``[b, 1, H, Dv]``; the softmax in float32.
    """
    import torch

    b, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    q = query.reshape(b, kv_heads, heads // kv_heads, dim)  # grouped-query heads share their key head
    scores = torch.matmul(q, key.transpose(2, 3)).float() * (scaling if scaling is not None else dim ** -0.5)
    if attention_mask is not None:
        mask = attention_mask.reshape(attention_mask.shape[0], 1, 1, -1)  # [b or 1, 1, 1, k]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    return torch.matmul(probs, value).reshape(b, heads, 1, value.shape[3]).transpose(1, 2)


PADDING_BUDGET = 0.25
"""Padded attention work a bucket may add, as a fraction of its sequences' own ``sum(L_i^2)``."""

BUCKETED_MIN_SEQUENCES = 64
"""Packed rows with at least this many sequences take the bucketed path. It pays where calls
are many and short (measured on 2 CPU threads, forward + backward: 256 sequences of ~42 tokens
in a 2-layer 64-wide Llama, 158 -> 149 ms) and costs where they are few (16 sequences of ~62
tokens in a SmolLM2-135M-shaped model: 2990 -> 3136 ms, the per-layer layout copies)."""


def length_buckets(sizes: list[int], budget: float = PADDING_BUDGET) -> list[list[int]]:
    """Sequence indices grouped for batched attention: sorted by length, a bucket grows while
    ``n * max(L)^2`` stays within ``(1 + budget) * sum(L_i^2)`` of its members (empty
    sequences are left out)."""
    order = sorted((i for i, n in enumerate(sizes) if n), key=lambda i: sizes[i])
    buckets: list[list[int]] = []
    work = 0
    for i in order:
        longest = sizes[i]  # sorted: the newcomer is the longest
        if buckets and (len(buckets[-1]) + 1) * longest * longest <= (1 + budget) * (work + longest * longest):
            buckets[-1].append(i)
            work += longest * longest
        else:
            buckets.append([i])
            work = longest * longest
    return buckets


@functools.lru_cache(maxsize=16)
def _bucket_layout(sizes: tuple[int, ...], device: str) -> list[tuple["torch.Tensor", "torch.Tensor", int, int]]:
    """Per bucket: ``(packed, padded, n, max L)``, the packed positions of its tokens and their
    rows in the right-padded ``[n * max L]`` layout (built once per batch, not per layer)."""
    import torch

    starts = [0]
    for n in sizes[:-1]:
        starts.append(starts[-1] + n)
    layout = []
    for bucket in length_buckets(list(sizes)):
        longest = max(sizes[i] for i in bucket)
        lengths = torch.tensor([sizes[i] for i in bucket])
        offsets = torch.arange(int(lengths.sum())) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
        packed = torch.repeat_interleave(torch.tensor([starts[i] for i in bucket]), lengths) + offsets
        padded = torch.repeat_interleave(torch.arange(len(bucket)) * longest, lengths) + offsets
        layout.append((packed.to(device), padded.to(device), len(bucket), longest))
    return layout


def _bucketed_causal_sdpa(query: "torch.Tensor", key: "torch.Tensor", value: "torch.Tensor", sizes: list[int],
                          scaling: float | None, dropout: float, gqa: bool) -> "torch.Tensor":
    """Causal attention within each sequence of a packed row, one SDPA call per length bucket.

    The sequences of a bucket are laid out right-padded as ``[n, H, max L, D]``: under a causal
    mask a real query only sees keys at or before it, all real, so no padding mask is needed
    and the real positions are exact; the padded ones are dropped. ``query [1, H, T, D]``,
    ``key [1, Hkv, T, D]``, ``value [1, Hkv, T, Dv]`` -> ``[1, T, H, Dv]``.
    """
    import torch.nn.functional as F

    q_all, k_all, v_all = (t[0].transpose(0, 1) for t in (query, key, value))  # [T, heads, D]
    out = query.new_empty(query.shape[2], query.shape[1], value.shape[3])  # MLA: values may be narrower
    for packed, padded, count, longest in _bucket_layout(tuple(sizes), str(query.device)):

        def lay_out(t: "torch.Tensor") -> "torch.Tensor":
            rows = t.new_zeros(count * longest, t.shape[1], t.shape[2]).index_copy(0, padded, t.index_select(0, packed))
            return rows.view(count, longest, t.shape[1], t.shape[2]).transpose(1, 2)

        o = F.scaled_dot_product_attention(lay_out(q_all), lay_out(k_all), lay_out(v_all), dropout_p=dropout,
                                           is_causal=True, scale=scaling, enable_gqa=gqa)
        o = o.transpose(1, 2).reshape(count * longest, o.shape[1], o.shape[3]).index_select(0, padded)
        out = out.index_copy(0, packed, o)
    return out.unsqueeze(0)


def _allowed(module: Any, query: "torch.Tensor", key: "torch.Tensor",
             attention_mask: "torch.Tensor | None") -> "torch.Tensor | None":
    """The SDPA-style mask as booleans (True: attend) for :func:`softcap_attention`.

    ``None`` means what it means to SDPA in transformers: ``is_causal`` when the query has more
    than one token, else everything. SDPA aligns ``is_causal`` to the first key, and transformers
    leaves the mask out only where that is right: no cache (``q_len == kv_len``) or a static
    cache written from position 0 (its keys run past the queries into unwritten slots, which
    aligning to the end of the keys would attend). An additive float mask is kept as it is.
    """
    import torch

    if attention_mask is not None:
        return attention_mask
    q_len, kv_len = query.shape[2], key.shape[2]
    if q_len == 1 or not getattr(module, "is_causal", True):
        return None
    return torch.arange(q_len, device=query.device)[:, None] >= torch.arange(kv_len, device=query.device)[None, :]


def packed_attention_mask(batch_size: int, q_length: int, kv_length: int, *args: Any,
                          attention_mask: "torch.Tensor | None" = None, **kwargs: Any) -> "torch.Tensor | None":
    """Mask builder for ``"al_packed"``: none for a single unmasked row without a cache (the
    attention finds the sequences itself), transformers' SDPA mask for everything else (a static
    KV cache's keys run past the written positions: ``kv_length > q_length`` needs the mask)."""
    if attention_mask is None and batch_size == 1 and q_length == kv_length:
        return None
    from transformers import AttentionMaskInterface

    return AttentionMaskInterface()["sdpa"](batch_size, q_length, kv_length, *args,
                                            attention_mask=attention_mask, **kwargs)


def register_packed_attention() -> None:
    """Register ``"al_packed"`` with transformers' attention and mask interfaces (idempotent)."""
    global _registered
    with _lock:
        if _registered:
            return
        from transformers import AttentionInterface, AttentionMaskInterface

        AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_attention)
        AttentionMaskInterface.register(PACKED_ATTENTION, packed_attention_mask)
        _registered = True


def use_packed_attention(model: Any) -> bool:
    """Switch ``model`` (a causal LM or a peft wrapper) to ``"al_packed"`` attention, for good.

    Returns:
        ``True`` when the model now uses packed attention (or already did); ``False`` when its
        attention cannot be switched (then :func:`final_hidden_states` pads instead).
    """
    lm = causal_lm(model)
    if attention_implementation(lm) == PACKED_ATTENTION:
        return True
    if not _can_switch_attention(lm):
        return False
    register_packed_attention()
    with _lock:
        if attention_implementation(lm) != PACKED_ATTENTION:
            lm.set_attn_implementation(PACKED_ATTENTION)
    return True


def attention_implementation(lm: Any) -> str | None:
    """The attention implementation a transformers model runs (``"sdpa"``, ``"eager"``,
    ``"flash_attention_2"``, ``"al_packed"``...), as ``set_attn_implementation`` set it.

    Private API, isolated here: transformers has no public getter for it (checked against
    transformers 5.25: ``attn_implementation`` is only a ``from_pretrained``/config keyword;
    the value lives in the config property ``_attn_implementation``, which the models read).
    """
    return lm.config._attn_implementation


def _uses_flash_varlen(lm: Any, device: "torch.device") -> bool:
    impl = attention_implementation(lm) or ""
    return device.type == "cuda" and impl.startswith("flash_attention")


def packed_attention_for(model: Any, device: "torch.device | str") -> bool:
    """Switch ``model`` to ``"al_packed"`` unless it runs flash-attn varlen on ``device`` (which
    :func:`final_hidden_states` uses instead). The backend calls this at load time, so that
    generation takes the same attention path before and after the first training forward (a
    resumed run samples what an uninterrupted one does). Returns whether it now runs ``"al_packed"``,
    which is also what ``final_hidden_states(segment_parents=...)`` needs."""
    import torch

    return not _uses_flash_varlen(causal_lm(model), torch.device(device)) and use_packed_attention(model)


def _can_switch_attention(lm: Any) -> bool:
    """Whether ``lm``'s attention can be switched after loading (models written against
    ``AttentionInterface`` can).

    Private API, isolated here: transformers has no public form of this check (checked
    against transformers 5.25, where it is the classmethod
    ``PreTrainedModel._can_set_attn_implementation``, present since 4.56); the public
    ``set_attn_implementation`` only logs a warning and leaves the model as it was when it
    cannot switch. A transformers without the method counts as "cannot".
    """
    check = getattr(lm, "_can_set_attn_implementation", None)
    return bool(check()) if callable(check) else False


def _check_packed_inputs(input_ids: "torch.Tensor", position_ids: "torch.Tensor", cu_seqlens: "torch.Tensor") -> None:
    if input_ids.ndim != 1 or position_ids.shape != input_ids.shape:
        raise ValueError(
            "final_hidden_states expects flat input_ids [total] and position_ids [total]; got "
            f"{tuple(input_ids.shape)} and {tuple(position_ids.shape)}"
        )
    if cu_seqlens.ndim != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be [B+1] with B >= 1, got shape {tuple(cu_seqlens.shape)}")
    last = int(cu_seqlens[-1])
    if last != input_ids.numel():
        raise ValueError(f"cu_seqlens[-1]={last} but input_ids has {input_ids.numel()} tokens")


def padded_hidden_states(
    model: Any, input_ids: "torch.Tensor", cu_seqlens: "torch.Tensor"
) -> "torch.Tensor":
    """Reference path: pad the packed batch, run the decoder with an attention mask, unpad.

    Args:
        input_ids: ``int64 [total]`` packed tokens.
        cu_seqlens: ``int32 [B+1]`` offsets.

    Returns:
        ``[total, H]`` final hidden states, same order as ``input_ids``.
    """
    import torch

    from agent_lightning.ops.packing import pad_packed, unpad

    ids = pad_packed(input_ids, cu_seqlens, pad_value=0)  # [B, Tmax]
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
    mask = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None].to(ids.device)
    out = decoder(model)(input_ids=ids, attention_mask=mask.to(torch.int64), use_cache=False)
    return unpad(out.last_hidden_state, cu_seqlens)


def final_hidden_states(
    model: Any,
    input_ids: "torch.Tensor",
    position_ids: "torch.Tensor",
    cu_seqlens: "torch.Tensor",
    segment_parents: "tuple[int, ...] | None" = None,
) -> "torch.Tensor":
    """Final hidden states (after the last norm) of a packed batch of independent sequences.

    Args:
        model: A transformers causal LM, or a peft ``PeftModel`` wrapping one.
        input_ids: ``int64 [total]`` the sequences back to back.
        position_ids: ``int64 [total]`` restarting at 0 at every sequence start.
        cu_seqlens: ``int32 [B+1]`` offsets; sequence ``b`` is ``[cu_seqlens[b], cu_seqlens[b+1])``.
        segment_parents: ``B`` ints or ``None``: sequence ``b`` continues sequence
            ``segment_parents[b]`` (an earlier one, ``-1``: none), attending to its tokens in
            full; its ``position_ids`` continue from there. Needs :func:`packed_attention_for`.

    Returns:
        ``[total, H]`` in the model's dtype; row ``t`` is the hidden state that predicts token
        ``t + 1`` of the same sequence. Differentiable w.r.t. the model's trainable parameters.
    """
    _check_packed_inputs(input_ids, position_ids, cu_seqlens)
    if segment_parents is not None:
        if len(segment_parents) != cu_seqlens.numel() - 1:
            raise ValueError(f"segment_parents has {len(segment_parents)} entries for "
                             f"{cu_seqlens.numel() - 1} sequences")
        if not packed_attention_for(model, input_ids.device):
            raise ValueError(f"final_hidden_states: segment_parents needs the packed attention, which "
                             f"{type(causal_lm(model)).__name__} on {input_ids.device} does not run")
    lm = causal_lm(model)
    dec = decoder(model)
    row_ids = input_ids.unsqueeze(0)
    row_pos = position_ids.unsqueeze(0)
    max_len = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    if _uses_flash_varlen(lm, input_ids.device):
        import torch

        cu = cu_seqlens.to(device=input_ids.device, dtype=torch.int32)
        out = dec(
            input_ids=row_ids,
            position_ids=row_pos,
            use_cache=False,
            cu_seq_lens_q=cu,
            cu_seq_lens_k=cu,
            max_length_q=max_len,
            max_length_k=max_len,
        )
        return out.last_hidden_state[0]
    if not use_packed_attention(model):
        return padded_hidden_states(model, input_ids, cu_seqlens)
    extra = {} if segment_parents is None else {"segment_parents": tuple(segment_parents)}
    out = dec(input_ids=row_ids, position_ids=row_pos, use_cache=False, cu_seq_lens_q=cu_seqlens, max_length_q=max_len,
              **extra)
    return out.last_hidden_state[0]
