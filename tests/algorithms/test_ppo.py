"""PPO: per-token rewards, GAE advantages through the masks, the policy + value loss by
hand, the value head in checkpoints (exact resume), and learning on the quickstart game."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from agent_lightning.algorithms.ppo import PPO
from agent_lightning.loop import checkpoint as ckpt
from agent_lightning.loop.trainer import Trainer
from agent_lightning.metrics import read_metrics
from agent_lightning.types import Task, Trajectory, Turn

TASK = Task(id="t", prompt=({"role": "user", "content": "x"},))
WALL_CLOCK = ("time/", "train/tokens_per_s", "eval/time_s")


def _turn(ids, lps, obs=(), reward=0.0):
    return Turn(action="a", action_token_ids=tuple(ids), action_logprobs=tuple(lps),
                observation_token_ids=tuple(obs), reward=reward)


def _two_trajectories(final_a=1.0, final_b=2.0):
    # a: prompt (2 tokens), turn 0 = 2 sampled + 2 observation tokens, turn 1 = 1 sampled token.
    a = Trajectory(id="a", task=TASK, group=0, prompt_token_ids=(1, 2), final_reward=final_a,
                   turns=(_turn([5, 6], [-1.0, -1.0], obs=(9, 9), reward=0.25), _turn([7], [-1.0])))
    b = Trajectory(id="b", task=TASK, group=1, prompt_token_ids=(1,), final_reward=final_b,
                   turns=(_turn([8], [-0.5]),))
    return [a, b]


class FakeModel:
    """Just enough of a causal LM for PPO.setup: an output embedding of width 2."""

    def __init__(self):
        self.head = torch.nn.Linear(2, 11, bias=False)

    def get_output_embeddings(self):
        return self.head


class FakeBackend:
    """Fixed per-trajectory log-probs, reference log-probs and hidden states (width 2)."""

    device = torch.device("cpu")

    def __init__(self, current, reference=None, hidden=None):
        self.model = FakeModel()
        self.current, self.reference, self.hidden = current, reference or {}, hidden or {}
        self.leaf = None
        self.optimizer_kwargs = None

    def configure_optimizer(self, **kwargs):
        self.optimizer_kwargs = kwargs

    def token_logprobs(self, batch, *, temperature, with_entropy=False, reference=False, with_hidden=False):
        source = self.reference if reference else self.current
        self.leaf = torch.tensor([lp for tid in batch.trajectory_ids for lp in source[tid]], requires_grad=not reference)
        out = (self.leaf, torch.zeros_like(self.leaf))
        if with_hidden:
            out += (torch.tensor([h for tid in batch.trajectory_ids for h in self.hidden[tid]]),)
        return out


def _ppo(backend, **options):
    algo = PPO(**options)
    algo.setup(backend, total_steps=1, temperature=1.0)
    with torch.no_grad():  # V = first hidden coordinate
        algo.value_head.weight.copy_(torch.tensor([[1.0, 0.0]]))
    return algo


def test_prepare_puts_rewards_on_each_trajectorys_tokens():
    trajs = _two_trajectories()
    failed = Trajectory(id="f", task=TASK, group=0, prompt_token_ids=(1,), turns=trajs[1].turns,
                        final_reward=9.0, failure="environment step timed out")
    batch = PPO().prepare(trajs + [failed])
    assert batch.trajectory_ids == ["a", "b"]
    assert batch.extras["token_rewards"].tolist() == [0.0, 0.0, 1.0, 2.0]
    stepped = PPO(step_rewards=True).prepare(trajs)
    assert stepped.extras["token_rewards"].tolist() == [0.0, 0.25, 1.0, 2.0]


def test_setup_adds_the_value_head_to_the_optimizer():
    backend = FakeBackend({})
    algo = PPO(critic_lr=0.01)
    algo.setup(backend, total_steps=3, temperature=1.0)
    (group,) = backend.optimizer_kwargs["extra_param_groups"]
    assert group["name"] == "value_head" and group["lr"] == 0.01
    assert [p.shape for p in group["params"]] == [torch.Size([1, 2]), torch.Size([1])]
    assert algo.value_head.weight.abs().sum() == 0  # V = 0 before any update


def test_gae_advantages_with_kl_in_the_reward_by_hand():
    backend = FakeBackend(current={"a": [-1.0] * 3, "b": [-0.5]}, reference={"a": [-1.5, -1.0, -0.5], "b": [-0.5]},
                          hidden={"a": [[0.2, 9.0], [0.4, 9.0], [0.6, 9.0]], "b": [[0.5, 9.0]]})
    algo = _ppo(backend, gamma=0.9, lam=0.8, whiten_advantages=False, kl_coef=0.1, kl_mode="reward")
    batch, info = algo.advantages(backend, algo.prepare(_two_trajectories()))
    # k1 = sampled - ref = [0.5, 0, -0.5] | [0] -> rewards [-0.05, 0, 1.05] | [2.0]; V = [0.2, 0.4, 0.6] | [0.5].
    # a backwards (the observation tokens between turns are skipped):
    #   t2: delta = 1.05 - 0.6 = 0.45                  A = 0.45
    #   t1: delta = 0.9 * 0.6 - 0.4 = 0.14             A = 0.14 + 0.72 * 0.45 = 0.464
    #   t0: delta = -0.05 + 0.9 * 0.4 - 0.2 = 0.11     A = 0.11 + 0.72 * 0.464 = 0.44408
    # b: A = 2.0 - 0.5 = 1.5
    expected = [0.44408, 0.464, 0.45, 1.5]
    assert batch.advantages.tolist() == pytest.approx(expected, abs=1e-5)
    assert batch.extras["values"].tolist() == pytest.approx([0.2, 0.4, 0.6, 0.5])
    assert batch.extras["returns"].tolist() == pytest.approx([0.64408, 0.864, 1.05, 2.0], abs=1e-5)
    assert info["kl_reward"] == pytest.approx(0.0)  # mean of [0.5, 0, -0.5, 0]
    algo.config.whiten_advantages = True
    whitened, _ = algo.advantages(backend, algo.prepare(_two_trajectories()))
    mean = sum(expected) / 4
    std = (sum((a - mean) ** 2 for a in expected) / 3) ** 0.5
    assert whitened.advantages.tolist() == pytest.approx([(a - mean) / std for a in expected], abs=1e-4)


def test_kl_in_the_loss_leaves_the_rewards_alone():
    backend = FakeBackend(current={"a": [-1.0] * 3, "b": [-0.5]}, reference={"a": [-1.5, -1.0, -0.5], "b": [-0.5]},
                          hidden={"a": [[0.0, 0.0]] * 3, "b": [[0.0, 0.0]]})
    algo = _ppo(backend, gamma=1.0, lam=1.0, whiten_advantages=False, kl_coef=0.1, kl_mode="loss")
    batch, info = algo.advantages(backend, algo.prepare(_two_trajectories()))
    assert batch.advantages.tolist() == pytest.approx([1.0, 1.0, 1.0, 2.0])
    assert batch.extras["ref_logprobs"].tolist() == [-1.5, -1.0, -0.5, -0.5]
    assert "kl_reward" not in info


def test_policy_and_value_loss_by_hand():
    a, b = _two_trajectories()
    trajs = [dataclasses.replace(a, turns=(_turn([5, 6], [-1.0, -1.0]),)),
             dataclasses.replace(b, turns=(_turn([8], [-1.0]),))]
    backend = FakeBackend(current={"a": [-0.9, -1.0], "b": [-1.2]},
                          hidden={"a": [[0.8, 5.0], [0.0, 5.0]], "b": [[0.3, 5.0]]})
    algo = _ppo(backend, clip_low=0.2, clip_high=0.2, value_coef=0.5, value_clip=0.2)
    batch = algo.prepare(trajs)
    batch.advantages = torch.tensor([1.0, -1.0, 0.5])
    batch.extras["values"] = torch.tensor([0.5, 0.5, 0.3])
    batch.extras["returns"] = torch.tensor([1.0, -1.0, 0.0])
    loss, stats = algo.loss(backend, batch, norm_tokens=2)
    # ratios e^0.1, 1, e^-0.2 (all inside [0.8, 1.2]): pg = [-1.105171, 1.0, -0.409365]
    pg = (-1.105171 + 1.0 - 0.5 * 0.818731) / 3
    # V = [0.8, 0.0, 0.3]; clipped V = [0.7, 0.3, 0.3]; 0.5 * max(...) = [0.045, 0.845, 0.045]
    value = (0.045 + 0.845 + 0.045) / 3
    assert float(stats["pg_loss"]) == pytest.approx(pg, abs=1e-5)
    assert float(stats["value_loss"]) == pytest.approx(value, abs=1e-5)
    assert float(stats["value_clip_fraction"]) == pytest.approx(2 / 3)
    assert float(loss.detach()) == pytest.approx(pg + 0.5 * value, abs=1e-5)
    loss.backward()
    # The value head's gradient: only token 2 (unclipped branch, v - R = 0.3) with hidden [0.3, 5.0];
    # token 0 takes the clipped branch (no gradient) and token 1 too.
    grad = algo.value_head.weight.grad
    assert grad[0].tolist() == pytest.approx([0.5 * 0.3 * 0.3 / 3, 0.5 * 0.3 * 5.0 / 3], abs=1e-6)


def test_unknown_option_and_mismatched_checkpoint_are_named():
    from agent_lightning.config import ConfigError

    with pytest.raises(ConfigError, match=r"unknown key 'algorithm.vf_coef'"):
        PPO(vf_coef=0.1)
    algo = PPO()
    algo.setup(FakeBackend({}), total_steps=1, temperature=1.0)
    with pytest.raises(ValueError, match="no value head"):
        algo.load_state_dict({})
    with pytest.raises(ValueError, match="critic is 'head'"):
        algo.load_state_dict({**algo.state_dict(), "critic": {}})


def _ppo_config(tiny_config, critic, steps=4):
    return tiny_config(algorithm={"name": "ppo", "group_size": 2, "lr": 0.003, "critic": critic, "epochs": 2,
                                  "minibatches": 2},
                       trainer={"steps": steps, "eval_every": 2, "checkpoint_every": 0, "eval_episodes": 6})


@pytest.mark.parametrize("critic", ["head", "separate"])
def test_value_head_checkpoint_round_trip_resumes_exactly(tiny_config, tmp_path, critic):
    config = _ppo_config(tiny_config, critic)
    full = Trainer(config, tmp_path / "full")
    full.run()
    Trainer(config, tmp_path / "split").run(until_step=2)
    resumed = Trainer(config, tmp_path / "split")
    resumed.run(resume=True)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "split")] == [2, 4]
    strip = [[{k: v for k, v in r.items() if not k.startswith(WALL_CLOCK)} for r in read_metrics(tmp_path / name)]
             for name in ("full", "split")]
    assert strip[0] == strip[1]
    assert any(abs(r.get("train/values_mean", 0.0)) > 0 for r in strip[0])
    # The saved head is the trained one, and loading it into a fresh PPO reproduces it.
    state = ckpt.load_state(tmp_path / "split" / "checkpoints" / "step-4" / "trainer_state")["algorithm"]
    assert torch.equal(state["value_head"]["weight"], resumed.algorithm.value_head.weight.detach())
    assert torch.equal(state["value_head"]["weight"], full.algorithm.value_head.weight.detach())
    assert state["value_head"]["weight"].abs().sum() > 0
    assert ("critic" in state) == (critic == "separate")
    fresh = Trainer(config, tmp_path / "fresh")
    fresh.algorithm.load_state_dict(state)
    assert torch.equal(fresh.algorithm.value_head.bias, full.algorithm.value_head.bias)
    if critic == "separate":
        for (name, p), (_, q) in zip(fresh.algorithm.critic_model.named_parameters(),
                                     full.algorithm.critic_model.named_parameters()):
            assert torch.equal(p, q), name
