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


def test_distinct_rows():
    from agent_lightning.backends.transformers.backend import distinct_rows

    a, b, c = [1] * 300, [2] * 300, [3] * 300
    assert distinct_rows([a, b, a, c, b, a], 300) == ([0, 1, 3], [0, 1, 0, 2, 1, 0])
    assert distinct_rows([a, b, c], 300) is None  # every row differs
    width = MIN_SHARED_TOKENS // 2
    assert distinct_rows([a, a, a], width) == ([0], [0, 0, 0])  # 2 copies x width = MIN_SHARED_TOKENS
    assert distinct_rows([a, a, a], width - 1) is None  # saves too little
    assert distinct_rows([a, a + [4]], 1000) is None  # the same start is not the same prompt


def _tiny_backend(architecture: str, kv_cache: str):
    from agent_lightning.backends.transformers.backend import TransformersBackend
    from agent_lightning.config import BackendConfig, ModelConfig

    backend = TransformersBackend(
        ModelConfig(preset="tiny", preset_options={"architecture": architecture, "hidden_size": 32,
                                                   "num_layers": 2, "num_heads": 2}),
        BackendConfig(device="cpu", kv_cache=kv_cache), seed=0)
    backend.lean_decode = False  # these tests count the model's forwards (test_lean_decode.py: lean steps)
    return backend


def _with_and_without_sharing(backend, prompts, max_new_tokens, check_calls):
    """``generate`` with ``share_prefix`` off and on, greedy and sampled (``NoiseKeys``: each row its
    own noise). ``check_calls(share, temperature, shapes)`` sees the ``input_ids`` shape of every
    model forward of a call. Both ways must give the same tokens and log-probs (1e-4). Returns
    ``{(share, temperature): generations}``."""
    from agent_lightning.types import NoiseKeys

    calls: list[tuple[int, ...]] = []
    hook = backend.model.register_forward_pre_hook(
        lambda _m, args, kwargs: calls.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    results = {}
    try:
        for share in (False, True):
            backend.share_prefix = share
            for temperature in (0.0, 1.0):
                calls.clear()
                results[share, temperature] = backend.generate(
                    prompts, temperature=temperature, max_new_tokens=max_new_tokens,
                    generator=NoiseKeys(tuple(range(len(prompts)))))
                check_calls(share, temperature, list(calls))
    finally:
        hook.remove()
    for temperature in (0.0, 1.0):
        for a, b in zip(results[False, temperature], results[True, temperature], strict=True):
            assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
            assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)
    return results


@pytest.mark.parametrize("architecture", ["llama", "gemma2", "qwen3"])
@pytest.mark.parametrize("kv_cache", ["dynamic", "static"])
def test_identical_prompts_are_encoded_once_and_sample_what_whole_prompts_sample(architecture, kv_cache):
    """Rows whose prompts repeat (a group that took the same actions) are prefilled once per
    distinct prompt, with and without a shared prefix, dynamic or static cache: the same tokens
    and log-probs (1e-4) as encoding every row, each row with its own noise."""
    from agent_lightning.backends.transformers.backend import distinct_rows

    backend = _tiny_backend(architecture, kv_cache)
    # The tiny tokenizer knows a few words and the numbers: a long "observation" made of them.
    listing = " ".join(f"the number {i} is higher than {(7 * i) % 30} ," for i in range(30))
    system = [{"role": "system", "content": "reply with one number only . " * 8}]
    turns = [[{"role": "user", "content": f"guess my number {g}"}, {"role": "assistant", "content": "answer 3"},
              {"role": "user", "content": f"{listing} {g}"}] for g in (1, 2, 3)]
    for with_system in (True, False):
        messages = [(system if with_system else []) + turns[i] for i in (0, 1, 0, 0, 2, 1, 0)]
        prompts = [backend.encode_prompt(m) for m in messages]
        suffix = shared_prefix_length(prompts)
        assert distinct_rows([p[suffix:] for p in prompts], max(len(p) for p in prompts) - suffix) is not None

        def check_calls(share, temperature, shapes):
            assert (3 in [shape[0] for shape in shapes]) == share  # the prefill saw the 3 distinct prompts only

        results = _with_and_without_sharing(backend, prompts, 8, check_calls)
        # the rows of one prompt drew their own noise: sampled replies differ somewhere
        sampled = results[True, 1.0]
        assert len({sampled[i].token_ids for i in (0, 2, 3, 6)}) > 1


@pytest.mark.parametrize("architecture", ["llama", "gemma2"])
@pytest.mark.parametrize("kv_cache", ["dynamic", "static"])
def test_one_prompt_for_every_row_is_encoded_once_with_no_second_prefill(architecture, kv_cache):
    """n samples of one prompt: one forward of the whole prompt at batch 1, whose last logits
    sample every row's first token, then one forward per further token at batch n; the same
    tokens and log-probs (1e-4) as encoding every row, each row with its own noise."""
    backend = _tiny_backend(architecture, kv_cache)
    prompt = backend.encode_prompt([{"role": "user", "content": "guess my number between 1 and 30 ."}])
    rows, new = 6, 5

    def check_calls(share, temperature, shapes):
        if share and temperature:
            # greedy rows all take one path and may stop early; sampled rows run all tokens
            assert shapes == [(1, len(prompt))] + [(rows, 1)] * (new - 1)
        elif not share:
            assert shapes[0] == (rows, len(prompt))

    results = _with_and_without_sharing(backend, [list(prompt)] * rows, new, check_calls)
    assert len({g.token_ids for g in results[True, 1.0]}) > 1  # each row drew its own noise
