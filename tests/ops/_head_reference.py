"""The float64 reference of the token log-prob ops: full logits, transformed the way the model
families do it (bias, logit scale, soft-cap, temperature), then ``log_softmax``."""

import torch


def reference_logprobs(hidden, weight, targets, bias=None, logit_scale=1.0, softcap=None, temperature=1.0):
    """``(logprobs [N], entropy [N])`` in float64, differentiable w.r.t. every input."""
    y = hidden.double() @ weight.double().T
    if bias is not None:
        y = y + bias.double()
    y = y * logit_scale
    if softcap is not None:
        y = softcap * torch.tanh(y / softcap)
    log_p = torch.log_softmax(y / temperature, dim=-1)
    return log_p.gather(1, targets[:, None]).squeeze(1), -(log_p.exp() * log_p).sum(-1)
