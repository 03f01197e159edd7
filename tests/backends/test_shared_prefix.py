"""Generation that encodes the prompts' common prefix once equals encoding every prompt whole."""

from __future__ import annotations

import pytest
import torch

from agent_lightning.backends.transformers.backend import MIN_SHARED_PREFIX, MIN_SHARED_TOKENS, shared_prefix_length


def test_shared_prefix_length():
    base = list(range(100, 100 + MIN_SHARED_PREFIX + 4))
    assert shared_prefix_length([base + [1, 2], base + [1, 3], base + [7]]) == len(base)
    assert shared_prefix_length([base, base]) == len(base) - 1  # each row keeps a token of its own
    assert shared_prefix_length([base[:5] + [1], base[:5] + [2]]) == 0  # too short to be worth it
    rows = -(-MIN_SHARED_TOKENS // 5) + 1  # ...unless the other rows' copies add up to MIN_SHARED_TOKENS
    many = [base[:5] + [i] for i in range(rows)]
    assert shared_prefix_length(many) == 5
    assert shared_prefix_length(many[:-1]) == 0
    assert shared_prefix_length([[1] + base, base]) == 0


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_generation_with_and_without_the_shared_prefix_agree(architecture):
    from agent_lightning.backends.transformers.backend import TransformersBackend
    from agent_lightning.config import BackendConfig, ModelConfig

    backend = TransformersBackend(
        ModelConfig(preset="tiny", preset_options={"architecture": architecture, "hidden_size": 32,
                                                   "num_layers": 2, "num_heads": 2}),
        BackendConfig(device="cpu"), seed=0)
    system = [{"role": "system", "content": "You answer questions about numbers, briefly and exactly. " * 3}]
    prompts = [backend.encode_prompt(system + [{"role": "user", "content": q}])
               for q in ("one", "two plus two, please", "what is seven times nine?")]
    assert shared_prefix_length(prompts) >= MIN_SHARED_PREFIX
    results = {}
    for share in (False, True):
        backend.share_prefix = share
        for temperature in (0.0, 1.0):
            generators = [torch.Generator().manual_seed(11 + i) for i in range(len(prompts))]
            results[share, temperature] = backend.generate(prompts, temperature=temperature, max_new_tokens=10,
                                                           generator=generators)
    for temperature in (0.0, 1.0):
        whole, shared = results[False, temperature], results[True, temperature]
        for a, b in zip(whole, shared):
            assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
            assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)
