"""``backend.autocast: bfloat16``: bfloat16 matmuls under torch.autocast, float32 weights and
optimizer state, float32 training log-probs; the sampler/trainer gap is small and reported."""

from __future__ import annotations

import json

import pytest
import torch

from agent_lightning.config import ConfigError, load_config, validate
from agent_lightning.loop.trainer import Trainer


def _run(tmp_path, tiny_config_dict, name, autocast, algorithm=None):
    data = tiny_config_dict(**({"algorithm": algorithm} if algorithm else {}))
    data["backend"]["autocast"] = autocast
    data["trainer"].update(steps=2, eval_every=0, checkpoint_every=0)
    trainer = Trainer(validate(data), tmp_path / name)
    trainer.run()
    rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return trainer, [r for r in rows if "train/sampler_logprob_diff" in r]


def test_bfloat16_autocast_trains_float32_weights_and_reports_the_log_prob_gap(tmp_path, tiny_config_dict):
    trainer, rows = _run(tmp_path, tiny_config_dict, "bf16", "bfloat16")
    _, rows32 = _run(tmp_path, tiny_config_dict, "fp32", None)
    backend = trainer.backend
    assert backend.describe()["model/autocast"] == "bfloat16"
    assert all(p.dtype == torch.float32 for p in backend.model.parameters())
    assert all(v.dtype == torch.float32 for s in backend.optimizer.state.values() for v in s.values() if v.is_floating_point())
    # float32 sampling and training agree to rounding; bfloat16 matmuls in sampling open a small gap
    assert all(r["train/sampler_logprob_diff"] < 1e-4 for r in rows32)
    assert all(1e-4 < r["train/sampler_logprob_diff"] < 0.05 for r in rows), [r["train/sampler_logprob_diff"] for r in rows]


def test_generation_under_autocast_uses_bfloat16_matmuls(tmp_path, tiny_config_dict):
    data = tiny_config_dict()
    data["backend"]["autocast"] = "bfloat16"
    trainer = Trainer(validate(data), tmp_path / "run")
    backend = trainer.backend
    prompt = backend.encode_prompt([{"role": "user", "content": "guess my number between 1 and 6"}])
    seen = []
    hook = backend.model.lm_head.register_forward_hook(lambda mod, inputs, out: seen.append(out.dtype))
    try:
        backend.generate([prompt], temperature=1.0, max_new_tokens=2, generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.bfloat16}


def test_ppo_value_head_trains_under_autocast(tmp_path, tiny_config_dict):
    _, rows = _run(tmp_path, tiny_config_dict, "ppo", "bfloat16", algorithm={"name": "ppo", "lr": 0.003})
    assert len(rows) == 2 and all(r["train/value_loss"] == r["train/value_loss"] for r in rows)


def test_an_unknown_autocast_dtype_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="backend.autocast"):
        load_config("quickstart", ["backend.autocast=float8"])


def test_lora_under_autocast_keeps_the_frozen_base_in_bfloat16_and_the_adapters_in_float32(tmp_path, tiny_config_dict):
    data = tiny_config_dict(algorithm={"name": "grpo", "group_size": 4, "lr": 0.003, "kl_coef": 0.05})
    data["model"]["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    data["backend"]["autocast"] = "bfloat16"
    data["trainer"].update(steps=2, eval_every=0, checkpoint_every=0)
    trainer = Trainer(validate(data), tmp_path / "run")
    trainer.run()
    named = dict(trainer.backend.model.named_parameters())
    base = [p for n, p in named.items() if "base_layer" in n]
    adapters = [p for n, p in named.items() if "lora_" in n]
    assert base and all(p.dtype == torch.bfloat16 and not p.requires_grad for p in base)
    assert adapters and all(p.dtype == torch.float32 for p in adapters)
    assert all(p.dtype == torch.float32 for n, p in named.items() if "embed" in n or "norm" in n or "lm_head" in n)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    kls = [r["train/kl"] for r in rows if "train/kl" in r]
    assert len(kls) == 2 and all(k == k for k in kls)  # the reference (adapters off) runs in bfloat16 too


def test_lora_sampling_under_autocast_casts_the_frozen_head_once_and_samples_the_same(tmp_path, tiny_config_dict):
    import contextlib

    data = tiny_config_dict()
    data["model"]["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    data["model"]["preset_options"] = dict(data["model"]["preset_options"], tie_embeddings=True)
    data["backend"]["autocast"] = "bfloat16"
    backend = Trainer(validate(data), tmp_path / "run").backend
    head = backend.model.get_base_model().lm_head
    original = head.weight
    assert original is backend.model.get_base_model().model.embed_tokens.weight  # tied
    prompt = backend.encode_prompt([{"role": "user", "content": "guess my number between 1 and 6"}])
    seen = []
    hook = head.register_forward_hook(lambda mod, inputs, out: seen.append(mod.weight.dtype))

    def sample():
        return backend.generate([prompt] * 3, temperature=1.0, max_new_tokens=6,
                                generator=torch.Generator().manual_seed(3))

    try:
        swapped = sample()
        copy = backend._sampling_head_weight[2]
        again = sample()
        assert backend._sampling_head_weight[2] is copy  # cast once, reused while the head is unchanged
        backend._sampling_head = contextlib.nullcontext  # autocast's own per-call cast
        plain = sample()
    finally:
        hook.remove()
    assert set(seen[: 2 * len(seen) // 3]) == {torch.bfloat16}
    assert [(g.token_ids, g.logprobs) for g in swapped] == [(g.token_ids, g.logprobs) for g in plain]
    assert [g.token_ids for g in again] == [g.token_ids for g in swapped]
    assert head.weight is original and original.dtype == torch.float32  # the tie is back
    with torch.no_grad():
        original.mul_(1.5)  # a changed head (a loaded checkpoint) is cast again
    del backend._sampling_head
    sample()
    assert backend._sampling_head_weight[2] is not copy
    torch.testing.assert_close(backend._sampling_head_weight[2].float(), original.detach().to(torch.bfloat16).float())


AVX2_EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw avx512_bf16 amx_tile amx_bf16\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_auto_resolves_to_bfloat16_only_where_the_cpu_multiplies_it_natively():
    from agent_lightning.backends.transformers.precision import cpu_flags, resolve_autocast

    cpu = torch.device("cpu")
    assert resolve_autocast("auto", cpu, AVX2_EPYC) is None  # emulated bfloat16: slower than float32
    assert resolve_autocast("auto", cpu, SAPPHIRE_RAPIDS) == "bfloat16"
    assert resolve_autocast("auto", cpu, ARM) == "bfloat16"
    assert resolve_autocast("auto", cpu, "") is None  # unreadable: float32
    assert resolve_autocast("bfloat16", cpu, AVX2_EPYC) == "bfloat16"  # set explicitly: kept
    assert resolve_autocast(None, cpu, SAPPHIRE_RAPIDS) is None
    assert "avx512_bf16" not in cpu_flags("flags\t: avx512_bf16x\n")  # whole flags, not substrings


def test_auto_on_the_backend_follows_this_machine(tmp_path, tiny_config_dict):
    from agent_lightning.backends.transformers.precision import native_bfloat16

    data = tiny_config_dict()
    data["backend"]["autocast"] = "auto"
    trainer = Trainer(validate(data), tmp_path / "run")
    expected = "bfloat16" if native_bfloat16(torch.device("cpu")) else "off"
    assert trainer.backend.describe()["model/autocast"] == expected
