"""Per-token KL estimators between the policy and a reference policy.

All three estimate ``KL(pi || pi_ref)`` from samples of ``pi`` (Schulman, "Approximating
KL divergence"), given the sampled tokens' log-probs under both policies:

* ``k1`` = ``logp - ref``                          (unbiased, high variance, can be negative)
* ``k2`` = ``0.5 * (logp - ref) ** 2``             (biased, low variance)
* ``k3`` = ``exp(ref - logp) - (ref - logp) - 1``  (unbiased, low variance, >= 0)

``k3`` is clamped like verl's ``low_var_kl``: the log-ratio ``ref - logp`` is clamped to
``[-clamp, clamp]`` before the exponential and the result is clamped to ``[-clamp, clamp]``,
so a token the reference finds very unlikely cannot blow up the loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

KL_KINDS = ("k1", "k2", "k3")


def kl_penalty(
    logprobs: "torch.Tensor",
    ref_logprobs: "torch.Tensor",
    kind: str = "k3",
    clamp: float | None = 10.0,
) -> "torch.Tensor":
    """Elementwise KL estimate between the policy and the reference.

    Args:
        logprobs: Log-probs of the sampled tokens under the policy, any shape, float.
        ref_logprobs: Log-probs of the same tokens under the reference, same shape.
        kind: ``"k1"``, ``"k2"`` or ``"k3"`` (see the module docstring).
        clamp: Bound for ``k3`` (log-ratio and result); ``None`` disables it. ``k1`` and
            ``k2`` are never clamped.

    Returns:
        Tensor of the broadcast shape, in float32 (float64 when an input is float64),
        differentiable w.r.t. both inputs.
    """
    import torch

    if kind not in KL_KINDS:
        raise ValueError(f"kl_penalty: unknown kind {kind!r}; allowed: {', '.join(KL_KINDS)}")
    dtype = torch.promote_types(torch.promote_types(logprobs.dtype, ref_logprobs.dtype), torch.float32)
    logp = logprobs.to(dtype)
    ref = ref_logprobs.to(dtype)
    if kind == "k1":
        return logp - ref
    if kind == "k2":
        return 0.5 * (logp - ref).square()
    log_ratio = ref - logp
    if clamp is not None:
        log_ratio = log_ratio.clamp(-clamp, clamp)
    kl = torch.exp(log_ratio) - log_ratio - 1.0
    if clamp is not None:
        kl = kl.clamp(-clamp, clamp)
    return kl
