"""Counter-based sampling noise: one uniform per (key, position), drawn for a whole batch at once.

A row of a batched ``generate`` carries a 63-bit key (``rollout.episode_seed`` of the run's
seed, the episode and its turn); the uniform that picks its ``t``-th new token is a hash of
``(key, t)``. Nothing is stateful, so a row samples the same token whatever else shares the
batch, without one ``torch.Generator`` (and one ``torch.multinomial`` of vocabulary-many
exponentials) per row per token. The token is then the inverse CDF of the row's
probabilities at that uniform.

The hash is ``lowbias32`` (C. Wellons) chained over the position and the key's two halves,
then twice more for 53 bits. Every product is split into 16-bit halves so that no ``int64``
intermediate exceeds 2**49: the tensor version equals :func:`keyed_uniform_reference` (plain
Python integers) bit for bit.
"""

from __future__ import annotations

from typing import Any, Sequence

_MASK32 = 0xFFFFFFFF
_M1, _M2 = 0x7FEB352D, 0x846CA68B
_SALT_POSITION, _SALT_WORD1, _SALT_WORD2 = 0x9E3779B9, 0x68E31DA4, 0xB5297A4D
_SCALE = 2.0 ** -53


def _mix32_int(x: int) -> int:
    x ^= x >> 16
    x = (x * _M1) & _MASK32
    x ^= x >> 15
    x = (x * _M2) & _MASK32
    return x ^ (x >> 16)


def keyed_uniform_reference(key: int, position: int) -> float:
    """The uniform in ``[0, 1)`` of ``(key, position)``, in plain Python (the reference)."""
    if not 0 <= key < 2 ** 63 or not 0 <= position < 2 ** 32:
        raise ValueError(f"keyed noise: key must be in [0, 2**63) and position in [0, 2**32), got {key}, {position}")
    h = _mix32_int(position ^ _SALT_POSITION)
    h = _mix32_int(h ^ (key & _MASK32))
    h = _mix32_int(h ^ (key >> 32))
    w1 = _mix32_int(h ^ _SALT_WORD1)
    w2 = _mix32_int(w1 ^ _SALT_WORD2)
    return ((w1 << 21) + (w2 >> 11)) * _SCALE


def _mul32(x: Any, c: int) -> Any:
    """``x * c mod 2**32`` for int64 ``x`` in ``[0, 2**32)``, with intermediates below 2**49."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: Any) -> Any:
    x = x ^ (x >> 16)
    x = _mul32(x, _M1)
    x = x ^ (x >> 15)
    x = _mul32(x, _M2)
    return x ^ (x >> 16)


def keyed_uniform(keys: Any, positions: Any) -> Any:
    """Uniforms in ``[0, 1)`` for every (key, position) pair.

    Args:
        keys: int64 ``[B]`` (or a sequence of ints), each in ``[0, 2**63)``.
        positions: int64 ``[T]`` (or a sequence of ints), each in ``[0, 2**32)``.

    Returns:
        float64 ``[B, T]``: ``out[b, t] == keyed_uniform_reference(keys[b], positions[t])``.
    """
    import torch

    keys = torch.as_tensor(keys, dtype=torch.int64).reshape(-1, 1)
    positions = torch.as_tensor(positions, dtype=torch.int64).reshape(1, -1)
    if bool((keys < 0).any()) or bool((positions < 0).any()) or bool((positions > _MASK32).any()):
        raise ValueError("keyed noise: keys must be in [0, 2**63) and positions in [0, 2**32)")
    h = _mix32(positions ^ _SALT_POSITION)
    h = _mix32(h ^ (keys & _MASK32))
    h = _mix32(h ^ (keys >> 32))
    w1 = _mix32(h ^ _SALT_WORD1)
    w2 = _mix32(w1 ^ _SALT_WORD2)
    return ((w1 << 21) + (w2 >> 11)).to(torch.float64) * _SCALE


def inverse_cdf_sample(probs: Any, uniforms: Any) -> Any:
    """One token per row: the first index whose cumulative probability exceeds ``u * total``.

    Args:
        probs: ``[B, V]`` non-negative (need not sum to 1; zeros are never picked).
        uniforms: ``[B]`` in ``[0, 1)``.

    Returns:
        int64 ``[B]`` token ids, each with ``probs > 0``.
    """
    import torch

    cumulative = probs.to(torch.float64).cumsum(-1)
    target = uniforms.to(device=probs.device, dtype=torch.float64) * cumulative[:, -1]
    token = torch.searchsorted(cumulative, target[:, None], right=True)[:, 0]
    # u * total can round up to the total itself: fall back to the row's last possible token.
    last = probs.shape[-1] - 1 - (probs.flip(-1) > 0).to(torch.int8).argmax(-1)
    return torch.minimum(token, last)


def keys_tensor(keys: Sequence[int]) -> Any:
    """int64 ``[B]`` of keys, each checked to lie in ``[0, 2**63)``."""
    import torch

    bad = [k for k in keys if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < 2 ** 63]
    if bad:
        raise ValueError(f"keyed noise: keys must be integers in [0, 2**63), got {bad[0]!r}")
    return torch.tensor(list(keys), dtype=torch.int64)
