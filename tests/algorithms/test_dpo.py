"""DPO: the losses against hand-computed values, pair building, options, offline batches."""

from __future__ import annotations

import json
import math

import pytest
import torch

from agent_lightning.algorithms.dpo import DPO, PairBatch, dpo_loss, pair_accuracy
from agent_lightning.config import ConfigError
from agent_lightning.types import Task, Trajectory, Turn

TASK = Task(id="t", prompt=({"role": "user", "content": "x"},))

# Two pairs, beta 0.5. Pair 0: chosen log-ratio -1.0 - (-1.2) = 0.2, rejected -1.5 - (-1.2) = -0.3,
# h = 0.5, beta * h = 0.25. Pair 1: chosen 0.0, rejected -1.0 - (-1.5) = 0.5, h = -0.5, beta * h = -0.25.
POLICY_C, POLICY_R = [-1.0, -2.0], [-1.5, -1.0]
REF_C, REF_R = [-1.2, -2.0], [-1.2, -1.5]
LOG1P_EXP_MINUS = 0.5759394198788437  # -log sigmoid(0.25) = log(1 + e^-0.25)
LOG1P_EXP_PLUS = 0.8259394198788435  # -log sigmoid(-0.25) = log(1 + e^0.25)


def _tensors(requires_grad=False):
    pc = torch.tensor(POLICY_C, requires_grad=requires_grad)
    pr = torch.tensor(POLICY_R, requires_grad=requires_grad)
    return pc, pr, torch.tensor(REF_C), torch.tensor(REF_R)


@pytest.mark.parametrize("loss, expected", [
    ("sigmoid", [LOG1P_EXP_MINUS, LOG1P_EXP_PLUS]),
    ("ipo", [(0.5 - 1.0) ** 2, (-0.5 - 1.0) ** 2]),  # (h - 1 / (2 * beta))^2 with 1/(2*0.5) = 1
    ("hinge", [1.0 - 0.25, 1.0 + 0.25]),  # relu(1 - beta * h)
])
def test_losses_by_hand(loss, expected):
    out = dpo_loss(*_tensors(), beta=0.5, loss=loss)
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.5 * 0.2, 0.0], abs=1e-6)
    assert out.rejected_rewards.tolist() == pytest.approx([0.5 * -0.3, 0.5 * 0.5], abs=1e-6)


def test_label_smoothing_mixes_both_directions():
    out = dpo_loss(*_tensors(), beta=0.5, loss="sigmoid", label_smoothing=0.1)
    assert float(out.losses[0]) == pytest.approx(0.9 * LOG1P_EXP_MINUS + 0.1 * LOG1P_EXP_PLUS, abs=1e-6)


def test_sigmoid_gradient_by_hand():
    pc, pr, rc, rr = _tensors(requires_grad=True)
    dpo_loss(pc, pr, rc, rr, beta=0.5).losses.sum().backward()
    # d/d logp_chosen of -log sigmoid(beta h) = -beta * sigmoid(-beta h); the rejected side gets the opposite sign.
    sig = [1 / (1 + math.exp(0.25)), 1 / (1 + math.exp(-0.25))]
    assert pc.grad.tolist() == pytest.approx([-0.5 * sig[0], -0.5 * sig[1]], abs=1e-6)
    assert pr.grad.tolist() == pytest.approx([0.5 * sig[0], 0.5 * sig[1]], abs=1e-6)


def test_accuracy_counts_ties_as_half():
    assert float(pair_accuracy(torch.tensor([0.3, -0.1, 0.0, 2.0]))) == pytest.approx((1 + 0 + 0.5 + 1) / 4)


def _traj(tid, group, reward, action_ids, obs=(9,), failure=None):
    turns = tuple(Turn(action="a", action_token_ids=tuple(ids), action_logprobs=(-1.0,) * len(ids), observation_token_ids=obs)
                  for ids in action_ids)
    return Trajectory(id=tid, task=TASK, group=group, prompt_token_ids=(1, 2), turns=turns, final_reward=reward, failure=failure)


class FakeBackend:
    """Fixed per-token log-probs per trajectory id, for the policy and for the reference."""

    def __init__(self, policy, reference):
        self.policy, self.reference = policy, reference
        self.leaf = None
        self.reference_calls = 0

    def token_logprobs(self, batch, *, temperature, with_entropy=False, reference=False):
        assert temperature == 1.0
        table = self.reference if reference else self.policy
        values = torch.tensor([lp for tid in batch.trajectory_ids for lp in table[tid]], requires_grad=not reference)
        if reference:
            self.reference_calls += 1
        else:
            self.leaf = values
        return values, None


def _pairs_and_backend():
    # Multi-token, multi-turn sides: sums are POLICY_C / POLICY_R / REF_C / REF_R above.
    pairs = PairBatch(chosen=[_traj("c0", 0, 1, [[5], [6]]), _traj("c1", 1, 1, [[5]])],
                      rejected=[_traj("r0", 0, 0, [[7, 8]]), _traj("r1", 1, 0, [[5], [6], [7]])])
    policy = {"c0": [-0.25, -0.75], "c1": [-2.0], "r0": [-1.0, -0.5], "r1": [-0.5, -0.25, -0.25]}
    reference = {"c0": [-1.0, -0.2], "c1": [-2.0], "r0": [-0.6, -0.6], "r1": [-1.0, -0.25, -0.25]}
    return pairs, FakeBackend(policy, reference)


@pytest.mark.parametrize("loss, expected", [("sigmoid", (LOG1P_EXP_MINUS + LOG1P_EXP_PLUS) / 2), ("hinge", 1.0)])
def test_algorithm_loss_sums_policy_tokens_per_side(loss, expected):
    pairs, backend = _pairs_and_backend()
    algo = DPO(pairs="online", beta=0.5, loss=loss)
    pairs.ref = algo.reference_logps(backend, pairs)
    assert [t.tolist() for t in pairs.ref] == [pytest.approx(REF_C), pytest.approx(REF_R)]
    value, stats = algo.loss(backend, pairs)
    assert float(value.detach()) == pytest.approx(expected, abs=1e-6)
    assert float(stats["reward_margin"]) == pytest.approx(0.0, abs=1e-6)  # margins +0.25 and -0.25
    assert float(stats["reward_accuracy"]) == pytest.approx(0.5)
    assert float(stats["logps_chosen"]) == pytest.approx(-1.5)


def test_reference_free_uses_zero_reference():
    pairs, backend = _pairs_and_backend()
    algo = DPO(pairs="online", beta=0.5, reference_free=True)
    pairs.ref = algo.reference_logps(backend, pairs)
    assert backend.reference_calls == 0
    value, _ = algo.loss(backend, pairs)
    # h = logp_c - logp_r: pair 0: -1.0 - (-1.5) = 0.5, pair 1: -2.0 - (-1.0) = -1.0.
    expected = (-math.log(1 / (1 + math.exp(-0.25))) - math.log(1 / (1 + math.exp(0.5)))) / 2
    assert float(value.detach()) == pytest.approx(expected, abs=1e-6)


def test_sft_term_adds_the_chosen_per_token_nll():
    pairs, backend = _pairs_and_backend()
    algo = DPO(pairs="online", beta=0.5, sft_coef=2.0)
    pairs.ref = algo.reference_logps(backend, pairs)
    value, stats = algo.loss(backend, pairs)
    nll = -((-1.0 / 2) + (-2.0 / 1)) / 2  # chosen log-prob sums over their token counts, averaged
    assert float(stats["sft_nll"]) == pytest.approx(nll)
    assert float(value.detach()) == pytest.approx((LOG1P_EXP_MINUS + LOG1P_EXP_PLUS) / 2 + 2.0 * nll, abs=1e-6)


def test_update_runs_the_shared_loop_with_its_non_finite_guard():
    pairs, backend = _pairs_and_backend()
    backend.policy["c1"] = [float("nan")]  # pair 1's loss is NaN
    steps = []

    def optimizer_step(max_grad_norm, *, skip=False):
        steps.append(skip)
        return {"grad_norm": 0.5, "lr": 0.1}

    backend.train_mode = lambda training: None
    backend.optimizer_step = optimizer_step
    algo = DPO(pairs="online", beta=0.5, minibatches=2, epochs=2)
    metrics = algo.update(backend, pairs)
    assert steps == [False, True, False, True]  # minibatch 1 holds pair 1: skipped in both epochs
    assert (metrics["updates"], metrics["skipped_updates"], metrics["trailing_skipped_updates"]) == (4.0, 2.0, 1.0)
    assert metrics["dpo_loss"] == pytest.approx(LOG1P_EXP_MINUS, abs=1e-6)  # the updates taken: pair 0 alone
    assert metrics["grad_norm"] == 0.5 and metrics["pairs"] == 2.0


def test_online_pairs_best_and_worst_of_each_group_ties_skipped():
    trajs = [
        _traj("a", 0, 0.2, [[5]]), _traj("b", 0, 1.0, [[5]]), _traj("c", 0, -0.5, [[5]]),
        _traj("d", 1, 1.0, [[5]]), _traj("e", 1, 1.0, [[5]]),  # tie: skipped
        _traj("f", 2, 9.0, [[5]], failure="environment step timed out"), _traj("g", 2, 0.0, [[5]]),
        _traj("h", 2, 0.5, [[5]]),
        _traj("i", 3, 0.0, [[5]]),  # a single healthy member: skipped
    ]
    pairs = DPO(pairs="online").prepare(trajs)
    assert [t.id for t in pairs.chosen] == ["b", "h"]
    assert [t.id for t in pairs.rejected] == ["c", "g"]
    assert (pairs.skipped, pairs.groups) == (2, 4)
    gapped = DPO(pairs="online", min_reward_gap=0.6).prepare(trajs)
    assert [t.id for t in gapped.chosen] == ["b"]


def test_several_pairs_per_group_match_kth_best_with_kth_worst():
    rewards = {"a": 0.0, "b": 1.0, "c": 0.5, "d": 1.0, "e": 0.0, "f": 0.0, "g": 0.5}
    trajs = [_traj(tid, 0, r, [[5]]) for tid, r in rewards.items()]
    pairs = DPO(pairs="online", pairs_per_group=3).prepare(trajs)
    # Best first: b, d (1.0), c, g (0.5)...; worst first: a, e, f (0.0), c...
    assert [(c.id, r.id) for c, r in zip(pairs.chosen, pairs.rejected)] == [("b", "a"), ("d", "e"), ("c", "f")]
    assert pairs.skipped == 0
    many = DPO(pairs="online", pairs_per_group=10).prepare(trajs)  # at most half the group: 3 candidates
    assert len(many) == 3 and many.skipped == 0
    tied = DPO(pairs="online", pairs_per_group=3).prepare([_traj(t, 0, 1.0 if t == "a" else 0.0, [[5]]) for t in "abcd"])
    assert [(c.id, r.id) for c, r in zip(tied.chosen, tied.rejected)] == [("a", "b")]
    assert tied.skipped == 1  # 2nd best (b, 0.0) against 2nd worst (c, 0.0)


def test_update_without_pairs_reports_the_skips():
    algo = DPO(pairs="online")
    metrics = algo.update(None, algo.prepare([_traj("a", 0, 1.0, [[5]]), _traj("b", 0, 1.0, [[5]])]))
    assert metrics == {"pairs": 0.0, "skipped_ties": 1.0}


@pytest.mark.parametrize("options, message", [
    ({}, "algorithm: dpo needs 'algorithm.dataset: PATH' (offline) or 'algorithm.pairs: online'"),
    ({"pairs": "offline"}, "algorithm.pairs: 'offline' needs 'algorithm.dataset: PATH'"),
    ({"pairs": "online", "dataset": "x.jsonl"}, "algorithm.pairs: 'online' builds pairs from rollouts"),
    ({"pairs": "online", "betta": 0.1}, "unknown key 'algorithm.betta' (allowed: "),
    ({"pairs": "online", "loss": "kto"}, "invalid value 'kto' for 'algorithm.loss'"),
])
def test_option_errors_name_the_key(options, message):
    with pytest.raises(ConfigError) as info:
        DPO(**options)
    assert str(info.value).startswith(message)


def test_online_uses_rollouts_and_offline_does_not():
    assert DPO(pairs="online", group_size=4).uses_rollouts is True
    offline = DPO(dataset="x.jsonl")
    assert offline.uses_rollouts is False and offline.config.pairs == "offline"


class TokenizerBackend:
    """Just enough backend for offline setup: a tokenizer and an optimizer hook."""

    def __init__(self):
        from agent_lightning.backends.transformers.tiny import build_tokenizer

        self.tokenizer = build_tokenizer(max_number=6)
        self.optimizer_args = None

    def configure_optimizer(self, **kwargs):
        self.optimizer_args = kwargs


def _write(tmp_path, n):
    rows = [{"prompt": "guess my number between 1 and 6 .", "chosen": str(1 + i % 6), "rejected": str(1 + (i + 1) % 6)}
            for i in range(n)]
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_offline_batches_cycle_through_a_seeded_shuffle_and_resume(tmp_path):
    path = _write(tmp_path, 10)
    algo = DPO(dataset=str(path), eval_fraction=0.2, batch_size=3, seed=5, lr=0.01, reference_free=True)
    algo.setup(TokenizerBackend(), total_steps=10, temperature=1.0)
    assert (len(algo.train_pairs), len(algo.eval_pairs)) == (8, 2)
    seen = [t.id for _ in range(3) for t in algo._next_pairs().chosen]  # 9 draws: one epoch of 8, then one more
    assert sorted(seen[:8]) == sorted(t.id for t, _ in algo.train_pairs)
    state = algo.state_dict()
    assert state == {"epoch": 1, "cursor": 1}
    following = [t.id for t in algo._next_pairs().chosen]
    resumed = DPO(dataset=str(path), eval_fraction=0.2, batch_size=3, seed=5, reference_free=True)
    resumed.setup(TokenizerBackend(), total_steps=10, temperature=1.0)
    resumed.load_state_dict(state)
    assert [t.id for t in resumed._next_pairs().chosen] == following


def test_offline_setup_rejects_a_malformed_file_naming_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: missing key\(s\) rejected"):
        DPO(dataset=str(path)).setup(TokenizerBackend(), total_steps=1, temperature=1.0)


def test_micro_batches_accumulate_to_the_full_batch_update():
    from agent_lightning.backends.transformers.backend import create_backend
    from agent_lightning.config import BackendConfig, ModelConfig
    from agent_lightning.preferences.data import ConversationEncoder
    from agent_lightning.presets.guess_number_preferences import build_pairs

    model = ModelConfig(preset="tiny", preset_options={"hidden_size": 16, "num_layers": 1, "num_heads": 2})
    results = []
    for budget in (100_000, 40):  # one micro-batch, or about one pair per micro-batch
        backend = create_backend(model, BackendConfig(device="cpu"), seed=3)
        algo = DPO(pairs="online", beta=0.5, lr=0.01, micro_batch_tokens=budget, sft_coef=0.5)
        algo.setup(backend, total_steps=1, temperature=1.0)
        encoder = ConversationEncoder(backend.tokenizer)
        sides = [encoder.encode_pair(p, group=i) for i, p in enumerate(build_pairs(5, seed=4))]
        pairs = PairBatch([c for c, _ in sides], [r for _, r in sides])
        assert len(algo._micro_batches(pairs, list(range(5)))) == (1 if budget > 1000 else 5)
        metrics = algo.update(backend, pairs)
        results.append((metrics, [p.detach().clone() for p in backend.trainable_parameters()]))
    (full, full_params), (micro, micro_params) = results
    assert micro["dpo_loss"] == pytest.approx(full["dpo_loss"], abs=1e-6)
    assert micro["grad_norm"] == pytest.approx(full["grad_norm"], rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(full_params, micro_params))


@pytest.mark.parametrize("preset, online", [("dpo-online", True), ("dpo-offline", False)])
def test_packaged_presets_build(preset, online):
    from agent_lightning.config import load_config

    config = load_config(preset, environ={})
    assert config.algorithm.name == "dpo" and config.environment.name == "guess-number"
    algo = DPO(**config.algorithm.options)
    assert algo.uses_rollouts is online
    if not online:
        algo.setup(TokenizerBackend(), total_steps=config.trainer.steps, temperature=1.0)
        assert (len(algo.train_pairs), len(algo.eval_pairs)) == (360, 40)
