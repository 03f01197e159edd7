"""The data-parallel bookkeeping of ``agent_lightning.scaling.distributed``, in one process.

Ranks are simulated by swapping the module's context (no process group is needed: in the
``ddp`` strategy, sharding and micro-batching talk to no other rank). The real
multi-process runs are in ``test_data_parallel.py``.
"""

from __future__ import annotations

import pytest
import torch

from agent_lightning.algorithms import common
from agent_lightning.algorithms.grpo import GRPO
from agent_lightning.config import ConfigError
from agent_lightning.scaling import distributed
from agent_lightning.types import Task, Trajectory, Turn

TASK = Task(id="t", prompt=({"role": "user", "content": "x"},))
VOCAB = 16


@pytest.fixture
def as_rank(monkeypatch):
    """``as_rank(r, w)``: make this process look like rank ``r`` of ``w`` (ddp)."""

    def become(rank: int, world: int) -> None:
        monkeypatch.setattr(distributed, "_context",
                            distributed.Context(rank=rank, world_size=world, backend="gloo", strategy="ddp"))

    yield become


@pytest.mark.parametrize("n, world", [(0, 2), (1, 2), (5, 2), (7, 3), (16, 4), (3, 5)])
def test_shards_are_contiguous_balanced_and_cover_every_item_once(as_rank, n, world):
    items = [f"job-{i}" for i in range(n)]
    parts = []
    for rank in range(world):
        as_rank(rank, world)
        parts.append(distributed.shard(items))
    assert [item for part in parts for item in part] == items  # gather() concatenates in rank order
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1


def test_one_process_changes_nothing():
    assert distributed.context().world_size == 1 and distributed.is_main()
    items = list(range(7))
    assert distributed.shard(items) == items and distributed.gather(items) == items
    assert distributed.mean_over_ranks({"a": 2.0}) == {"a": 2.0}
    assert distributed.broadcast_object({"x": 1}) == {"x": 1}
    from agent_lightning import ops

    lengths = [30, 10, 25, 7, 40]
    assert list(distributed.micro_batches([4, 0, 2, 1, 3], lengths, 50)) == [
        (part, 1.0) for part in ops.partition_microbatches(lengths, 50)]


def _traj(tid: str, group: int, reward: float, n_turns: int, seed: int) -> Trajectory:
    g = torch.Generator().manual_seed(seed)
    turns = tuple(Turn(action="a", action_token_ids=(int(torch.randint(3, VOCAB, (1,), generator=g)),),
                       action_logprobs=(-float(torch.rand(1, generator=g)) - 0.5,), observation_token_ids=(2,))
                  for _ in range(n_turns))
    return Trajectory(id=tid, task=TASK, group=group, prompt_token_ids=(1, 2), turns=turns, final_reward=reward)


class LinearPolicy:
    """Log-prob of token ``t`` is ``theta[t] - 2``: a differentiable stand-in for a model."""

    def __init__(self):
        self.theta = torch.zeros(VOCAB, requires_grad=True)

    def token_logprobs(self, batch, *, temperature, with_entropy=False, reference=False):
        targets = batch.input_ids[batch.policy_index]
        logp = self.theta[targets] * (1.0 / temperature) - 2.0
        return logp, torch.zeros_like(logp)


def _gradient(algo: GRPO, policy: LinearPolicy, batch, rows: list[int], budget: int) -> torch.Tensor:
    """The accumulated gradient of one minibatch on the current (possibly simulated) rank."""
    lengths = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).tolist()
    policy_lengths = (batch.policy_cu_seqlens[1:] - batch.policy_cu_seqlens[:-1]).tolist()
    divisor = max(policy_lengths)  # over the whole batch, as training.norm_tokens does
    mb_tokens = sum(policy_lengths[r] for r in rows)
    policy.theta.grad = None
    for micro_rows, scale in distributed.micro_batches(rows, [lengths[r] for r in rows], budget):
        micro = batch.select([rows[i] for i in micro_rows])
        loss, _ = algo.loss(policy, micro, divisor)
        share = common.microbatch_share(algo.config.loss_aggregation, micro.num_sequences, micro.num_policy_tokens,
                                        len(rows), mb_tokens)
        (loss * share * scale).backward()
    return torch.zeros(VOCAB) if policy.theta.grad is None else policy.theta.grad.clone()


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
@pytest.mark.parametrize("world", [2, 3, 8])
def test_rank_gradients_average_to_the_one_process_gradient(as_rank, monkeypatch, aggregation, world):
    # Uneven lengths, so token counts differ between ranks: a per-rank normalisation would be wrong.
    trajs = [_traj(f"e{i}", i // 3, float(i % 3 == 0) + 0.1 * i, 1 + (i * 5) % 4, i) for i in range(7)]
    algo = GRPO(group_size=3, loss_aggregation=aggregation, clip_low=0.2, clip_high=0.28)
    batch = algo.prepare(trajs)
    policy = LinearPolicy()
    with torch.no_grad():
        policy.theta.copy_(torch.randn(VOCAB, generator=torch.Generator().manual_seed(3)) * 0.3)
    rows = [0, 2, 3, 5, 6]  # one minibatch, in the shuffled order training may use
    monkeypatch.setattr(distributed, "_context", distributed.Context())
    single = _gradient(algo, policy, batch, rows, budget=9)
    assert single.abs().max() > 1e-3  # the comparison below is not between zeros
    per_rank = []
    for rank in range(world):  # 8 ranks > 5 rows: some ranks backpropagate nothing
        as_rank(rank, world)
        per_rank.append(_gradient(algo, policy, batch, rows, budget=9))
    averaged = torch.stack(per_rank).sum(0) / world  # what average_gradients computes
    torch.testing.assert_close(averaged, single, rtol=0, atol=1e-6)


def test_backend_choice_and_its_errors():
    assert distributed.choose_backend("auto", "cpu") == "gloo"
    assert distributed.choose_backend("gloo", "cpu") == "gloo"
    with pytest.raises(ConfigError, match=r"^trainer\.distributed\.backend: 'nccl' needs CUDA"):
        distributed.choose_backend("nccl", "cpu")


def test_launch_refuses_bad_counts_and_nested_torchrun(monkeypatch):
    with pytest.raises(ConfigError, match=r"^--nproc: 0 is not a process count"):
        distributed.launch(0, ["run"])
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="started by torchrun; drop --nproc"):
        distributed.launch(2, ["run"])


def test_init_outside_torchrun_is_a_one_process_run(monkeypatch):
    for name in distributed.LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    context = distributed.init()
    assert (context.world_size, context.rank, context.active) == (1, 0, False)


def test_config_section_and_cli_errors_before_any_process_starts(tmp_path, capsys):
    from agent_lightning.cli import main as cli
    from agent_lightning.config import load_config

    section = load_config(None).trainer.distributed
    assert (section.backend, section.strategy, section.timeout_s) == ("auto", "ddp", 1800.0)
    code = cli.main(["run", "--nproc", "2", "--output-dir", str(tmp_path / "run"), "trainer.distributed.strategy=zero"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid value 'zero' for 'trainer.distributed.strategy'") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()
