"""Decode steps of a Llama model on the CPU, computed from its weights without its ``forward``.

A decode step feeds one token per row through the model. For small models on a CPU, the
arithmetic is tiny; most of the time goes to work around it that ``transformers`` does on
every call: building the attention mask, the rotary embedding, growing every layer's
``DynamicCache`` with ``torch.cat``, and module dispatch and output bookkeeping. On the
quickstart's 2-layer model (128 rows, 64 wide), that work is about 40 % of a step.

:class:`LeanDecode` runs the same math with fewer operations:

* q, k and v are one matmul, and so are gate and up (concatenated weights, see
  :func:`lean_weights`);
* the rotary embedding is computed once per reply for all of its positions, by the model's
  own rotary module, so any rope scaling the config asks for is applied;
* keys and values go into buffers allocated once for the whole reply, written in place (a
  static KV cache's own buffers, where the prefill used one: no copy of the prompt's keys);
* attention is the CPU decode-step attention the model's ``forward`` uses too
  (``modeling._decode_step_attention``: two batched matmuls) over the written part of the
  buffers, with the padding mask built once.

The math is the model's own, and the results are the same as its ``forward``, within float
rounding; tests compare the two. :func:`lean_weights` returns ``None`` for anything else, and
``generate`` then calls ``forward``. That covers other families, attention or MLP biases,
LoRA layers not merged, quantized layers, a non-CPU device and autocast. Forward hooks on the
model's modules do not run in lean steps; ``backend.lean_decode = False`` keeps ``forward``.

The prompt itself (the prefill) still goes through ``forward``. The lean steps start from the
KV cache that pass leaves: a ``DynamicCache`` or ``StaticCache`` whose layers expose ``keys``
and ``values``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch

FUSE_MAX_ELEMENTS = 1 << 23
"""Concatenated q/k/v and gate/up weights are kept, per model, when they total at most this many
elements (8M: 32 MiB in float32). Above that the layers are wide enough for the matmuls to
dominate, so the separate weights are multiplied and their outputs concatenated; this avoids
a copy of most of the model at every optimizer step."""


class LeanLayer(NamedTuple):
    """One decoder layer's weights: each projection as a tuple of weights whose outputs are
    concatenated (one fused weight, or the model's own separate weights)."""

    input_norm: torch.Tensor  # [hidden]
    qkv: tuple[torch.Tensor, ...]  # rows: q (heads * head_dim), k, v (kv_heads * head_dim each)
    out: torch.Tensor  # [hidden, heads * head_dim]
    post_norm: torch.Tensor  # [hidden]
    gate_up: tuple[torch.Tensor, ...]  # rows: gate (intermediate), up (intermediate)
    down: torch.Tensor  # [hidden, intermediate]


class LeanWeights(NamedTuple):
    """What :class:`LeanDecode` reads from a model (views of its parameters, or fused copies).

    ``key`` identifies the parameters and their in-place versions, so fused copies are remade
    after every optimizer step, and only then."""

    key: tuple
    embed: torch.Tensor  # [vocab, hidden]
    layers: tuple[LeanLayer, ...]
    final_norm: torch.Tensor  # [hidden]
    head: torch.Tensor  # [vocab, hidden]
    eps: float
    heads: int
    kv_heads: int
    head_dim: int
    scaling: float
    rotary: Any  # the model's rotary embedding module: (x, position_ids) -> (cos, sin)


def _plain_llama(lm: Any) -> bool:
    """Whether ``lm`` is a ``LlamaForCausalLM`` whose layers are exactly the stock modules (no
    LoRA or quantized linears, no biases, SiLU MLP) on the CPU."""
    import torch
    from transformers.models.llama import modeling_llama as llama

    if type(lm) is not llama.LlamaForCausalLM:
        return False
    config = lm.config
    if (getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)
            or config.hidden_act != "silu" or (getattr(config, "pretraining_tp", 1) or 1) != 1):
        return False
    if lm.lm_head.bias is not None or lm.lm_head.weight.device.type != "cpu":
        return False
    linear = torch.nn.Linear
    for layer in lm.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        projections = (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj,
                       mlp.gate_proj, mlp.up_proj, mlp.down_proj)
        if any(type(p) is not linear for p in projections):
            return False
        if type(mlp.act_fn).__name__ not in ("SiLU", "SiLUActivation"):
            return False
    return True


def lean_weights(lm: Any, previous: LeanWeights | None = None) -> LeanWeights | None:
    """The weights of ``lm`` (a causal LM, not a peft wrapper) for :class:`LeanDecode`, or
    ``None`` when it is not a plain Llama on the CPU (see the module docstring).

    ``previous`` (this function's last result for the same model) is returned as it is while
    none of its parameters has changed: the fused copies are made once per weight update.
    """
    if not _plain_llama(lm):
        return None
    import torch

    layers = lm.model.layers
    sources = [lm.model.embed_tokens.weight, lm.model.norm.weight, lm.lm_head.weight]
    for layer in layers:
        a, m = layer.self_attn, layer.mlp
        sources += [layer.input_layernorm.weight, a.q_proj.weight, a.k_proj.weight, a.v_proj.weight,
                    a.o_proj.weight, layer.post_attention_layernorm.weight, m.gate_proj.weight,
                    m.up_proj.weight, m.down_proj.weight]
    if len({w.dtype for w in sources}) != 1 or not sources[0].is_floating_point():
        return None
    key = tuple((id(w), w._version) for w in sources)
    if previous is not None and previous.key == key:
        return previous
    fused_size = sum(a.q_proj.weight.numel() + a.k_proj.weight.numel() + a.v_proj.weight.numel()
                     + m.gate_proj.weight.numel() + m.up_proj.weight.numel()
                     for a, m in ((layer.self_attn, layer.mlp) for layer in layers))
    fuse = fused_size <= FUSE_MAX_ELEMENTS

    def grouped(*weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (torch.cat([w.detach() for w in weights]),) if fuse else tuple(w.detach() for w in weights)

    lean_layers = tuple(
        LeanLayer(
            input_norm=layer.input_layernorm.weight.detach(),
            qkv=grouped(layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight, layer.self_attn.v_proj.weight),
            out=layer.self_attn.o_proj.weight.detach(),
            post_norm=layer.post_attention_layernorm.weight.detach(),
            gate_up=grouped(layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight),
            down=layer.mlp.down_proj.weight.detach(),
        )
        for layer in layers
    )
    config = lm.config
    first = layers[0].self_attn
    return LeanWeights(
        key=key, embed=lm.model.embed_tokens.weight.detach(), layers=lean_layers,
        final_norm=lm.model.norm.weight.detach(), head=lm.lm_head.weight.detach(),
        eps=float(config.rms_norm_eps), heads=config.num_attention_heads, kv_heads=config.num_key_value_heads,
        head_dim=first.head_dim, scaling=float(first.scaling), rotary=lm.model.rotary_emb,
    )


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm, in the same order of operations (float32 statistics)."""
    import torch

    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _project(x: torch.Tensor, weights: tuple[torch.Tensor, ...]) -> torch.Tensor:
    import torch

    F = torch.nn.functional
    if len(weights) == 1:
        return F.linear(x, weights[0])
    return torch.cat([F.linear(x, w) for w in weights], dim=-1)


def cache_tensors(cache: Any, length: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Every layer's ``(keys, values)`` ``[batch or 1, kv_heads, positions, head_dim]`` from a
    transformers cache whose first ``length`` positions are written, or ``None`` when its layers
    do not expose them (another cache type). A ``DynamicCache`` holds exactly ``length``
    positions; a ``StaticCache`` gives its whole buffers (``positions >= length``), which
    :class:`LeanDecode` then writes in place instead of copying."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not layers:
        return None
    pairs = []
    for layer in layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if keys is None or values is None or keys.dim() != 4 or keys.shape[2] < length:
            return None
        if type(layer) is DynamicLayer and keys.shape[2] != length:
            return None  # a dynamic layer holds exactly what was encoded
        pairs.append((keys, values))
    return pairs


def _writable(buffer: torch.Tensor, batch: int, capacity: int, dtype: Any) -> bool:
    """Whether decode steps can write ``buffer`` in place: one row per sequence, the decode
    dtype, room for ``capacity`` positions."""
    return buffer.shape[0] == batch and buffer.shape[2] >= capacity and buffer.dtype == dtype


class LeanDecode:
    """Decode steps for one ``generate`` call, from where the prefill left off.

    Args:
        weights: From :func:`lean_weights`.
        past: Every layer's ``(keys, values)`` ``[batch or 1, kv_heads, positions, head_dim]``
            with the first ``past`` positions written (:func:`cache_tensors`). Buffers of
            ``batch`` rows, the weights' dtype and room for ``past + steps`` positions (a static
            cache's) are written in place: the decoded positions overwrite their unwritten
            tail. Others are copied into new buffers (a static cache of 80 rows of 1,200
            positions holds 4.4 GB for SmolLM2-135M: a copy would double that).
        mask: ``[batch, past + 1]`` attention mask (1: attend, 0: left padding) of the first
            step: the past positions and the first decoded token.
        positions: ``[batch, 1]`` position id of the first decoded token.
        steps: At most this many :meth:`step` calls follow.
    """

    def __init__(self, weights: LeanWeights, past: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor,
                 positions: torch.Tensor, steps: int):
        import torch

        self.w = weights
        batch, width = mask.shape
        self.batch = batch
        self.length = width - 1  # positions written so far
        capacity = self.length + steps
        dtype = weights.head.dtype
        self.keys, self.values = [], []
        self.in_place = bool(past) and all(_writable(k, batch, capacity, dtype) and _writable(v, batch, capacity, dtype)
                                           for k, v in past)
        for keys, values in past:
            if self.in_place:
                self.keys.append(keys)
                self.values.append(values)
                continue
            k = torch.empty((batch, weights.kv_heads, capacity, weights.head_dim), dtype=dtype)
            v = torch.empty_like(k)
            k[:, :, :self.length] = keys[:, :, :self.length]
            v[:, :, :self.length] = values[:, :, :self.length]
            self.keys.append(k)
            self.values.append(v)
        padded = not bool(mask.all())
        self.bias = None  # [batch, 1, 1, capacity] additive: -inf at left padding
        if padded:
            self.bias = torch.zeros((batch, 1, 1, capacity), dtype=torch.float32)
            self.bias[:, 0, 0, :width].masked_fill_(mask == 0, float("-inf"))
        # cos, sin [batch, steps, head_dim] for every position this call can reach, at once
        ahead = positions + torch.arange(steps)[None, :]
        self.cos, self.sin = weights.rotary(weights.head, ahead)  # its first argument gives only dtype and device
        self.step_index = 0

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Feed ``ids [batch, 1]`` (one token per row) and return the next-token logits
        ``[batch, vocab]`` (float32), as ``model(...).logits[:, -1]`` would."""
        import torch

        from agent_lightning.backends.transformers.modeling import (
            _decode_step_attention,
        )

        F = torch.nn.functional
        w, batch, n, t = self.w, self.batch, self.length, self.step_index
        heads, kv_heads, dim = w.heads, w.kv_heads, w.head_dim
        if t >= self.cos.shape[1]:
            raise RuntimeError(f"LeanDecode: step {t + 1} beyond the {self.cos.shape[1]} steps it was sized for")
        cos = self.cos[:, t].reshape(batch, 1, 1, dim)
        sin = self.sin[:, t].reshape(batch, 1, 1, dim)
        half = dim // 2
        x = F.embedding(ids, w.embed)  # [batch, 1, hidden]
        bias = None if self.bias is None else self.bias[..., :n + 1]
        for i, layer in enumerate(w.layers):
            qkv = _project(_rms_norm(x, layer.input_norm, w.eps), layer.qkv)  # [batch, 1, (heads + 2 kv) * dim]
            # q and k rotated together: [batch, heads + kv_heads, 1, dim]
            qk = qkv[..., :(heads + kv_heads) * dim].view(batch, 1, heads + kv_heads, dim).transpose(1, 2)
            qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin
            self.keys[i][:, :, n:n + 1] = qk[:, heads:]
            self.values[i][:, :, n:n + 1] = qkv[..., (heads + kv_heads) * dim:].view(batch, 1, kv_heads, dim).transpose(1, 2)
            attended = _decode_step_attention(qk[:, :heads], self.keys[i][:, :, :n + 1], self.values[i][:, :, :n + 1],
                                              bias, w.scaling).reshape(batch, 1, heads * dim)
            x = x + F.linear(attended, layer.out)
            gate, up = _project(_rms_norm(x, layer.post_norm, w.eps), layer.gate_up).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer.down)
        self.length += 1
        self.step_index += 1
        return F.linear(_rms_norm(x[:, -1], w.final_norm, w.eps), w.head).float()
