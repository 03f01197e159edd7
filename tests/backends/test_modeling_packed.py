"""Padding-free forward (agent_lightning.backends.transformers.modeling) against the model's own padded forward."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from agent_lightning.backends.transformers.modeling import PACKED_ATTENTION, final_hidden_states, lm_head  # noqa: E402
from agent_lightning.ops.packing import pack_lengths  # noqa: E402

VOCAB = 53


def tiny_model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        attn_implementation="sdpa",
    )
    if family == "llama":
        config = transformers.LlamaConfig(**common, tie_word_embeddings=False)
        model = transformers.LlamaForCausalLM(config)
    elif family == "qwen2":
        config = transformers.Qwen2Config(**common, tie_word_embeddings=True)
        model = transformers.Qwen2ForCausalLM(config)
    else:  # pragma: no cover
        raise ValueError(family)
    return model.float().eval()


def with_lora(model):
    peft = pytest.importorskip("peft")
    # init_lora_weights=False: B is random, so the adapters really change the output.
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    return peft.get_peft_model(model, cfg)


def random_batch(lengths: list[int], seed: int):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, VOCAB, (n,), generator=g) for n in lengths]
    layout = pack_lengths(torch.tensor(lengths))
    return seqs, torch.cat(seqs), layout


def packed_logprobs(model, flat_ids, layout):
    hidden = final_hidden_states(model, flat_ids, layout.position_ids, layout.cu_seqlens)
    weight, bias = lm_head(model)
    logits = torch.nn.functional.linear(hidden, weight, bias)
    logp = torch.log_softmax(logits.float(), dim=-1)
    # Row t predicts token t+1 of the same sequence; the last row of each sequence predicts nothing.
    out = []
    cu = layout.cu_seqlens.tolist()
    for s, e in zip(cu[:-1], cu[1:]):
        tgt = flat_ids[s + 1 : e]
        out.append(logp[s : e - 1].gather(-1, tgt[:, None])[:, 0])
    return out


def padded_logprobs(model, seqs):
    """Ground truth: the model's own forward on a right-padded batch with an attention mask."""
    tmax = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), tmax, dtype=torch.long)
    mask = torch.zeros(len(seqs), tmax, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    logits = model(input_ids=ids, attention_mask=mask).logits
    logp = torch.log_softmax(logits.float(), dim=-1)
    return [logp[i, : len(s) - 1].gather(-1, s[1:, None])[:, 0] for i, s in enumerate(seqs)]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("lora", [False, True])
def test_packed_logprobs_equal_padded(family, lora):
    model = tiny_model(family, seed=3)
    if lora:
        model = with_lora(model)
    lengths = [1, 17, 5, 1, 33, 2, 9]
    seqs, flat, layout = random_batch(lengths, seed=11)
    config = model.get_base_model().config if lora else model.config
    assert config._attn_implementation == "sdpa"
    with torch.no_grad():
        want = padded_logprobs(model, seqs)  # before the switch: transformers' own SDPA path
        got = packed_logprobs(model, flat, layout)
        assert config._attn_implementation == PACKED_ATTENTION  # the switch is permanent
        again = padded_logprobs(model, seqs)  # padded calls are delegated to SDPA afterwards
    for i, (g, w, a) in enumerate(zip(got, want, again)):
        assert g.shape == w.shape, i
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5, msg=f"sequence {i} (length {lengths[i]})")
        torch.testing.assert_close(a, w, rtol=0, atol=1e-6, msg=f"padded sequence {i} after the switch")


@pytest.mark.parametrize("checkpointing", [False, True])
def test_packed_gradients_equal_padded(checkpointing):
    model = with_lora(tiny_model("llama", seed=5))
    if checkpointing:
        # The backward pass re-runs every layer's forward: it must attend within sequences again.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    lengths = [4, 1, 21, 8]
    seqs, flat, layout = random_batch(lengths, seed=2)
    params = [p for p in model.parameters() if p.requires_grad]

    loss_ref = torch.cat(padded_logprobs(model, seqs)).sum()  # before the switch to packed attention
    g_padded = torch.autograd.grad(loss_ref, params)
    loss = torch.cat(packed_logprobs(model, flat, layout)).sum()
    g_packed = torch.autograd.grad(loss, params)
    torch.testing.assert_close(loss, loss_ref, rtol=0, atol=1e-4)
    for a, b in zip(g_packed, g_padded):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_sequences_do_not_see_each_other():
    """Changing one sequence's tokens must leave every other sequence's hidden states unchanged."""
    model = tiny_model("llama", seed=1)
    lengths = [6, 1, 9]
    _, flat, layout = random_batch(lengths, seed=4)
    with torch.no_grad():
        h1 = final_hidden_states(model, flat, layout.position_ids, layout.cu_seqlens)
        flat2 = flat.clone()
        flat2[7:] = (flat2[7:] + 1) % VOCAB  # the third sequence only
        h2 = final_hidden_states(model, flat2, layout.position_ids, layout.cu_seqlens)
    torch.testing.assert_close(h1[:7], h2[:7], rtol=0, atol=0)
    assert not torch.allclose(h1[7:], h2[7:])


def test_lm_head_tied_and_peft():
    qwen = tiny_model("qwen2")
    w, b = lm_head(qwen)
    assert w.data_ptr() == qwen.get_input_embeddings().weight.data_ptr() and b is None
    llama = with_lora(tiny_model("llama"))
    w, b = lm_head(llama)
    assert w.shape == (VOCAB, 64) and b is None


def test_bad_inputs_are_named():
    model = tiny_model("llama")
    layout = pack_lengths(torch.tensor([3, 2]))
    with pytest.raises(ValueError, match="cu_seqlens"):
        final_hidden_states(model, torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), layout.cu_seqlens)
    with pytest.raises(ValueError, match="flat input_ids"):
        final_hidden_states(model, torch.zeros(1, 5, dtype=torch.long), layout.position_ids, layout.cu_seqlens)


def test_packed_attention_is_registered_name():
    assert PACKED_ATTENTION == "al_packed"


def test_cpu_path_is_really_packed(monkeypatch):
    """The CPU path must not fall back to padding, and must call the packed attention per layer."""
    import agent_lightning.backends.transformers.modeling as modeling

    def no_padding(*args, **kwargs):
        raise AssertionError("fell back to the padded path")

    calls = []
    real = modeling.packed_sdpa_attention

    def spy(module, query, *args, **kwargs):
        calls.append(query.shape)
        return real(module, query, *args, **kwargs)

    monkeypatch.setattr(modeling, "padded_hidden_states", no_padding)
    modeling.register_packed_attention()  # so that the spy below is not overwritten by the first call
    transformers.AttentionInterface.register(PACKED_ATTENTION, spy)
    try:
        model = tiny_model("qwen2")
        _, flat, layout = random_batch([3, 1, 4], seed=0)
        with torch.no_grad():
            final_hidden_states(model, flat, layout.position_ids, layout.cu_seqlens)
    finally:
        transformers.AttentionInterface.register(PACKED_ATTENTION, real)
    assert [tuple(s) for s in calls] == [(1, 4, 8, 16)] * 2  # one packed row, 2 layers


def test_packed_row_without_cu_seqlens_uses_position_ids():
    """A decoder call on a packed row with restarting position_ids (no cu_seqlens kwarg), as a
    plain transformers forward would make it, also stays within sequences."""
    from agent_lightning.backends.transformers.modeling import decoder, use_packed_attention

    model = tiny_model("qwen2", seed=2)
    _, flat, layout = random_batch([5, 1, 8], seed=6)
    with torch.no_grad():
        want = final_hidden_states(model, flat, layout.position_ids, layout.cu_seqlens)
        assert use_packed_attention(model)
        got = decoder(model)(input_ids=flat[None], position_ids=layout.position_ids[None]).last_hidden_state[0]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_generation_unchanged_by_packed_attention():
    from agent_lightning.backends.transformers.modeling import use_packed_attention

    model = tiny_model("llama", seed=8)
    prompt = torch.tensor([[3, 5, 7, 11], [0, 0, 2, 4]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])  # left padding, as generate expects
    kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        want = model.generate(prompt, **kwargs)
        assert use_packed_attention(model)
        got = model.generate(prompt, **kwargs)
    assert torch.equal(got, want)


def test_length_buckets_cover_every_sequence_within_the_padding_budget():
    import random

    from agent_lightning.backends.transformers.modeling import PADDING_BUDGET, length_buckets

    rng = random.Random(3)
    for _ in range(50):
        sizes = [rng.choice([0, 1, rng.randint(1, 600)]) for _ in range(rng.randint(1, 40))]
        buckets = length_buckets(sizes)
        assert sorted(i for b in buckets for i in b) == [i for i, n in enumerate(sizes) if n]
        for bucket in buckets:
            longest = max(sizes[i] for i in bucket)
            own = sum(sizes[i] ** 2 for i in bucket)
            assert len(bucket) == 1 or len(bucket) * longest**2 <= (1 + PADDING_BUDGET) * own


@pytest.mark.parametrize("heads,kv_heads,value_dim", [(4, 4, 8), (6, 2, 8), (4, 4, 5)])
def test_bucketed_attention_equals_one_call_per_sequence(heads, kv_heads, value_dim):
    import torch.nn.functional as F

    from agent_lightning.backends.transformers.modeling import _bucketed_causal_sdpa

    gen = torch.Generator().manual_seed(5)
    sizes = [7, 1, 0, 30, 29, 3, 64, 8, 8, 2]
    total, dim = sum(sizes), 8
    q = torch.randn(1, heads, total, dim, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, kv_heads, total, dim, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, kv_heads, total, value_dim, generator=gen, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(1, total, heads, value_dim, generator=gen, dtype=torch.float64)
    ours = _bucketed_causal_sdpa(q, k, v, sizes, None, 0.0, kv_heads != heads)
    grads = torch.autograd.grad((ours * upstream).sum(), (q, k, v))
    reference = torch.cat([
        F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=kv_heads != heads).transpose(1, 2)
        for qs, ks, vs in zip(*(t.split(sizes, dim=2) for t in (q, k, v))) if qs.shape[2]], dim=1)
    ref_grads = torch.autograd.grad((reference * upstream).sum(), (q, k, v))
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_a_row_of_many_sequences_takes_the_bucketed_path_and_equals_padded(monkeypatch):
    from agent_lightning.backends.transformers import modeling

    calls = []
    real = modeling._bucketed_causal_sdpa
    monkeypatch.setattr(modeling, "_bucketed_causal_sdpa", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = tiny_model("llama", seed=4)
    lengths = [1 + (i * 7) % 23 for i in range(modeling.BUCKETED_MIN_SEQUENCES + 6)]
    seqs, flat, layout = random_batch(lengths, seed=12)
    with torch.no_grad():
        want = padded_logprobs(model, seqs)
        got = packed_logprobs(model, flat, layout)
    assert len(calls) == model.config.num_hidden_layers  # one bucketed call per layer
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5, msg=f"sequence {i} (length {lengths[i]})")


def test_packed_attention_under_autocast_runs_in_float32(monkeypatch):
    """On CPU, bfloat16 SDPA is ~3.5x slower at training shapes: a packed row's attention is
    computed in float32 (also when autocast would cast q/k/v down), in the query's dtype out."""
    import torch.nn.functional as F

    import agent_lightning.backends.transformers.modeling as modeling

    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype, torch.is_autocast_enabled("cpu")))
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    gen = torch.Generator().manual_seed(2)
    sizes = [5, 9, 3]
    cu = torch.tensor([0, 5, 14, 17], dtype=torch.int32)
    q, k, v = (torch.randn(1, 4, 17, 8, generator=gen) for _ in range(3))
    exact, _ = modeling.packed_sdpa_attention(None, q, k, v, None, cu_seq_lens_q=cu)
    seen.clear()
    out, _ = modeling.packed_sdpa_attention(None, q.bfloat16(), k.bfloat16(), v.bfloat16(), None, cu_seq_lens_q=cu)
    assert out.dtype == torch.bfloat16 and seen == [(torch.float32,) * 3 + (False,)] * len(sizes)
    torch.testing.assert_close(out, modeling.packed_sdpa_attention(
        None, q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(), None, cu_seq_lens_q=cu)[0].bfloat16())
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 q/k (after rotary), bfloat16 v
        mixed, _ = modeling.packed_sdpa_attention(None, q, k, v.bfloat16(), None, cu_seq_lens_q=cu)
    assert seen == [(torch.float32,) * 3 + (False,)] * len(sizes) and mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, exact, atol=2e-2, rtol=2e-2)  # v rounded to bfloat16, nothing else


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive", "bool-one-row"])
def test_a_decode_step_on_the_cpu_equals_sdpa(kv_heads, mask_kind):
    """One query per row (generation with a KV cache) takes two matmuls and a softmax instead of SDPA."""
    from agent_lightning.backends.transformers.modeling import _decode_step_attention

    g = torch.Generator().manual_seed(kv_heads)
    rows, keys = 5, 9
    query = torch.randn(rows, 4, 1, 8, generator=g)
    key, value = torch.randn(rows, kv_heads, keys, 8, generator=g), torch.randn(rows, kv_heads, keys, 6, generator=g)
    allowed = torch.rand(rows, 1, 1, keys, generator=g) > 0.3
    allowed[..., -1] = True  # the newest key (the token itself) is always there
    mask = {"none": None, "bool": allowed, "additive": torch.where(allowed, 0.0, -1e9),
            "bool-one-row": allowed[:1]}[mask_kind]
    want = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=0.3,
                                                            enable_gqa=kv_heads != 4).transpose(1, 2)
    got = _decode_step_attention(query, key, value, mask, 0.3)
    assert got.shape == (rows, 1, 4, 6)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_generation_takes_the_decode_step_path_once_packed(monkeypatch):
    from agent_lightning.backends.transformers import modeling

    calls = []
    real = modeling._decode_step_attention
    monkeypatch.setattr(modeling, "_decode_step_attention", lambda *a: calls.append(a[0].shape) or real(*a))
    model = tiny_model("qwen2", seed=4)
    prompt, mask = torch.tensor([[3, 5, 7, 11], [0, 0, 2, 4]]), torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    kwargs = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        want = model.generate(prompt, **kwargs)
        assert not calls
        modeling.use_packed_attention(model)
        got = model.generate(prompt, **kwargs)
    assert torch.equal(got, want)
    assert len(calls) == 4 * 2  # 4 decode steps after the prompt's, 2 layers
