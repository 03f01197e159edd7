"""Group-relative advantages: GRPO, Dr. GRPO and RLOO baselines, segmented by group id.

Every rollout ``i`` belongs to the group ``group_ids[i]`` (the completions of one prompt).
With ``mean_g`` / ``std_g`` the mean and unbiased standard deviation of the group's rewards
and ``n_g`` its size:

* ``grpo``   : ``(r - mean_g) / (std_g + eps)``
* ``drgrpo`` : ``r - mean_g``                              (Dr. GRPO: no std normalisation)
* ``rloo``   : ``r - mean(other members)`` = ``n_g / (n_g - 1) * (r - mean_g)``

A group of one has no baseline; its advantage is 0 in every mode.

Implementation: one ``unique`` to relabel the ids and a few ``index_add_``/``index_select``
calls; no Python loop over groups. A Triton kernel is not worth it here: the inputs are a
few thousand scalars per step, so the op is launch-bound and torch on CUDA is as fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MODES = ("grpo", "drgrpo", "rloo")


def group_advantages(
    rewards: "torch.Tensor",
    group_ids: "torch.Tensor",
    *,
    mode: str = "grpo",
    eps: float = 1e-6,
) -> "torch.Tensor":
    """Advantages of ``rewards`` relative to their group.

    Args:
        rewards: ``[n]`` float, one scalar reward per rollout.
        group_ids: ``[n]`` integer group label per rollout; labels need not be contiguous,
            sorted or start at 0, and groups may have any size.
        mode: ``"grpo"``, ``"drgrpo"`` or ``"rloo"``.
        eps: Added to the group std in ``grpo`` mode.

    Returns:
        ``[n]`` float32 advantages on the device of ``rewards``.
    """
    import torch

    if mode not in MODES:
        raise ValueError(f"group_advantages: unknown mode {mode!r}; allowed: {', '.join(MODES)}")
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"group_advantages: rewards and group_ids must both be [n]; got rewards "
            f"{tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)}"
        )
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise TypeError(f"group_advantages: group_ids must be an integer tensor, got {group_ids.dtype}")
    if rewards.numel() == 0:
        return torch.zeros(0, dtype=torch.float32, device=rewards.device)

    # Float64 for the statistics: cheap at these sizes, and sums of many rewards stay exact.
    r = rewards.detach().to(torch.float64)
    _, inverse = torch.unique(group_ids, return_inverse=True)
    num_groups = int(inverse.max()) + 1
    counts = torch.zeros(num_groups, dtype=torch.float64, device=r.device).index_add_(0, inverse, torch.ones_like(r))
    sums = torch.zeros_like(counts).index_add_(0, inverse, r)
    centered = r - (sums / counts).index_select(0, inverse)
    n = counts.index_select(0, inverse)
    single = n < 2

    if mode == "drgrpo":
        adv = centered
    elif mode == "rloo":
        adv = centered * (n / (n - 1).clamp_min(1.0))
    else:
        sq = torch.zeros_like(counts).index_add_(0, inverse, centered.square())
        std = (sq / (counts - 1).clamp_min(1.0)).sqrt().index_select(0, inverse)
        adv = centered / (std + eps)
    return adv.masked_fill(single, 0.0).to(torch.float32)
