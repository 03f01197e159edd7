"""``generate`` with counter-based noise (``NoiseKeys``): a row's sample depends only on its
prompt and key, its log-probs are the model's, and tokens come at the model's probabilities."""

from __future__ import annotations

import pytest
import torch

from agent_lightning.types import NoiseKeys


def _backend(architecture="llama"):
    from agent_lightning.backends.transformers.backend import TransformersBackend
    from agent_lightning.config import BackendConfig, ModelConfig

    return TransformersBackend(
        ModelConfig(preset="tiny", preset_options={"architecture": architecture, "hidden_size": 32,
                                                   "num_layers": 2, "num_heads": 2}),
        BackendConfig(device="cpu"), seed=0)


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_a_rows_sample_does_not_depend_on_its_batch(architecture):
    backend = _backend(architecture)
    prompts = [backend.encode_prompt([{"role": "user", "content": q}])
               for q in ("one", "two plus two, please", "what is seven times nine, and why?", "x")]
    keys = (11, 2 ** 62 + 5, 12345678901, 7)
    together = backend.generate(prompts, temperature=1.0, top_p=1.0, max_new_tokens=12, generator=NoiseKeys(keys))
    for i, prompt in enumerate(prompts):  # alone, and in another order with other company
        alone = backend.generate([prompt], temperature=1.0, top_p=1.0, max_new_tokens=12,
                                 generator=NoiseKeys((keys[i],)))[0]
        assert alone.token_ids == together[i].token_ids
        assert alone.logprobs == pytest.approx(together[i].logprobs, abs=1e-4)
    swapped = backend.generate(prompts[::-1], temperature=1.0, top_p=1.0, max_new_tokens=12,
                               generator=NoiseKeys(keys[::-1]))
    assert [g.token_ids for g in swapped[::-1]] == [g.token_ids for g in together]
    other = backend.generate(prompts, temperature=1.0, top_p=1.0, max_new_tokens=12,
                             generator=NoiseKeys(tuple(k + 1 for k in keys)))
    assert [g.token_ids for g in other] != [g.token_ids for g in together]


def test_logprobs_are_the_models_at_the_temperature():
    backend = _backend()
    prompt = backend.encode_prompt([{"role": "user", "content": "count with me"}])
    gen = backend.generate([prompt], temperature=0.7, top_p=1.0, max_new_tokens=8, generator=NoiseKeys((99,)))[0]
    ids = torch.tensor([list(prompt) + list(gen.token_ids)])
    with torch.no_grad():
        logits = backend.model(input_ids=ids).logits[0].float()
    n = len(gen.token_ids)
    want = torch.log_softmax(logits[len(prompt) - 1:len(prompt) - 1 + n] / 0.7, -1)
    want = want.gather(-1, torch.tensor(gen.token_ids)[:, None])[:, 0]
    assert list(gen.logprobs) == pytest.approx(want.tolist(), abs=1e-4)


def test_first_tokens_come_at_the_models_probabilities():
    backend = _backend()
    prompt = backend.encode_prompt([{"role": "user", "content": "pick"}])
    with torch.no_grad():
        probs = torch.softmax(backend.model(input_ids=torch.tensor([prompt])).logits[0, -1].float() / 2.0, -1)
    n = 3000
    gens = backend.generate([prompt] * n, temperature=2.0, top_p=1.0, max_new_tokens=1,
                            generator=NoiseKeys(tuple(range(1000, 1000 + n))))
    counts = torch.bincount(torch.tensor([g.token_ids[0] for g in gens]), minlength=probs.numel()).float()
    expected = probs * n
    common = expected >= 20  # the chi-square test on tokens expected 20+ times, the rest pooled
    observed, pooled = counts[common], expected[common]
    if float(expected[~common].sum()) >= 5:
        observed = torch.cat([observed, counts[~common].sum()[None]])
        pooled = torch.cat([pooled, expected[~common].sum()[None]])
    assert int(common.sum()) >= 10
    chi2 = float(((observed - pooled) ** 2 / pooled).sum())
    dof = observed.numel() - 1
    assert chi2 < dof + 6 * (2 * dof) ** 0.5, (chi2, dof)  # about 6 standard deviations
    # top-p: a token outside the nucleus is never sampled
    top = backend.generate([prompt] * 500, temperature=2.0, top_p=0.3, max_new_tokens=1,
                           generator=NoiseKeys(tuple(range(500))))
    order = probs.argsort(descending=True)
    nucleus = set(order[:int((probs[order].cumsum(0) - probs[order] < 0.3).sum())].tolist())
    assert {g.token_ids[0] for g in top} <= nucleus


def test_a_key_count_that_does_not_match_the_prompts_is_refused():
    backend = _backend()
    with pytest.raises(ValueError, match="2 noise keys for 1 prompts"):
        backend.generate([[1, 2, 3]], temperature=1.0, top_p=1.0, max_new_tokens=2, generator=NoiseKeys((1, 2)))
