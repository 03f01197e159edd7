"""A static KV cache for ``generate``, allocated once and reused across calls (``backend.kv_cache: static``).

transformers' default ``DynamicCache`` grows every layer's keys and values with ``torch.cat``
at each decoded token: a copy of the whole cache per token, ``O(length^2)`` memory traffic
over a reply, which dominates decoding once prompts are long (agent contexts, worked
examples). transformers' ``StaticCache`` writes each token in place (``index_copy_``) into
``[batch, kv_heads, max_cache_len, head_dim]`` buffers; attention reads the whole buffer with
the padding mask transformers extends over the unwritten tail (masked exactly: those positions
get zero weight).

:class:`StaticKVCaches` keeps one such cache per batch size and hands it back, reset, to the
next ``generate`` whose prompt width plus ``max_new_tokens`` fits in it; a larger request
allocates a larger one (lengths rounded up to :data:`LENGTH_QUANTUM`, so steps whose prompt
widths differ by a few tokens share a buffer). At most :data:`MAX_CACHES` batch sizes and
:data:`MAX_KEPT_BYTES` of buffers besides the one in use are kept. A shared prompt prefix encoded once at batch 1
is written into every row of the static buffers (:func:`fill_prefix`); prompts encoded once per
distinct prompt are written row by row (:func:`fill_rows`).

Models whose cache layers are not plain attention (recurrent / linear-attention state) get
``None`` from :meth:`StaticKVCaches.acquire` and keep the dynamic cache.
"""

from __future__ import annotations

from typing import Any

LENGTH_QUANTUM = 64
"""Static cache lengths are multiples of this many positions."""
MAX_CACHES = 4
"""Batch sizes kept at once; the least recently used is dropped beyond it."""
MAX_KEPT_BYTES = 4 << 30
"""Bytes of buffers kept for other batch sizes besides the cache in use; the least recently
used are dropped beyond it. Rollouts of a few groups stay under it (SmolLM2-135M, 16 rows of
1,216 positions: 0.9 GB a cache), while an evaluation that plays 80 episodes at once (4.5 GB a
cache, one batch size per turn as episodes end) no longer keeps one per turn: three turns of
the smollm2-web evaluation (80, 78, 76 rows) peaked at 18.8 GB of RSS before this budget and
lean decoding into the static buffers, 10.8 GB after."""


def _round_up(n: int, quantum: int = LENGTH_QUANTUM) -> int:
    return -(-n // quantum) * quantum


class StaticKVCaches:
    """Reused ``transformers.StaticCache`` objects of one model config, keyed by batch size.

    Args:
        config: The causal LM's config (its decoder's layer types decide the cache layers).
    """

    def __init__(self, config: Any):
        self.config = config
        self._caches: dict[int, tuple[int, Any]] = {}  # batch -> (length, StaticCache); order = recency
        self.supported = _static_supported(config)

    def acquire(self, batch: int, length: int) -> Any:
        """A reset ``StaticCache`` for ``batch`` rows of up to ``length`` positions, or ``None``
        when this model's cache cannot be static."""
        if not self.supported:
            return None
        from transformers import StaticCache

        capacity, cache = self._caches.pop(batch, (0, None))
        if cache is None or capacity < length:
            capacity = _round_up(length)
            cache = StaticCache(config=self.config, max_cache_len=capacity)
        else:
            cache.reset()  # zeroes the buffers too: nothing of the last call can reach this one
        self._caches[batch] = (capacity, cache)
        while len(self._caches) > 1 and (len(self._caches) > MAX_CACHES or self.kept_bytes() > MAX_KEPT_BYTES):
            self._caches.pop(next(iter(self._caches)))
        return cache

    def kept_bytes(self) -> int:
        """Bytes of the buffers of every cache but the most recently acquired one."""
        return sum(_nbytes(cache) for _, cache in list(self._caches.values())[:-1])

    def clear(self) -> None:
        """Drop every cache (frees its buffers)."""
        self._caches.clear()


def _nbytes(cache: Any) -> int:
    """Bytes held by a cache's key and value buffers (a layer allocates them on first use)."""
    tensors = [getattr(layer, name, None) for layer in cache.layers for name in ("keys", "values")]
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _static_supported(config: Any) -> bool:
    """Whether every decoder layer of ``config`` has a static attention cache layer."""
    try:
        from transformers import StaticCache

        cache = StaticCache(config=config, max_cache_len=1)
    except Exception:  # noqa: BLE001 - a config transformers cannot build a static cache for
        return False
    return all(hasattr(layer, "max_cache_len") and hasattr(layer, "update") for layer in cache.layers)


def fill_prefix(static: Any, prefix: Any, batch: int) -> bool:
    """Write the batch-1 ``prefix`` cache (a shared prompt prefix) into every row of ``static``.

    Returns ``False`` (``static`` untouched) when ``prefix`` does not expose per-layer
    ``keys``/``values`` tensors, so the caller can fall back to copying the dynamic cache.
    """
    layers = getattr(prefix, "layers", None)
    if layers is None or len(layers) != len(static.layers):
        return False
    pairs = [(getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in layers]
    if any(k is None or v is None or k.shape[0] != 1 for k, v in pairs):
        return False
    for idx, (keys, values) in enumerate(pairs):
        static.update(keys.expand(batch, *keys.shape[1:]), values.expand(batch, *values.shape[1:]), idx)
    return True


def rows_copyable(cache: Any) -> bool:
    """Whether every layer of ``cache`` (a ``DynamicCache``) is a plain or sliding-window attention
    layer whose rows ``reorder_cache`` can select and repeat (no recurrent state beside the keys)."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)


def fill_rows(static: Any, cache: Any, index: Any) -> bool:
    """Write row ``index[r]`` of ``cache`` (a ``DynamicCache`` of the distinct prompts, prefix and
    suffix encoded) into row ``r`` of the reset ``static`` cache, for every row ``r``.

    Args:
        static: A reset ``StaticCache`` of ``len(index)`` rows.
        cache: A ``DynamicCache`` whose layers hold ``[distinct, kv_heads, length, head_dim]``.
        index: ``LongTensor[rows]``, values in ``[0, distinct)``.

    Returns ``False`` (``static`` untouched) unless both caches are plain full-attention layers
    (a sliding window keeps a different span in each kind of cache), so the caller can keep
    the dynamic cache instead.
    """
    from transformers.cache_utils import DynamicLayer, StaticLayer

    layers = getattr(cache, "layers", None)
    if layers is None or len(layers) != len(static.layers):
        return False
    if not all(type(d) is DynamicLayer and type(s) is StaticLayer for d, s in zip(layers, static.layers)):
        return False
    if any(layer.keys.shape[-2] > s.max_cache_len for layer, s in zip(layers, static.layers)):
        return False
    for idx, layer in enumerate(layers):
        at = index.to(layer.keys.device)
        static.update(layer.keys.index_select(0, at), layer.values.index_select(0, at), idx)
    return True
