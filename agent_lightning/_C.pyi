"""Types of the C++/CUDA extension ``agent_lightning._C`` (built from ``csrc/`` by setup.py).

Do not call it directly from library code: go through ``agent_lightning.ops`` (dispatch,
validation, autograd). ``cu_seqlens`` is int32 ``[B+1]`` (int64 is accepted and converted);
every tensor of one call must be on the same device; CUDA tensors need ``cuda_enabled``.
"""

from torch import Tensor

cuda_enabled: bool
"""Whether the CUDA kernels (csrc/cuda/*.cu) were compiled in."""

openmp_enabled: bool
"""Whether the CPU kernels were compiled with OpenMP (parallel over sequences)."""

def pack_lengths(lengths: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
    """int ``[B]`` lengths -> (cu_seqlens int32 ``[B+1]``, position_ids int64 ``[T]``, seq_ids int32 ``[T]``, max_seqlen)."""

def pack(seqs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """``B`` tensors ``[L_i, ...]`` (same trailing shape, dtype, device) -> (flat ``[T, ...]``, cu_seqlens int32 ``[B+1]``)."""

def unpack(flat: Tensor, cu_seqlens: Tensor) -> list[Tensor]:
    """``[T, ...]`` -> ``B`` views ``[L_i, ...]`` of ``flat``."""

def pad_packed(flat: Tensor, cu_seqlens: Tensor, pad_value: float = 0.0) -> Tensor:
    """``[T, ...]`` -> right-padded ``[B, max L_i, ...]`` filled with ``pad_value``."""

def unpad(padded: Tensor, cu_seqlens: Tensor) -> Tensor:
    """Right-padded ``[B, T, ...]`` -> ``[cu_seqlens[-1], ...]`` (first ``L_i`` rows of each sequence)."""

def partition_microbatches(lengths: Tensor, token_budget: int) -> list[list[int]]:
    """Balanced micro-batches of sequence indices, each at most ``token_budget`` tokens (see ops.packing)."""

def segment_sum(values: Tensor, cu_seqlens: Tensor, mask: Tensor | None = None) -> Tensor:
    """float ``[T]`` -> per-sequence sum ``[B]`` (only where the bool ``mask`` is true, when given)."""

def segment_mean(values: Tensor, cu_seqlens: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """float ``[T]`` -> (per-sequence mean over masked-in tokens ``[B]``, 0 where none; counts int64 ``[B]``)."""

def segment_count(mask: Tensor, cu_seqlens: Tensor) -> Tensor:
    """bool ``[T]`` -> int64 ``[B]`` number of true entries per sequence."""

def gae_packed(
    rewards: Tensor, values: Tensor, mask: Tensor, cu_seqlens: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Packed GAE over f32 ``[T]`` rewards / values and a bool ``[T]`` mask -> (advantages f32 ``[T]``, returns f32 ``[T]``).

    Masked-out positions get 0 and are skipped by the recursion (which carries across them);
    for a valid ``t`` with next valid ``t'`` in the same sequence:
    ``delta = r_t + gamma * V_t' - V_t`` and ``A_t = delta + gamma * lam * A_t'``
    (``V_t' = A_t' = 0`` at the end of a sequence); ``returns_t = A_t + V_t``.
    """
