"""Lean decode steps (lean_decode.py) sample what the model's forward samples, and are taken only
where the model is a plain Llama on the CPU."""

from __future__ import annotations

import pytest
import torch

from agent_lightning.backends.transformers import lean_decode
from agent_lightning.backends.transformers.backend import TransformersBackend
from agent_lightning.backends.transformers.modeling import causal_lm
from agent_lightning.config import BackendConfig, LoraSettings, ModelConfig
from agent_lightning.types import NoiseKeys

SYSTEM = {"role": "system", "content": "You answer questions about numbers, briefly and exactly. " * 2}


def _backend(kv_cache: str = "dynamic", lora: LoraSettings | None = None, merged: bool = False,
             **options) -> TransformersBackend:
    torch.manual_seed(0)  # peft initialises lora_A from the global RNG
    preset = {"architecture": "llama", "hidden_size": 32, "num_layers": 2, "num_heads": 2, **options}
    return TransformersBackend(ModelConfig(preset="tiny", preset_options=preset, lora=lora),
                               BackendConfig(device="cpu", kv_cache=kv_cache, merged_sampling=merged), seed=0)


def _prompt_sets(backend):
    """Prompts that take each of generate's prefill paths before the decode steps."""
    one = backend.encode_prompt([{"role": "user", "content": "guess my number between 1 and 30 ."}])
    questions = ("one", "two plus two, please", "what is seven times nine?")
    shared = [backend.encode_prompt([SYSTEM, {"role": "user", "content": q}]) for q in questions]
    unshared = [backend.encode_prompt([{"role": "user", "content": q}]) for q in questions]
    return {
        "one prompt for every row": [one] * 6,  # encoded whole at batch 1
        "shared prefix, padded suffixes": shared,
        "repeated prompts": [shared[0], shared[1]] * 3,  # distinct rows encoded once each
        "left padding, no prefix": unshared,
    }


def _generate(backend, prompts, lean: bool, temperature: float) -> list:
    backend.lean_decode = lean
    return backend.generate(prompts, temperature=temperature, max_new_tokens=7,
                            generator=NoiseKeys(tuple(range(len(prompts)))))


@pytest.fixture
def lean_steps(monkeypatch):
    """Every ``LeanDecode.step`` call appends its batch size here."""
    calls: list[int] = []
    original = lean_decode.LeanDecode.step

    def step(self, ids):
        calls.append(ids.shape[0])
        return original(self, ids)

    monkeypatch.setattr(lean_decode.LeanDecode, "step", step)
    return calls


@pytest.mark.parametrize("kv_cache", ["dynamic", "static"])
@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("options", [{}, {"num_heads": 4, "num_kv_heads": 2}], ids=["mha", "gqa"])
def test_lean_steps_sample_what_the_forward_samples(kv_cache, share_prefix, options, lean_steps):
    backend = _backend(kv_cache, **options)
    backend.share_prefix = share_prefix
    for name, prompts in _prompt_sets(backend).items():
        for temperature in (0.0, 1.0):
            lean_steps.clear()
            lean = _generate(backend, prompts, True, temperature)
            taken = list(lean_steps)
            plain = _generate(backend, prompts, False, temperature)
            assert lean_steps == taken  # the forward path took no lean step
            longest = max(len(g.token_ids) for g in lean)
            assert taken == [len(prompts)] * (longest - 1), name  # every step after the prefill
            for a, b in zip(plain, lean, strict=True):
                assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason, name
                assert b.logprobs == pytest.approx(a.logprobs, abs=1e-5), name


@pytest.mark.parametrize("share_prefix", [True, False])
def test_a_static_cache_is_decoded_into_in_place_and_a_dynamic_one_is_copied(share_prefix, monkeypatch):
    started = []
    original = lean_decode.LeanDecode.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        started.append(self)

    monkeypatch.setattr(lean_decode.LeanDecode, "__init__", init)
    for kv_cache in ("static", "dynamic"):
        backend = _backend(kv_cache)
        backend.share_prefix = share_prefix
        prompts = _prompt_sets(backend)["shared prefix, padded suffixes"]
        started.clear()
        _generate(backend, prompts, True, 1.0)
        (lean,) = started
        if kv_cache == "dynamic":
            assert not lean.in_place
            continue
        (_, static), = backend._static_caches._caches.values()
        assert lean.in_place  # the static buffers themselves: no copy of the prompt's keys
        for mine, layer in zip(lean.keys + lean.values, [*static.layers, *static.layers], strict=True):
            assert mine.data_ptr() in (layer.keys.data_ptr(), layer.values.data_ptr())


def test_lean_logits_equal_the_forward_logits_over_many_steps():
    """A direct comparison, step by step: left-padded rows, 20 decoded tokens."""
    backend = _backend(num_heads=4, num_kv_heads=2)
    lm = causal_lm(backend.model).eval()
    weights = lean_decode.lean_weights(lm)
    rows = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    ids, mask, positions = backend._left_padded(rows, offset=0)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        out = lm(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache = out.past_key_values
        step_pos = positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        lean = lean_decode.LeanDecode(weights, lean_decode.cache_tensors(cache, mask.shape[1] - 1), mask, step_pos, 20)
        for _ in range(20):
            token = torch.randint(0, lm.config.vocab_size, (3, 1), generator=gen)
            expected = lm(input_ids=token, attention_mask=mask, position_ids=step_pos, past_key_values=cache,
                          use_cache=True).logits[:, -1].float()
            assert torch.allclose(lean.step(token), expected, atol=1e-5, rtol=1e-5)
            step_pos = step_pos + 1
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        with pytest.raises(RuntimeError, match="step 21 beyond the 20 steps"):
            lean.step(token)


def test_only_a_plain_llama_gets_lean_weights():
    assert lean_decode.lean_weights(causal_lm(_backend().model)) is not None
    for architecture in ("gemma2", "qwen3", "mistral"):
        assert lean_decode.lean_weights(causal_lm(_backend(architecture=architecture).model)) is None, architecture
    assert lean_decode.lean_weights(causal_lm(_backend(config={"attention_bias": True}).model)) is None
    lora = _backend(lora=LoraSettings(r=4, alpha=8))
    assert lean_decode.lean_weights(causal_lm(lora.model)) is None  # LoRA layers: the forward runs them
    bf16 = _backend()
    bf16.model.model.norm.to(torch.bfloat16)  # one dtype throughout, or none
    assert lean_decode.lean_weights(causal_lm(bf16.model)) is None


def test_fused_weights_are_kept_until_a_weight_changes_and_separate_ones_give_the_same_logits(monkeypatch):
    backend = _backend()
    lm = causal_lm(backend.model)
    first = lean_decode.lean_weights(lm)
    assert len(first.layers[0].qkv) == 1 and len(first.layers[0].gate_up) == 1  # small: fused
    assert lean_decode.lean_weights(lm, first) is first
    with torch.no_grad():
        lm.model.layers[1].mlp.up_proj.weight.add_(0.5)  # what an optimizer step does, in place
    second = lean_decode.lean_weights(lm, first)
    assert second is not first
    up = lm.model.layers[1].mlp.up_proj.weight
    assert torch.equal(second.layers[1].gate_up[0][up.shape[0]:], up)
    monkeypatch.setattr(lean_decode, "FUSE_MAX_ELEMENTS", 0)
    separate = lean_decode.lean_weights(lm)
    assert len(separate.layers[0].qkv) == 3 and len(separate.layers[0].gate_up) == 2
    prompts = _prompt_sets(backend)["shared prefix, padded suffixes"]
    fused = _generate(backend, prompts, True, 1.0)
    backend._lean_weights = None
    unfused = _generate(backend, prompts, True, 1.0)
    assert isinstance(backend._lean_weights.layers[0].qkv, tuple) and len(backend._lean_weights.layers[0].qkv) == 3
    for a, b in zip(fused, unfused, strict=True):
        assert a.token_ids == b.token_ids and b.logprobs == pytest.approx(a.logprobs, abs=1e-5)


def test_merged_lora_sampling_takes_lean_steps_and_samples_what_the_adapter_samples(lean_steps):
    """The merged sampling copy is a plain Llama: lean steps, refreshed after the adapter moves."""
    merged, plain = (_backend(lora=LoraSettings(r=4, alpha=8), merged=m) for m in (True, False))
    prompts = _prompt_sets(merged)["one prompt for every row"]
    for seed in (1, 2):
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for (name, a), (_, b) in zip(merged.model.named_parameters(), plain.model.named_parameters()):
                if "lora_B" in name:
                    step = torch.randn(a.shape, generator=gen) * 0.5
                    a.add_(step)
                    b.add_(step)
        lean_steps.clear()
        got = _generate(merged, prompts, True, 1.0)
        assert lean_steps  # the merged copy decoded lean
        lean_steps.clear()
        expected = _generate(plain, prompts, True, 1.0)
        assert not lean_steps  # the unmerged adapter runs through the forward
        for a, b in zip(expected, got, strict=True):
            assert a.token_ids == b.token_ids and b.logprobs == pytest.approx(a.logprobs, abs=1e-4)
