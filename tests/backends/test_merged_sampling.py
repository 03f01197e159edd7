"""backend.merged_sampling: a LoRA policy samples from a copy with the adapter folded into the
weights — the same samples and log-probs as the unmerged policy (up to float rounding), kept up
to date as the adapter trains, per role, sharing every unmerged tensor."""

from __future__ import annotations

import json

import pytest
import torch

from agent_lightning.backends.transformers.backend import TransformersBackend
from agent_lightning.config import BackendConfig, LoraSettings, ModelConfig, validate
from agent_lightning.loop.trainer import Trainer

TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "tie_embeddings": True}
MESSAGES = [{"role": "user", "content": "guess my number between 1 and 6"}]


def _backend(merged: bool, autocast=None) -> TransformersBackend:
    torch.manual_seed(0)  # peft initialises lora_A from the global RNG
    model = ModelConfig(preset="tiny", preset_options=dict(TINY), lora=LoraSettings(r=4, alpha=8))
    return TransformersBackend(model, BackendConfig(device="cpu", merged_sampling=merged, autocast=autocast), seed=0)


def _train_adapter(backend: TransformersBackend, seed: int) -> None:
    """Move the adapters away from their zero-product start, in place (as an optimizer step does)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in backend.model.named_parameters():
            if "lora_B" in name and param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen) * 0.5)


def _sample(backend, rows=4, tokens=6, seed=1):
    prompt = backend.encode_prompt(MESSAGES)
    gens = [torch.Generator().manual_seed(seed + i) for i in range(rows)]
    return backend.generate([prompt] * rows, temperature=1.0, max_new_tokens=tokens, generator=gens)


def _assert_same_samples(got, want, atol):
    assert [g.token_ids for g in got] == [g.token_ids for g in want]
    for a, b in zip(got, want):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=atol, rtol=0)


def test_merged_sampling_matches_the_unmerged_policy_and_follows_its_updates():
    merged, plain = _backend(True), _backend(False)
    plain.model.load_state_dict(merged.model.state_dict())
    for step in range(2):
        _train_adapter(merged, step)
        _train_adapter(plain, step)
        got, want = _sample(merged, seed=step), _sample(plain, seed=step)
        _assert_same_samples(got, want, atol=1e-5)
    # The merged copy moved with the adapter: it is not the base model's sampling.
    with merged.model.disable_adapter():
        base = merged.model(input_ids=torch.tensor([merged.encode_prompt(MESSAGES)])).logits[0, -1]
    sampler = merged._merged.model
    sampled = sampler(input_ids=torch.tensor([merged.encode_prompt(MESSAGES)])).logits[0, -1]
    assert float((sampled - base).abs().max()) > 1e-2


def test_the_merged_copy_shares_every_tensor_it_does_not_merge():
    backend = _backend(True)
    _sample(backend)
    copy = backend._merged.model
    policy = backend.model.get_base_model()
    assert copy.model.embed_tokens.weight is policy.model.embed_tokens.weight
    assert copy.lm_head.weight is policy.lm_head.weight  # still tied
    assert copy.model.norm.weight is policy.model.norm.weight
    q_copy, q_policy = copy.model.layers[0].self_attn.q_proj, policy.model.layers[0].self_attn.q_proj
    assert isinstance(q_copy, torch.nn.Linear) and q_copy.weight is not q_policy.base_layer.weight
    assert not any(p.requires_grad for p in copy.parameters())


def test_a_role_samples_with_its_own_adapter():
    merged, plain = _backend(True), _backend(False)
    plain.model.load_state_dict(merged.model.state_dict())
    for backend in (merged, plain):
        backend.add_role("solver")
        backend.add_role("critic")
    plain.model.load_state_dict(merged.model.state_dict())
    for role, seed in (("solver", 3), ("critic", 4)):
        for backend in (merged, plain):
            backend.use_role(role)
            _train_adapter(backend, seed)
    for role in ("solver", "critic", "solver"):
        merged.use_role(role)
        plain.use_role(role)
        _assert_same_samples(_sample(merged), _sample(plain), atol=1e-5)


def test_under_bfloat16_autocast_it_samples_what_the_policy_would_up_to_rounding():
    merged = _backend(True, autocast="bfloat16")
    _train_adapter(merged, 0)
    weight = merged._merged.refreshed(merged.model).model.layers[0].mlp.up_proj.weight
    assert weight.dtype == torch.bfloat16
    plain = _backend(False, autocast="bfloat16")
    plain.model.load_state_dict(merged.model.state_dict())
    got, want = _sample(merged, rows=8, tokens=1), _sample(plain, rows=8, tokens=1)
    gaps = [abs(a.logprobs[0] - b.logprobs[0]) for a, b in zip(got, want) if a.token_ids == b.token_ids]
    assert gaps and max(gaps) < 0.1


def test_merged_sampling_needs_lora():
    model = ModelConfig(preset="tiny", preset_options=dict(TINY))
    with pytest.raises(ValueError, match="backend.merged_sampling: .* needs model.lora"):
        TransformersBackend(model, BackendConfig(device="cpu", merged_sampling=True), seed=0)


def test_a_run_with_merged_sampling_trains_and_reports_a_float_rounding_gap(tmp_path, tiny_config_dict):
    data = tiny_config_dict()
    data["model"]["lora"] = {"r": 4, "alpha": 8}
    data["backend"]["merged_sampling"] = True
    data["sampling"]["max_new_tokens"] = 3
    data["trainer"].update(steps=3, eval_every=0, checkpoint_every=0)
    Trainer(validate(data), tmp_path / "run").run()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    gaps = [r["train/sampler_logprob_diff"] for r in rows if "train/sampler_logprob_diff" in r]
    assert len(gaps) == 3 and max(gaps) < 1e-4
    assert any(r.get("train/grad_norm", 0) > 0 for r in rows)
