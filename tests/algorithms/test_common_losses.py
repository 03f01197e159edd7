"""The shared algorithm math (algorithms/common.py) against values computed by hand."""

from __future__ import annotations

import math
import statistics
from types import SimpleNamespace

import pytest
import torch

from agent_lightning.algorithms import common
from agent_lightning.loop.batch import pack_trajectories
from agent_lightning.types import Task, Trajectory, Turn

TASK = Task(id="t", prompt=({"role": "user", "content": "x"},))


def _turn(ids, lps=None, obs=(), reward=0.0):
    lps = lps if lps is not None else [-1.0] * len(ids)
    return Turn(action="a", action_token_ids=tuple(ids), action_logprobs=tuple(lps),
                observation_token_ids=tuple(obs), reward=reward)


def _traj(tid, turns, final=0.0, prompt=(1, 2), group=0):
    return Trajectory(id=tid, task=TASK, group=group, prompt_token_ids=tuple(prompt), turns=tuple(turns),
                      final_reward=final)


# ------------------------------------------------------------------ rewards


def test_final_reward_sits_on_the_last_policy_token():
    traj = _traj("a", [_turn([5, 6], obs=(9, 9), reward=0.1), _turn([7], obs=(9,)), _turn([8, 5], reward=-0.2)],
                 final=1.0)
    assert common.token_rewards(traj) == [0.0, 0.0, 0.0, 0.0, 1.0]
    # Step rewards land on each turn's last token: turn 0 ends at token 1, turn 2 at token 4.
    assert common.token_rewards(traj, step_rewards=True) == pytest.approx([0.0, 0.1, 0.0, 0.0, 0.8])
    assert common.token_rewards(traj, final=-0.5) == [0.0, 0.0, 0.0, 0.0, -0.5]


def test_step_reward_of_a_turn_without_tokens_moves_to_the_next_sampled_token():
    traj = _traj("a", [_turn([5], reward=0.25), _turn([], reward=0.5), _turn([6, 7], reward=0.0)], final=0.0)
    assert common.token_rewards(traj, step_rewards=True) == pytest.approx([0.25, 0.0, 0.5])


# ------------------------------------------------------------------ KL


def test_kl_estimators_by_hand():
    logp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-1.5, -1.0])
    assert common.kl(logp, ref, "k1").tolist() == pytest.approx([0.5, -1.0])
    assert common.kl(logp, ref, "k2").tolist() == pytest.approx([0.125, 0.5])
    # k3 = exp(ref - logp) - (ref - logp) - 1 with ref - logp = -0.5 and 1.0
    assert common.kl(logp, ref, "k3").tolist() == pytest.approx([math.exp(-0.5) - 0.5, math.e - 2.0], abs=1e-6)


def test_kl_in_reward_subtracts_coef_times_k1():
    rewards = torch.tensor([0.0, 1.0])
    penalised, k1 = common.kl_in_reward(rewards, torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0]), 0.1)
    assert k1.tolist() == pytest.approx([0.5, -1.0])
    assert penalised.tolist() == pytest.approx([-0.05, 1.1])


# ------------------------------------------------------------------ aggregation


@pytest.mark.parametrize("mode, expected", [
    ("token-mean", 15 / 5),                      # every token weighs 1/5
    ("seq-mean-token-mean", (1.5 + 4.0) / 2),    # sequence means 1.5 and 4, averaged
    ("seq-mean-token-sum", (3 + 12) / (2 * 4)),  # sequence sums over B * norm_tokens
])
def test_aggregation_modes_by_hand(mode, expected):
    per_token = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], requires_grad=True)
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    value = common.aggregate(per_token, cu, mode, norm_tokens=4)
    assert float(value.detach()) == pytest.approx(expected)
    value.backward()
    weights = {"token-mean": [0.2] * 5, "seq-mean-token-mean": [0.25, 0.25, 1 / 6, 1 / 6, 1 / 6],
               "seq-mean-token-sum": [0.125] * 5}[mode]
    assert per_token.grad.tolist() == pytest.approx(weights)


def test_unknown_aggregation_is_named():
    with pytest.raises(ValueError, match="unknown mode 'sum'"):
        common.aggregate(torch.ones(2), torch.tensor([0, 2], dtype=torch.int32), "sum", 1)


@pytest.mark.parametrize("mode, expected", [("token-mean", 3 / 10), ("seq-mean-token-mean", 1 / 4)])
def test_microbatch_share(mode, expected):
    assert common.microbatch_share(mode, micro_sequences=1, micro_tokens=3, minibatch_sequences=4,
                                   minibatch_tokens=10) == pytest.approx(expected)


# ------------------------------------------------------------------ losses


def test_clipped_surrogate_by_hand():
    # ratios e^0.1 = 1.10517 (inside [0.8, 1.28]), e^0.5 = 1.64872 (above: clipped for A > 0),
    # e^-0.5 = 0.60653 (below: for A > 0 the min keeps the unclipped 0.60653 * A).
    logp = torch.tensor([-0.9, -0.5, -1.5], requires_grad=True)
    old = torch.tensor([-1.0, -1.0, -1.0])
    adv = torch.tensor([2.0, 1.0, 1.0])
    pg, ratio, clipped = common.clipped_surrogate(logp, old, adv, 0.2, 0.28)
    assert pg.tolist() == pytest.approx([-2 * 1.105171, -1.28, -0.606531], abs=1e-5)
    assert float(common.clip_fraction(ratio, clipped)) == pytest.approx(2 / 3)
    pg.sum().backward()
    # d(-ratio * A)/dlogp = -ratio * A where unclipped; 0 where the clipped branch is taken.
    assert logp.grad.tolist() == pytest.approx([-2 * 1.105171, 0.0, -0.606531], abs=1e-5)


def test_clipped_value_loss_by_hand():
    values = torch.tensor([1.0, 0.0, 0.5, 3.0], requires_grad=True)
    old = torch.tensor([0.5, 0.5, 0.5, 2.5])
    returns = torch.tensor([2.0, -1.0, 0.0, 2.0])
    loss = common.clipped_value_loss(values, old, returns, clip=0.2)
    # 0: v_clip 0.7 -> max(1, 1.69); 1: v_clip 0.3 -> max(1, 1.69); 2: both 0.25; 3: v_clip 2.7 -> max(1, 0.49)
    assert loss.tolist() == pytest.approx([0.845, 0.845, 0.125, 0.5])
    loss.sum().backward()
    # The clipped branch is constant in v (saturated clamp): no gradient there.
    assert values.grad.tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0])
    plain = common.clipped_value_loss(values.detach(), old, returns, clip=None)
    assert plain.tolist() == pytest.approx([0.5, 0.5, 0.125, 0.5])


def test_policy_loss_adds_entropy_bonus_and_kl_by_hand():
    trajs = [_traj("a", [_turn([5], [-1.0]), _turn([6], [-2.0])]), _traj("b", [_turn([7], [-0.5])])]
    batch = pack_trajectories(trajs, [[1.0, 1.0], [-1.0]])
    logp = torch.tensor([-0.9, -2.0, -0.5], requires_grad=True)
    entropy = torch.tensor([1.0, 2.0, 3.0])
    ref = torch.tensor([-1.0, -2.0, -0.7])
    options = SimpleNamespace(clip_low=0.2, clip_high=0.2, loss_aggregation="token-mean", entropy_coef=0.1,
                              kl_coef=0.5, kl_estimator="k1")
    loss, stats = common.policy_loss(logp, entropy, batch, 2, options, ref)
    pg = (-1.105171 - 1.0 + 1.0) / 3
    kl = (0.1 + 0.0 + 0.2) / 3
    assert float(stats["pg_loss"]) == pytest.approx(pg, abs=1e-5)
    assert float(stats["kl"]) == pytest.approx(kl, abs=1e-6)
    assert float(loss.detach()) == pytest.approx(pg - 0.1 * 2.0 + 0.5 * kl, abs=1e-5)
    loss_no_kl, stats_no_kl = common.policy_loss(logp, entropy, batch, 2, options, None)
    assert "kl" not in stats_no_kl and float(loss_no_kl.detach()) == pytest.approx(pg - 0.2, abs=1e-5)


# ------------------------------------------------------------------ advantages


def test_rloo_baseline_leaves_each_rollout_out():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 5.0])
    groups = torch.tensor([3, 3, 3, 3, 8])
    adv = common.group_baseline(rewards, groups, "rloo")
    # r=1: others {0, 0, 1} mean 1/3; r=0: others {1, 0, 1} mean 2/3; a group of one: 0.
    assert adv.tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0.0], abs=1e-6)


def test_broadcast_and_first_token_round_trip():
    cu = torch.tensor([0, 2, 3, 6], dtype=torch.int32)
    tokens = common.broadcast_to_tokens(torch.tensor([1.5, -2.0, 4.0]), cu)
    assert tokens.tolist() == [1.5, 1.5, -2.0, 4.0, 4.0, 4.0]
    assert common.first_token_values(tokens, cu).tolist() == [1.5, -2.0, 4.0]


def _two_trajectory_batch():
    # a: prompt (2 tokens), turn 0 = 2 sampled + 2 observation tokens, turn 1 = 1 sampled token.
    # b: prompt (1 token), one sampled token.
    a = _traj("a", [_turn([5, 6], obs=(9, 9)), _turn([7])])
    b = _traj("b", [_turn([8])], prompt=(1,))
    return pack_trajectories([a, b], [[0.0] * 3, [0.0]])


def test_gae_skips_the_observation_tokens_by_hand():
    batch = _two_trajectory_batch()
    assert batch.policy_index.tolist() == [2, 3, 6, 8]  # the observation tokens 4, 5 are not policy tokens
    rewards = torch.tensor([0.0, 0.5, 1.0, 2.0])
    values = torch.tensor([0.2, 0.4, 0.6, 0.5])
    adv, ret = common.stream_gae(batch, rewards, values, gamma=0.9, lam=0.8, whiten=False)
    # a, backwards over its policy tokens (the observations in between count for nothing):
    # t2: delta = 1 - 0.6 = 0.4                      A = 0.4
    # t1: delta = 0.5 + 0.9 * 0.6 - 0.4 = 0.64       A = 0.64 + 0.72 * 0.4 = 0.928
    # t0: delta = 0 + 0.9 * 0.4 - 0.2 = 0.16         A = 0.16 + 0.72 * 0.928 = 0.82816
    # b: delta = 2 - 0.5 = 1.5 (the recursion restarts at the sequence boundary)
    expected = [0.82816, 0.928, 0.4, 1.5]
    assert adv.tolist() == pytest.approx(expected, abs=1e-5)
    assert ret.tolist() == pytest.approx([a + v for a, v in zip(expected, values.tolist())], abs=1e-5)
    whitened, ret_w = common.stream_gae(batch, rewards, values, gamma=0.9, lam=0.8, whiten=True)
    mean, std = statistics.mean(expected), statistics.stdev(expected)
    assert whitened.tolist() == pytest.approx([(a - mean) / math.sqrt(std ** 2 + 1e-8) for a in expected], abs=1e-5)
    assert ret_w.tolist() == pytest.approx(ret.tolist())  # returns come before whitening


def test_gae_without_values_is_the_discounted_return_to_go():
    batch = _two_trajectory_batch()
    rewards = torch.tensor([-0.1, 0.5, 1.0, 2.0])
    adv, ret = common.stream_gae(batch, rewards, None, gamma=0.9, lam=1.0, whiten=False)
    expected = [-0.1 + 0.9 * 0.5 + 0.81 * 1.0, 0.5 + 0.9 * 1.0, 1.0, 2.0]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)
    assert ret.tolist() == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------ the update loop


def _three_trajectory_batch():
    trajs = [_traj("a", [_turn([5, 6], [-1.0, -2.0])]), _traj("b", [_turn([7], [-3.0], obs=(9, 9, 9)), _turn([8], [-4.0])]),
             _traj("c", [_turn([5, 5, 5], [-5.0, -6.0, -7.0])], prompt=(1,))]
    return pack_trajectories(trajs, [[1.0, 1.0], [-1.0, -1.0], [0.5, 0.5, 0.5]])


def test_per_token_no_grad_reassembles_micro_batches_in_batch_order():
    from agent_lightning.algorithms.training import per_token_no_grad

    batch = _three_trajectory_batch()
    seen = []

    def fn(micro):
        seen.append(micro.trajectory_ids)
        return micro.sampling_logprobs * 10

    out = per_token_no_grad(batch, fn, micro_batch_tokens=7)
    assert len(seen) > 1  # the budget forced several micro-batches
    assert out.tolist() == [-10.0, -20.0, -30.0, -40.0, -50.0, -60.0, -70.0]


class TableBackend:
    """Current log-prob of policy token i is the parameter ``theta[i]`` (a leaf we can inspect)."""

    def __init__(self, batch):
        self.theta = torch.nn.Parameter(batch.sampling_logprobs.clone() + 0.05)
        self.order = {tid: i for i, tid in enumerate(batch.trajectory_ids)}
        self.pcu = batch.policy_cu_seqlens.tolist()
        self.grads = []

    def token_logprobs(self, micro, *, temperature, with_entropy=False, reference=False):
        index = torch.cat([torch.arange(self.pcu[self.order[t]], self.pcu[self.order[t] + 1]) for t in micro.trajectory_ids])
        return self.theta[index], torch.zeros(len(index))

    def train_mode(self, training):
        pass

    def optimizer_step(self, max_grad_norm, *, skip=False):
        assert not skip
        self.grads.append(self.theta.grad.clone())
        self.theta.grad = None
        return {}


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_micro_batched_gradients_equal_the_whole_minibatch(mode):
    from agent_lightning.algorithms.training import PolicyGradientOptions, optimize_sequences

    batch = _three_trajectory_batch()

    def loss_fn(backend, micro, norm):
        logp, entropy = backend.token_logprobs(micro, temperature=1.0)
        return common.policy_loss(logp, entropy, micro, norm, options)

    grads = []
    for budget in (1, 10_000):  # every sequence alone, or all at once
        options = PolicyGradientOptions(loss_aggregation=mode, micro_batch_tokens=budget)
        backend = TableBackend(batch)
        metrics = optimize_sequences(backend, batch, loss_fn, options)
        grads.append(backend.grads[0])
        assert set(metrics) >= {"pg_loss", "clip_fraction"}
    assert grads[0].tolist() == pytest.approx(grads[1].tolist(), abs=1e-7)
    assert grads[1].abs().sum() > 0
