"""``backend.kv_cache: static``: generation with reused StaticCache buffers equals the dynamic cache."""

from __future__ import annotations

import pytest
import torch

from agent_lightning.backends.transformers import kv_cache
from agent_lightning.backends.transformers.kv_cache import LENGTH_QUANTUM, StaticKVCaches, fill_prefix
from agent_lightning.backends.transformers.tiny import ARCHITECTURES
from agent_lightning.types import NoiseKeys


def _backend(kv_cache: str, architecture: str = "llama", **backend):
    from agent_lightning.backends.transformers.backend import TransformersBackend
    from agent_lightning.config import BackendConfig, ModelConfig

    return TransformersBackend(
        ModelConfig(preset="tiny", preset_options={"architecture": architecture, "hidden_size": 32,
                                                   "num_layers": 2, "num_heads": 2}),
        BackendConfig(device="cpu", kv_cache=kv_cache, **backend), seed=0)


SYSTEM = [{"role": "system", "content": "You answer questions about numbers, briefly and exactly. " * 3}]
QUESTIONS = ("one", "two plus two, please", "what is seven times nine?", "six", "is nine odd or even?")


def _prompts(backend, questions=QUESTIONS, system=True):
    return [backend.encode_prompt((SYSTEM if system else []) + [{"role": "user", "content": q}]) for q in questions]


def _calls(backend, *, share_prefix: bool):
    """A sequence of generate calls that reuses, grows and re-sizes the static buffers."""
    backend.share_prefix = share_prefix
    long_q = tuple(q + " and then " + " ".join(QUESTIONS) for q in QUESTIONS)
    out = []
    for prompts, temperature, new in [(_prompts(backend), 1.0, 10),
                                      (_prompts(backend), 0.0, 6),  # same batch, shorter: reused
                                      (_prompts(backend, long_q), 1.0, 12),  # longer: grown
                                      (_prompts(backend, QUESTIONS[:2], system=False), 1.0, 9),  # another batch size
                                      # one row, no padding: transformers leaves the prefill's causal mask out
                                      (_prompts(backend, long_q[:1]), 1.0, 8),
                                      (_prompts(backend), 1.0, 10)]:
        keys = NoiseKeys(tuple(range(7 * len(out), 7 * len(out) + len(prompts))))
        out.append(backend.generate(prompts, temperature=temperature, max_new_tokens=new, generator=keys))
    return out


def _assert_same(expected, got):
    for call_a, call_b in zip(expected, got, strict=True):
        for a, b in zip(call_a, call_b, strict=True):
            assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
            assert b.logprobs == pytest.approx(a.logprobs, abs=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_static_cache_samples_what_the_dynamic_cache_samples(architecture):
    dynamic, static = _backend("dynamic", architecture), _backend("static", architecture)
    assert static._static_caches is not None and static._static_caches.supported
    for share in (False, True):
        _assert_same(_calls(dynamic, share_prefix=share), _calls(static, share_prefix=share))


def test_buffers_are_reused_grown_and_kept_per_batch_size():
    backend = _backend("static")
    caches = backend._static_caches
    first = caches.acquire(3, 40)
    assert caches.acquire(3, 30) is first  # fits: the same buffers, reset
    assert caches._caches[3][0] == LENGTH_QUANTUM
    grown = caches.acquire(3, LENGTH_QUANTUM + 1)
    assert grown is not first and caches._caches[3][0] == 2 * LENGTH_QUANTUM
    other = caches.acquire(5, 10)
    assert other is not grown and caches.acquire(3, 20) is grown
    caches.clear()
    assert caches.acquire(3, 20) is not grown


def test_kept_caches_stay_under_the_byte_budget(monkeypatch):
    backend = _backend("static")
    prompts = _prompts(backend)
    caches = backend._static_caches
    for batch in (5, 4, 3):  # one cache per batch size, each filled by a real generate
        backend.generate(prompts[:batch], temperature=1.0, max_new_tokens=4, generator=NoiseKeys(tuple(range(batch))))
    assert list(caches._caches) == [5, 4, 3]
    sizes = {b: kv_cache._nbytes(c) for b, (_, c) in caches._caches.items()}
    # 2 layers x (keys, values) x [rows, kv_heads, 64 positions, head_dim] float32
    layer = caches._caches[5][1].layers[0]
    assert sizes[5] == 2 * 2 * layer.keys.numel() * 4 and layer.keys.shape[0] == 5
    assert caches.kept_bytes() == sizes[5] + sizes[4]
    monkeypatch.setattr(kv_cache, "MAX_KEPT_BYTES", sizes[4] + sizes[3])
    backend.generate(prompts[:2], temperature=1.0, max_new_tokens=4, generator=NoiseKeys((0, 1)))
    assert list(caches._caches) == [4, 3, 2]  # the least recently used went first
    monkeypatch.setattr(kv_cache, "MAX_KEPT_BYTES", 0)
    backend.generate(prompts[:4], temperature=1.0, max_new_tokens=4, generator=NoiseKeys((0, 1, 2, 3)))
    assert list(caches._caches) == [4] and caches.kept_bytes() == 0  # the cache in use is always kept


def test_a_reused_cache_carries_nothing_from_the_last_call():
    """Even a previous call that left NaN in its buffers (a diverged model) cannot reach the next one."""
    dynamic, static = _backend("dynamic"), _backend("static")
    prompts = _prompts(static)
    keys = NoiseKeys((1, 2, 3, 4, 5))
    static.generate(prompts, temperature=1.0, max_new_tokens=8, generator=keys)
    (_, cache), = static._static_caches._caches.values()
    with torch.inference_mode():  # sampling's buffers are inference tensors
        for layer in cache.layers:
            layer.keys.fill_(float("nan"))
            layer.values.fill_(float("nan"))
    got = static.generate(prompts, temperature=1.0, max_new_tokens=8, generator=keys)
    assert all(torch.isfinite(torch.tensor(g.logprobs)).all() for g in got)
    _assert_same([dynamic.generate(prompts, temperature=1.0, max_new_tokens=8, generator=keys)], [got])


def test_static_cache_trains_with_the_sampler_matching_the_trainer(tmp_path):
    from agent_lightning.config import validate
    from agent_lightning.loop.trainer import Trainer

    config = validate({
        "model": {"preset": "tiny", "preset_options": {"hidden_size": 32, "num_layers": 2, "num_heads": 2}},
        "backend": {"device": "cpu", "kv_cache": "static"},
        "environment": {"name": "guess-number", "max_number": 6, "max_turns": 3},
        "algorithm": {"name": "grpo", "group_size": 4},
        "sampling": {"max_new_tokens": 4, "max_turns": 3, "noise": "counter"},
        "trainer": {"steps": 2, "batch_size": 2, "eval_every": 0, "checkpoint_every": 0},
        "trackers": ["jsonl"],
    })
    trainer = Trainer(config, tmp_path / "run")
    trainer.run()
    import json

    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    diffs = [r["train/sampler_logprob_diff"] for r in rows if "train/sampler_logprob_diff" in r]
    assert len(diffs) == 2 and max(diffs) < 1e-5


def test_unsupported_configs_keep_the_dynamic_cache():
    class NoStatic:  # transformers cannot build a StaticCache from this
        def get_text_config(self, decoder=True):
            raise AttributeError("no text config")

    caches = StaticKVCaches(NoStatic())
    assert not caches.supported and caches.acquire(4, 100) is None


def test_fill_prefix_refuses_a_cache_without_per_layer_tensors():
    backend = _backend("static")
    static = backend._static_caches.acquire(2, 10)
    assert fill_prefix(static, object(), 2) is False
    assert int(static.layers[0].cumulative_length) == 0


def test_kv_cache_option_is_validated():
    from agent_lightning.config import ConfigError, validate

    with pytest.raises(ConfigError, match="backend.kv_cache"):
        validate({"backend": {"kv_cache": "paged"}})
