"""Every supported model family through the transformers backend: LoRA, one GRPO step, and
fused log-probs from the final hidden states equal to ``log_softmax(model(...).logits)``.

Each family is a tiny random-init preset (``model.preset_options.architecture``). Weights are
re-drawn larger than the default init so that logits span several units: only then do the
lm-head quirks (a bias, a logit scale, a final soft-cap, Gemma 2's attention soft-cap) change
the log-probs by far more than the 1e-5 tolerance, which each case also asserts.
"""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from agent_lightning import ops  # noqa: E402
from agent_lightning.algorithms.grpo import GRPO  # noqa: E402
from agent_lightning.backends.transformers import modeling  # noqa: E402
from agent_lightning.backends.transformers.backend import TransformersBackend  # noqa: E402
from agent_lightning.backends.transformers.lora_targets import LORA_TARGETS  # noqa: E402
from agent_lightning.config import BackendConfig, LoraSettings, ModelConfig  # noqa: E402
from agent_lightning.types import Task, Trajectory, Turn  # noqa: E402

SIZES = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 64,
         "max_positions": 64}
TEMPERATURE = 0.7  # != 1: the soft-cap must come before the temperature
ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa",
             "kv_b_proj"}
MLP = {"gate_proj", "up_proj", "down_proj", "gate_up_proj", "fc1", "fc2"}
MOE = {"deepseek_v2", "deepseek_v3"}

# architecture -> (extra preset options, expected head: tied, bias, logit_scale, softcap)
FAMILIES = {
    "llama": ({}, dict(tied=False, bias=False, scale=1.0, softcap=None)),
    "mistral": ({"config": {"sliding_window": 5}}, dict(tied=False, bias=False, scale=1.0, softcap=None)),
    "qwen2": ({"tie_embeddings": True}, dict(tied=True, bias=False, scale=1.0, softcap=None)),
    "qwen3": ({}, dict(tied=False, bias=False, scale=1.0, softcap=None)),
    "deepseek_v2": ({}, dict(tied=False, bias=False, scale=1.0, softcap=None)),
    "deepseek_v3": ({}, dict(tied=False, bias=False, scale=1.0, softcap=None)),
    "gemma": ({"tie_embeddings": None}, dict(tied=True, bias=False, scale=1.0, softcap=None)),
    "gemma2": ({"tie_embeddings": None,
                "config": {"final_logit_softcapping": 3.0, "attn_logit_softcapping": 2.0, "sliding_window": 5}},
               dict(tied=True, bias=False, scale=1.0, softcap=3.0)),
    "gemma3": ({"tie_embeddings": None, "config": {"final_logit_softcapping": 3.0, "sliding_window": 5}},
               dict(tied=True, bias=False, scale=1.0, softcap=3.0)),
    "phi": ({}, dict(tied=False, bias=True, scale=1.0, softcap=None)),
    "phi3": ({}, dict(tied=False, bias=False, scale=1.0, softcap=None)),
    "cohere": ({"tie_embeddings": None, "config": {"logit_scale": 0.25}},
               dict(tied=True, bias=False, scale=0.25, softcap=None)),
    "granite": ({"config": {"logits_scaling": 4.0}}, dict(tied=False, bias=False, scale=0.25, softcap=None)),
}
QUIRKY = {name for name, (_, e) in FAMILIES.items() if e["bias"] or e["scale"] != 1.0 or e["softcap"]}


def _backend(architecture: str, options: dict) -> TransformersBackend:
    model = ModelConfig(preset="tiny", preset_options={"architecture": architecture, **SIZES, **options},
                        lora=LoraSettings(r=4, alpha=8.0, target_modules="auto"))
    backend = TransformersBackend(model, BackendConfig(device="cpu"), seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in modeling.causal_lm(backend.model).named_parameters():
            if "lora_" not in name:
                # Larger than the default init (std 0.02): logits of several units, so every
                # part of the head and of attention matters; biases too (Phi's lm head).
                param.copy_(torch.randn(param.shape, generator=gen) * (0.35 if param.dim() > 1 else 0.5))
    return backend


PROMPTS = ("guess my number between 1 and 9", "my number is between 1 and 9 . guess it , answer with one number")


def _generate(backend: TransformersBackend, group: int = 4, seed: int = 5):
    """``group`` samples for each of two prompts of different lengths (a left-padded batch)."""
    tasks = [Task(id=f"t{k}", prompt=({"role": "user", "content": text},)) for k, text in enumerate(PROMPTS)]
    prompts = [backend.encode_prompt(task.prompt) for task in tasks for _ in range(group)]
    gens = backend.generate(prompts, temperature=TEMPERATURE, max_new_tokens=6,
                            generator=torch.Generator().manual_seed(seed))
    return tasks, prompts, gens


def _trajectories(backend: TransformersBackend, group: int = 4) -> list[Trajectory]:
    tasks, prompts, gens = _generate(backend, group)
    return [
        Trajectory(id=f"t/{i}", task=tasks[i // group], group=i // group, prompt_token_ids=tuple(prompt),
                   turns=(Turn(action=backend.decode(g.token_ids), action_token_ids=g.token_ids,
                               action_logprobs=g.logprobs),),
                   final_reward=float(i % 2))
        for i, (prompt, g) in enumerate(zip(prompts, gens))
    ]


def _model_logprobs(backend: TransformersBackend, trajectories: list[Trajectory], attention: str) -> torch.Tensor:
    """Ground truth: the model's own forward per sequence with its own ``attention``
    implementation, ``log_softmax(logits / T)`` at the sampled tokens, in stream order."""
    lm = modeling.causal_lm(backend.model)
    current = lm.config._attn_implementation
    lm.set_attn_implementation(attention)
    out = []
    try:
        with torch.no_grad():
            for traj in trajectories:
                ids = torch.tensor(traj.token_ids)
                logits = backend.model(input_ids=ids[None]).logits[0].float()
                logp = torch.log_softmax(logits / TEMPERATURE, dim=-1)
                positions = torch.tensor([i for i, m in enumerate(traj.policy_mask) if m])
                out.append(logp[positions - 1].gather(1, ids[positions][:, None])[:, 0])
    finally:
        lm.set_attn_implementation(current)
    return torch.cat(out)


@pytest.mark.parametrize("architecture", list(FAMILIES))
def test_family_lora_grpo_step_and_fused_logprobs(architecture):
    options, expected = FAMILIES[architecture]
    backend = _backend(architecture, options)
    lm = modeling.causal_lm(backend.model)
    assert lm.config._attn_implementation == modeling.PACKED_ATTENTION  # switched at load
    attention = "eager" if architecture == "gemma2" else "sdpa"  # the family's own, for the reference

    # The head as the backend sees it: tied weights, bias, logit scale and soft-cap found.
    head = modeling.output_head(backend.model)
    tied = head.weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr()
    assert (tied, head.bias is not None, head.logit_scale, head.softcap) == (
        expected["tied"], expected["bias"], pytest.approx(expected["scale"]), expected["softcap"])

    # LoRA on the family's attention and MLP projections (model.lora.target_modules: auto);
    # attention only for mixture-of-experts families.
    adapted = {name.rsplit(".", 1)[-1] for name, module in backend.model.named_modules() if hasattr(module, "lora_A")}
    linear = {name.removesuffix(".base_layer").rsplit(".", 1)[-1] for name, module in lm.named_modules()
              if isinstance(module, torch.nn.Linear) and "lora_" not in name}
    assert adapted == set(LORA_TARGETS[lm.config.model_type]) & linear
    assert adapted & ATTENTION and bool(adapted & MLP) == (architecture not in MOE)

    # One GRPO step through the real algorithm.
    trajectories = _trajectories(backend)
    algo = GRPO(group_size=4, lr=0.05)  # two groups of four
    algo.setup(backend, total_steps=1, temperature=TEMPERATURE)
    batch = algo.prepare(trajectories)
    before = {n: p.detach().clone() for n, p in backend.model.named_parameters() if p.requires_grad}
    metrics = algo.update(backend, batch)
    assert math.isfinite(metrics["pg_loss"]) and math.isfinite(metrics["grad_norm"]) and metrics["grad_norm"] > 0
    # Before the step the policy is the sampler: fused log-probs equal the sampling log-probs.
    assert metrics["sampler_logprob_diff"] < 1e-5
    after = dict(backend.model.named_parameters())
    changed = [n for n, p in before.items() if not torch.equal(p, after[n].detach())]
    assert changed and all("lora_" in n for n in before)

    # After the step (adapters now non-zero): fused log-probs == log_softmax(model logits).
    with torch.no_grad():
        fused, _ = backend.token_logprobs(batch, temperature=TEMPERATURE)
    reference = _model_logprobs(backend, trajectories, attention)
    assert fused.dtype == torch.float32 and fused.shape == reference.shape
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=0)

    if architecture in QUIRKY:
        # The check can fail: a bare ``hidden @ weight.T`` misses the family's head by far.
        with torch.no_grad():
            hidden = modeling.final_hidden_states(backend.model, batch.input_ids, batch.position_ids, batch.cu_seqlens)
            index = batch.policy_index
            bare = ops.token_logprobs(hidden[index - 1], head.weight, batch.input_ids[index], temperature=TEMPERATURE)
        assert (bare - reference).abs().max() > 1e-3


def test_gemma2_attention_softcap_packed_and_cached():
    """Gemma 2 soft-caps attention scores, which SDPA cannot: packed attention does it per
    sequence, and in the non-packed calls (left-padded generation with a KV cache) too."""
    backend = _backend("gemma2", FAMILIES["gemma2"][0])
    lm = modeling.causal_lm(backend.model)
    assert lm.config._attn_implementation == modeling.PACKED_ATTENTION  # switched at load
    lm.set_attn_implementation("eager")  # what transformers gives Gemma 2
    eager = _generate(backend)[2]
    assert modeling.use_packed_attention(backend.model) and lm.config._attn_implementation == modeling.PACKED_ATTENTION
    packed = _generate(backend)[2]
    assert [g.token_ids for g in packed] == [g.token_ids for g in eager]
    torch.testing.assert_close(torch.tensor([lp for g in packed for lp in g.logprobs]),
                               torch.tensor([lp for g in eager for lp in g.logprobs]), atol=1e-5, rtol=0)

    trajectories = _trajectories(backend)
    batch = GRPO(group_size=4).prepare(trajectories)
    reference = _model_logprobs(backend, trajectories, "eager")
    with torch.no_grad():
        torch.testing.assert_close(backend.token_logprobs(batch, temperature=TEMPERATURE)[0], reference,
                                   atol=1e-5, rtol=0)
        for layer in lm.model.layers:  # the check can fail: without the cap the log-probs move
            layer.self_attn.attn_logit_softcapping = None
        uncapped, _ = backend.token_logprobs(batch, temperature=TEMPERATURE)
    assert (uncapped - reference).abs().max() > 1e-3


# Families whose logit scale only the table in agent_lightning.backends.transformers.modeling knows (forward check).
SCALED = {
    "cohere2": ("Cohere2Config", "Cohere2ForCausalLM", {"logit_scale": 0.25, "sliding_window": 5}),
    "granitemoe": ("GraniteMoeConfig", "GraniteMoeForCausalLM",
                   {"logits_scaling": 4.0, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "granitemoeshared": ("GraniteMoeSharedConfig", "GraniteMoeSharedForCausalLM",
                         {"logits_scaling": 4.0, "num_local_experts": 4, "num_experts_per_tok": 2,
                          "shared_intermediate_size": 32}),
    "hyperclovax": ("HyperCLOVAXConfig", "HyperCLOVAXForCausalLM", {"logits_scaling": 3.0}),
}


@pytest.mark.parametrize("model_type", list(SCALED))
def test_logit_scale_table(model_type):
    config_name, model_name, extra = SCALED[model_type]
    if not hasattr(transformers, model_name):
        pytest.skip(f"this transformers has no {model_name}")
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(vocab_size=61, hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                                                eos_token_id=2, **extra)
    model = getattr(transformers, model_name)(config).eval()
    assert config.model_type == model_type
    ids = torch.randint(0, 61, (12,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = torch.log_softmax(model(input_ids=ids[None]).logits[0, :-1], dim=-1).gather(1, ids[1:, None])[:, 0]
        hidden = modeling.final_hidden_states(model, ids, torch.arange(12), torch.tensor([0, 12], dtype=torch.int32))
        head = modeling.output_head(model)
        fused = ops.token_logprobs(hidden[:-1], head.weight, ids[1:], bias=head.bias, logit_scale=head.logit_scale,
                                   softcap=head.softcap)
        bare = ops.token_logprobs(hidden[:-1], head.weight, ids[1:])
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=0)
    assert head.logit_scale != 1.0 and (bare - reference).abs().max() > 1e-5
