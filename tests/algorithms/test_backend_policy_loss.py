"""``common.backend_policy_loss``: the policy loss through the backend's ``token_loss`` (gradient
taken in the forward sweep) gives the loss, diagnostics and gradients that ``token_logprobs``
and autograd give, for every aggregation, with the entropy bonus and the KL term."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from agent_lightning.algorithms import common
from agent_lightning.loop.batch import pack_trajectories
from agent_lightning.testing.plugin import tiny_policy
from agent_lightning.types import Task, Trajectory, Turn

TASK = Task(id="t", prompt=({"role": "user", "content": "x"},))


def _trajectories(vocab: int, old=None):
    gen = torch.Generator().manual_seed(4)
    out, at = [], 0
    for i, (n_prompt, n_actions) in enumerate([(3, 5), (2, 7), (4, 3), (3, 6)]):
        prompt = torch.randint(0, vocab, (n_prompt,), generator=gen).tolist()
        ids = torch.randint(0, vocab, (n_actions,), generator=gen).tolist()
        lps = [-1.0] * n_actions if old is None else old[at:at + n_actions]
        at += n_actions
        turn = Turn(action="a", action_token_ids=tuple(ids), action_logprobs=tuple(lps))
        out.append(Trajectory(id=f"e{i}", task=TASK, group=i // 2, prompt_token_ids=tuple(prompt), turns=(turn,),
                              final_reward=float(i % 2)))
    return out


def _batch(backend):
    """A packed batch whose old log-probs are the policy's own plus noise (ratios around the clip range)."""
    trajectories = _trajectories(backend.vocab_size)
    first = pack_trajectories(trajectories, [[0.0] * t.num_policy_tokens for t in trajectories])
    with torch.no_grad():
        logp, _ = backend.token_logprobs(first, temperature=0.9)
    old = (logp + 0.3 * torch.randn(len(logp), generator=torch.Generator().manual_seed(5))).tolist()
    trajectories = _trajectories(backend.vocab_size, old)
    advantages = [[(-1.0) ** i * (0.5 + 0.1 * k) for k in range(t.num_policy_tokens)]
                  for i, t in enumerate(trajectories)]
    return pack_trajectories(trajectories, advantages), logp


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
@pytest.mark.parametrize("entropy_coef, with_ref", [(0.0, False), (0.01, True)])
def test_token_loss_path_equals_token_logprobs_and_autograd(mode, entropy_coef, with_ref):
    fused, plain = tiny_policy(0), tiny_policy(0)
    plain.token_loss = None  # an optional member left out: the composition path
    options = SimpleNamespace(clip_low=0.2, clip_high=0.28, loss_aggregation=mode, entropy_coef=entropy_coef,
                              kl_coef=0.05, kl_estimator="k3")
    batch, logp = _batch(fused)
    ref = logp - 0.05 if with_ref else None
    results = []
    for backend in (fused, plain):
        backend.train_mode(True)
        loss, stats = common.backend_policy_loss(backend, batch, 11, options, 0.9, ref)
        (loss * 3.0).backward()
        grads = [p.grad.clone() for p in backend.model.parameters() if p.requires_grad]
        results.append((loss.detach(), stats, grads))
    (loss_a, stats_a, grads_a), (loss_b, stats_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=1e-7)
    assert set(stats_a) == set(stats_b)
    for key in stats_a:
        torch.testing.assert_close(torch.as_tensor(stats_a[key]), torch.as_tensor(stats_b[key]), rtol=1e-5, atol=1e-6)
    assert 0.0 < float(stats_a["clip_fraction"]) < 1.0  # both branches of the clip are exercised
    assert len(grads_a) == len(grads_b) and max(float(g.abs().max()) for g in grads_b) > 1e-3
    for got, want in zip(grads_a, grads_b):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_a_lora_policy_trains_its_adapters_through_token_loss():
    """A frozen lm head: token_loss skips the head's gradient; the adapters' gradients match."""
    from agent_lightning.backends.transformers.backend import TransformersBackend
    from agent_lightning.config import BackendConfig, LoraSettings, ModelConfig
    from agent_lightning.testing.plugin import TINY_PRESET_OPTIONS

    def lora_backend():
        model = ModelConfig(preset="tiny", preset_options=dict(TINY_PRESET_OPTIONS), lora=LoraSettings(r=4, alpha=8))
        return TransformersBackend(model, BackendConfig(device="cpu"), seed=0)

    fused, plain = lora_backend(), lora_backend()
    plain.model.load_state_dict(fused.model.state_dict())  # adapters are initialised from the global RNG
    plain.token_loss = None
    options = SimpleNamespace(clip_low=0.2, clip_high=0.2, loss_aggregation="token-mean", entropy_coef=0.0,
                              kl_coef=0.0, kl_estimator="k3")
    batch, _ = _batch(fused)
    grads = []
    for backend in (fused, plain):
        backend.train_mode(True)
        loss, _ = common.backend_policy_loss(backend, batch, 1, options, 0.9)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in backend.model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and all("lora" in n for n in grads[0])
    assert max(float(g.abs().max()) for g in grads[1].values()) > 1e-3
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-7)
