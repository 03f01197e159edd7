"""Training forwards that encode a group's shared prompt once (shared_prompts.py, segment_attention.py)
against every sequence run in full."""

from __future__ import annotations

import json

import pytest
import torch

from agent_lightning.backends.transformers import modeling, segment_attention, shared_prompts, tiny
from agent_lightning.loop.batch import PackedBatch
from agent_lightning.ops import pack_lengths


def grouped_batch(vocab: int, seed: int = 1, groups=((7, 3), (5, 2), (6, 1)), prompt_only: bool = False) -> PackedBatch:
    """Groups of ``(prompt length, members)``; each member: prompt, a sampled reply, an
    observation, a second reply (policy tokens: the replies), all of different lengths."""
    g = torch.Generator().manual_seed(seed)
    seqs, masks = [], []
    for prompt_len, members in groups:
        prompt = torch.randint(1, vocab, (prompt_len,), generator=g).tolist()
        for i in range(members):
            reply = torch.randint(1, vocab, (3 + 2 * i,), generator=g).tolist()
            obs = torch.randint(1, vocab, (4,), generator=g).tolist()
            reply2 = torch.randint(1, vocab, (2 + i,), generator=g).tolist()
            seqs.append(prompt + reply + obs + reply2)
            masks.append([0] * prompt_len + [1] * len(reply) + [0] * 4 + [1] * len(reply2))
    if prompt_only:  # one more member of the first group that never got a policy token
        seqs.append(seqs[0][:groups[0][0] + 2])
        masks.append([0] * len(seqs[-1]))
    layout = pack_lengths([len(s) for s in seqs])
    policy, counts = [], []
    for b, mask in enumerate(masks):
        start = int(layout.cu_seqlens[b])
        positions = [start + i for i, m in enumerate(mask) if m]
        policy += positions
        counts.append(len(positions))
    n = len(policy)
    return PackedBatch(torch.tensor(sum(seqs, [])), layout.position_ids, layout.cu_seqlens, torch.tensor(policy),
                       pack_lengths(counts).cu_seqlens, torch.zeros(n), torch.zeros(n), torch.zeros(n, dtype=torch.int32),
                       [str(b) for b in range(len(seqs))])


def _prompts(batch):
    return shared_prompts.prompt_lengths(batch.cu_seqlens, batch.policy_index, batch.policy_cu_seqlens)


def test_each_group_prompt_appears_once_and_every_token_maps_to_its_copy():
    batch = grouped_batch(50, prompt_only=True)
    prompts = _prompts(batch)
    assert prompts[:6] == [7, 7, 7, 5, 5, 6] and prompts[6] == batch.cu_seqlens[7] - batch.cu_seqlens[6]
    shared = shared_prompts.share_prefixes(batch.input_ids, batch.cu_seqlens, prompts)
    assert shared is not None
    # 3 x 7 and 2 x 5 prompt tokens become 7 + 5; the single sequence and the prompt-only one stay whole.
    assert batch.input_ids.numel() - shared.input_ids.numel() == 2 * 7 + 1 * 5
    assert torch.equal(shared.input_ids[shared.index], batch.input_ids)
    assert torch.equal(shared.position_ids[shared.index], batch.position_ids)
    sizes = (shared.cu_seqlens[1:] - shared.cu_seqlens[:-1]).tolist()
    roots = [s for s, p in enumerate(shared.parents) if p < 0]
    assert sorted(sizes[s] for s in roots) == sorted([7, 5, 6 + 9, 9])  # two prompts, two whole sequences
    children = [s for s, p in enumerate(shared.parents) if p >= 0]
    assert len(children) == 5 and all(shared.parents[c] < c for c in children)
    # a child's first token continues its prompt's positions
    for c in children:
        first = int(shared.cu_seqlens[c])
        assert int(shared.position_ids[first]) == sizes[shared.parents[c]]


def test_nothing_is_shared_below_the_saving_threshold_or_without_groups():
    batch = grouped_batch(50, groups=((7, 1), (5, 1)))
    assert shared_prompts.share_prefixes(batch.input_ids, batch.cu_seqlens, _prompts(batch)) is None
    batch = grouped_batch(50, groups=((2, 2), (5, 1)))  # 2 tokens saved of ~40
    assert shared_prompts.share_prefixes(batch.input_ids, batch.cu_seqlens, _prompts(batch)) is None
    assert shared_prompts.share_prefixes(batch.input_ids, batch.cu_seqlens, _prompts(batch), min_saving=0.0) is not None
    with pytest.raises(ValueError, match="3 prompt lengths for 2 sequences"):
        shared_prompts.share_prefixes(batch.input_ids[:10], torch.tensor([0, 4, 10], dtype=torch.int32), [1, 2, 3])


def _grads(model):
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _compare(model, batch):
    """Hidden states and weight gradients, shared vs in full; returns the two forwards' token counts."""
    weights = None
    results = []
    for share in (False, True):
        hidden = shared_prompts.policy_hidden_states(model, batch, "cpu", share=share)
        if weights is None:
            weights = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(3))
        (hidden.float() * weights).sum().backward()
        results.append((hidden.detach(), _grads(model)))
        model.zero_grad(set_to_none=True)
    (h_full, g_full), (h_shared, g_shared) = results
    torch.testing.assert_close(h_shared, h_full, rtol=1e-5, atol=1e-5)
    assert len(g_full) == len(g_shared) > 0
    for a, b in zip(g_full, g_shared):  # float32 rounding of differently batched sums: relative to the tensor's scale
        assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())


@pytest.mark.parametrize("architecture", tiny.ARCHITECTURES)
def test_shared_prompts_give_the_full_forwards_hidden_states_and_gradients(architecture, monkeypatch):
    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(tokenizer, architecture=architecture, num_kv_heads=2).float()
    calls = []
    real = segment_attention.segment_sdpa
    monkeypatch.setattr(segment_attention, "segment_sdpa", lambda *a, **k: calls.append(1) or real(*a, **k))
    _compare(model, grouped_batch(model.config.vocab_size, prompt_only=True))
    assert calls  # the shared forward really went through the segment attention


@pytest.mark.parametrize("extra", [{"sliding_window": 6}, {"attn_logit_softcapping": 2.0, "sliding_window": 5}])
def test_sliding_windows_and_soft_capping_shorter_than_the_sequences(extra):
    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(tokenizer, architecture="gemma2", config=extra).float()
    _compare(model, grouped_batch(model.config.vocab_size, groups=((9, 3), (7, 2))))


def test_with_lora_and_under_bfloat16_autocast():
    peft = pytest.importorskip("peft")
    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(tokenizer, architecture="qwen2").float()
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                       init_lora_weights=False))
    batch = grouped_batch(model.config.vocab_size)
    _compare(model, batch)
    float32 = shared_prompts.policy_hidden_states(model, batch, "cpu", share=True).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = shared_prompts.policy_hidden_states(model, batch, "cpu", share=False).detach().float()
        shared = shared_prompts.policy_hidden_states(model, batch, "cpu", share=True).detach().float()
    # bfloat16 rounding differs between the two layouts' matmuls: compare at its precision
    assert float((full - shared).abs().max()) < 0.05 * float(full.abs().max())
    assert float((float32 - shared).abs().max()) > 1e-3  # autocast was really on


def _dense_reference(query, key, value, sizes, parents):
    """Each segment's queries over its ancestors' and its own keys, one SDPA call per segment."""
    starts = [0]
    for n in sizes[:-1]:
        starts.append(starts[-1] + n)
    out = torch.zeros(query.shape[2], query.shape[1], value.shape[3])
    for s, n in enumerate(sizes):
        chain, p = [], parents[s]
        while p >= 0:
            chain.insert(0, p)
            p = parents[p]
        keys = torch.cat([torch.arange(starts[a], starts[a] + sizes[a]) for a in (*chain, s)])
        prior = len(keys) - n
        q = query[:, :, starts[s]:starts[s] + n]
        k, v = key[:, :, keys], value[:, :, keys]
        allowed = torch.arange(len(keys))[None, :] <= prior + torch.arange(n)[:, None]
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                                             enable_gqa=key.shape[1] != query.shape[1])
        out[starts[s]:starts[s] + n] = o[0].transpose(0, 1)
    return out.unsqueeze(0)


@pytest.mark.parametrize("path", ["matmul", "sdpa"])
@pytest.mark.parametrize("heads,kv_heads,value_dim", [(4, 4, 8), (4, 2, 8), (2, 1, 5)])
def test_segment_attention_with_grandparents_equals_one_call_per_segment(heads, kv_heads, value_dim, path, monkeypatch):
    # Small buckets on a CPU take two matmuls and a softmax; MATH_MAX_SCORES = 0 sends every one to SDPA.
    if path == "sdpa":
        monkeypatch.setattr(segment_attention, "MATH_MAX_SCORES", 0)
    taken = []
    real = segment_attention._matmul_attention
    monkeypatch.setattr(segment_attention, "_matmul_attention", lambda *a: taken.append(1) or real(*a))
    sizes = [5, 3, 4, 0, 6, 2, 7, 1]
    parents = (-1, 0, 1, 0, -1, 4, 0, 6)  # chains: 0 <- 1 <- 2, 0 <- 6 <- 7, 4 <- 5; an empty segment
    g = torch.Generator().manual_seed(0)
    total = sum(sizes)
    query = torch.randn(1, heads, total, 8, generator=g, requires_grad=True)
    key = torch.randn(1, kv_heads, total, 8, generator=g, requires_grad=True)
    value = torch.randn(1, kv_heads, total, value_dim, generator=g, requires_grad=True)
    got = segment_attention.segment_sdpa(None, query, key, value, sizes, parents, None, 0.0, None, None)
    want = _dense_reference(query, key, value, sizes, parents)
    assert bool(taken) == (path == "matmul")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    weights = torch.randn(got.shape, generator=g)
    grads_got = torch.autograd.grad((got * weights).sum(), (query, key, value))
    grads_want = torch.autograd.grad((want * weights).sum(), (query, key, value))
    for a, b in zip(grads_got, grads_want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_buckets_cover_every_segment_once_within_the_padding_budget():
    g = torch.Generator().manual_seed(5)
    shapes = [(int(q), int(q) + int(k)) for q, k in zip(torch.randint(0, 40, (60,), generator=g),
                                                       torch.randint(0, 200, (60,), generator=g))]
    buckets = segment_attention.buckets_by_work(shapes)
    members = sorted(i for b in buckets for i in b)
    assert members == [i for i, (q, _) in enumerate(shapes) if q]
    for b in buckets:
        if len(b) > 1:
            work = sum(shapes[i][0] * shapes[i][1] for i in b)
            assert len(b) * max(shapes[i][0] for i in b) * max(shapes[i][1] for i in b) <= 1.25 * work


def test_small_buckets_may_pad_beyond_the_budget_up_to_the_small_limit():
    shapes = [(15, 15)] + [(q, 15 + q) for q in (3, 8, 4, 6, 8, 3)]
    assert len(segment_attention.buckets_by_work(shapes)) > 1  # the padding budget splits them
    limit = 7 * 15 * 23  # every segment padded to the largest query and key
    assert segment_attention.buckets_by_work(shapes, small=limit) == [[0, 1, 6, 3, 4, 2, 5]]  # by key length
    buckets = segment_attention.buckets_by_work(shapes, small=limit - 1)
    assert len(buckets) > 1 and sorted(i for b in buckets for i in b) == list(range(7))
    for b in buckets:
        padded = len(b) * max(shapes[i][0] for i in b) * max(shapes[i][1] for i in b)
        assert padded <= limit - 1 or padded <= 1.25 * sum(shapes[i][0] * shapes[i][1] for i in b)


def test_a_parent_must_come_first():
    with pytest.raises(ValueError, match=r"segment_parents\[1\] = 2"):
        segment_attention.segment_layout((2, 2, 2), (-1, 2, -1), None, "cpu")
    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(tokenizer)
    with pytest.raises(ValueError, match="segment_parents has 1 entries for 2 sequences"):
        modeling.final_hidden_states(model, torch.arange(1, 5), torch.tensor([0, 1, 0, 1]),
                                     torch.tensor([0, 2, 4], dtype=torch.int32), segment_parents=(-1,))


def test_a_grpo_run_shares_its_prompts_and_keeps_the_sampler_matching_the_trainer(tmp_path, monkeypatch):
    from agent_lightning.config import validate
    from agent_lightning.loop.trainer import Trainer

    shared_forwards = []
    real = shared_prompts.share_prefixes
    monkeypatch.setattr(shared_prompts, "share_prefixes",
                        lambda *a, **k: (lambda out: shared_forwards.append(out is not None) or out)(real(*a, **k)))
    metrics = {}
    for share in (True, False):
        config = validate({
            "model": {"preset": "tiny", "preset_options": {"hidden_size": 32, "num_layers": 2, "num_heads": 2}},
            "backend": {"device": "cpu", "share_prompts": share},
            "environment": {"name": "guess-number", "max_number": 6, "max_turns": 3},
            "algorithm": {"name": "grpo", "group_size": 4},
            "sampling": {"max_new_tokens": 4, "max_turns": 3, "noise": "counter"},
            "trainer": {"steps": 2, "batch_size": 2, "eval_every": 0, "checkpoint_every": 0, "seed": 3},
            "trackers": ["jsonl"],
        })
        Trainer(config, tmp_path / str(share)).run()
        rows = [json.loads(x) for x in (tmp_path / str(share) / "metrics.jsonl").read_text().splitlines()]
        metrics[share] = [r for r in rows if "train/sampler_logprob_diff" in r]
        if share:
            assert shared_forwards and all(shared_forwards)
            shared_forwards.clear()
    assert not shared_forwards  # share_prompts: false never builds the layout
    assert len(metrics[True]) == len(metrics[False]) == 2
    assert all(on["train/sampler_logprob_diff"] < 1e-5 for on in metrics[True])
    on, off = metrics[True][0], metrics[False][0]  # the first step trains on the same episodes either way
    for key in ("train/pg_loss", "train/grad_norm", "train/entropy", "train/ratio_mean"):
        assert on[key] == pytest.approx(off[key], rel=1e-4, abs=1e-6), key


def test_the_update_keeps_a_group_in_one_micro_batch_and_counts_its_prompt_once(monkeypatch):
    from agent_lightning.algorithms import training
    from agent_lightning.backends.transformers.backend import TransformersBackend
    from agent_lightning.config import BackendConfig, ModelConfig

    # Two groups of 4 with a 60-token prompt and 9-18 tokens after it: 294 tokens a group in full,
    # 114 with the prompt once. A budget of 300 needs two micro-batches counted in full, one shared.
    batch = grouped_batch(60, groups=((60, 4), (60, 4)))
    batch.advantages = torch.linspace(-1, 1, batch.policy_index.numel())
    options = training.PolicyGradientOptions(lr=1e-3, micro_batch_tokens=300)
    results = {}
    for share in (True, False):
        backend = TransformersBackend(ModelConfig(preset="tiny", preset_options={"hidden_size": 32, "num_layers": 2,
                                                                                 "num_heads": 2}),
                                      BackendConfig(device="cpu", share_prompts=share), seed=0)
        backend.configure_optimizer(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, total_steps=1,
                                    schedule="constant")
        micro_batches = []

        def loss_fn(backend, micro, norm_tokens):
            micro_batches.append(sorted(int(i) for i in micro.trajectory_ids))
            return training.PolicyGradient(training.PolicyGradientOptions, {}).loss(backend, micro, norm_tokens)

        results[share] = (training.optimize_sequences(backend, batch, loss_fn, options), micro_batches,
                          [p.detach().clone() for p in backend.trainable_parameters()])
    (shared_metrics, shared_parts, shared_weights), (full_metrics, full_parts, full_weights) = results[True], results[False]
    assert shared_parts == [list(range(8))]  # both groups, each prompt once: 228 tokens
    assert len(full_parts) >= 2 and sorted(i for p in full_parts for i in p) == list(range(8))
    # The same update either way (micro-batching only regroups the sum of the losses).
    assert shared_metrics["pg_loss"] == pytest.approx(full_metrics["pg_loss"], rel=1e-4, abs=1e-6)
    assert shared_metrics["grad_norm"] == pytest.approx(full_metrics["grad_norm"], rel=1e-4)
    for a, b in zip(shared_weights, full_weights):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
