"""Data-parallel training over ``torch.distributed``, launched by ``torchrun``.

    torchrun --nproc-per-node 2 -m agent_lightning.cli run CONFIG     # or: alightning run CONFIG --nproc 2

Every rank builds the same trainer (same seed, so the same initial weights; rank 0's are
broadcast anyway) and draws the same global task list from the seeded sampler. Then:

* **Rollouts are sharded**: a rank plays its contiguous share of the step's jobs
  (:func:`shard`); sampling noise is keyed by (seed, episode id, turn), so an episode
  samples the same tokens whichever rank plays it. The scored trajectories are
  all-gathered (:func:`gather`) in rank order, which is the 1-process job order: metrics,
  the failure-rate abort, advantages and replay see exactly what one process would.
* **Training is sharded**: each minibatch's rows are split between ranks
  (:func:`micro_batches`); a rank backpropagates its rows' share of the *global* loss
  times the world size, and ``backend.optimizer_step`` averages the gradients
  (:func:`average_gradients`), so the update equals the 1-process one. An algorithm that
  ignores :func:`micro_batches` stays correct: every rank then computes the full
  gradient and the average changes nothing.
* **Rank 0 writes** trackers, ``config.yaml``, trajectories and checkpoints; every rank
  restores from the same checkpoint (the run directory must be on a filesystem all nodes
  see).

Strategies (``trainer.distributed.strategy``): ``ddp`` keeps a whole replica per rank and
all-reduces gradients once per optimizer step (not per backward, as micro-batch counts
differ between ranks); ``fsdp`` shards parameters, gradients and optimizer state with
FSDP2 ``fully_shard`` (see :mod:`agent_lightning.scaling.fsdp`).

Outside ``torchrun`` (no ``WORLD_SIZE``/``RANK`` in the environment) every helper is the
identity of a 1-process run.
"""

from __future__ import annotations

import atexit
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence, TypeVar

from agent_lightning.types import Backend

log = logging.getLogger("agent_lightning")

T = TypeVar("T")

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""Set by ``torchrun`` for every worker; ``RANK`` and ``WORLD_SIZE`` mark a distributed launch."""


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``backend`` is ``None`` outside a process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    strategy: str = "ddp"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.backend is not None


_context = Context()


def launched_by_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return "RANK" in environ and "WORLD_SIZE" in environ


def choose_backend(requested: str, device: str) -> str:
    """``gloo`` or ``nccl`` for ``trainer.distributed.backend`` and ``backend.device``."""
    import torch

    from agent_lightning.config import ConfigError

    cuda = torch.cuda.is_available() and device != "cpu"
    if requested == "auto":
        return "nccl" if cuda else "gloo"
    if requested == "nccl" and not cuda:
        why = "backend.device is 'cpu'" if device == "cpu" else "torch sees no CUDA device"
        raise ConfigError(f"trainer.distributed.backend: 'nccl' needs CUDA tensors but {why}; use 'gloo' or 'auto'")
    return requested


def init(config: Any = None, *, device: str = "auto") -> Context:
    """Join the process group ``torchrun`` describes (``env://``); idempotent.

    Args:
        config: ``trainer.distributed`` (``DistributedConfig``); defaults when ``None``.
        device: ``backend.device``; with NCCL each rank takes ``cuda:LOCAL_RANK``.

    Returns:
        The context; world size 1 without a process group when not launched by torchrun.
    """
    global _context
    if _context.active and config is not None:  # a later run in the same processes may pick another strategy
        import dataclasses

        _context = dataclasses.replace(_context, strategy=config.strategy)
    if _context.active or not launched_by_torchrun():
        return _context
    import datetime

    import torch
    import torch.distributed as dist

    from agent_lightning.config import DistributedConfig

    config = config or DistributedConfig()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = choose_backend(config.backend, device)
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=config.timeout_s))
        atexit.register(shutdown)
    _context = Context(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                       backend=dist.get_backend(), strategy=config.strategy)
    return _context


SHUTDOWN_BARRIER_S = 60.0
"""How long a rank waits at shutdown for the others before leaving anyway."""


def shutdown() -> None:
    """Leave the process group (``destroy_process_group``); safe to call twice.

    The ranks meet first: a rank that destroyed its gloo context while a peer still had pairs
    open on it made that peer abort (``terminate called without an active exception``, seen in
    2-process runs whose rank 0 did end-of-run work after rank 1 was done). gloo's
    ``monitored_barrier`` has a timeout, so a rank whose peer died still gets out."""
    global _context
    if _context.active:
        import datetime

        import torch.distributed as dist

        if dist.is_initialized():
            try:
                if dist.get_backend() == "gloo":
                    dist.monitored_barrier(timeout=datetime.timedelta(seconds=SHUTDOWN_BARRIER_S))
                else:
                    dist.barrier()
            except RuntimeError as exc:  # a peer is gone: leave anyway
                log.warning("distributed shutdown: the other ranks did not all arrive (%s)", str(exc).splitlines()[0])
            dist.destroy_process_group()
    _context = Context()


def context() -> Context:
    return _context


def rank() -> int:
    return _context.rank


def world_size() -> int:
    return _context.world_size


def is_main() -> bool:
    """True on rank 0 (and in a 1-process run): the rank that writes files and logs."""
    return _context.rank == 0


# ----------------------------------------------------------------------------- collectives


def barrier() -> None:
    if _context.active:
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (a run directory, a checkpoint choice, an order)."""
    if not _context.active:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def max_over_ranks(value: int) -> int:
    """The largest of every rank's ``value`` (``all_reduce`` MAX), on every rank: how ranks
    agree on a flag that only some of them saw (a stop signal, a non-finite loss)."""
    if not _context.active or _context.world_size == 1:
        return int(value)
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if _context.backend == "nccl" else torch.device("cpu")
    box = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return int(box.item())


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on at least one rank (every rank gets the same answer)."""
    return bool(max_over_ranks(int(bool(flag))))


def shard(items: Sequence[T]) -> list[T]:
    """This rank's contiguous share of ``items`` (sizes differ by at most one; rank order).

    Concatenating every rank's share in rank order gives ``items`` back, which is what
    :func:`gather` relies on.
    """
    lo, hi = _bounds(len(items), _context.rank, _context.world_size)
    return list(items[lo:hi])


def _bounds(n: int, rank_: int, world: int) -> tuple[int, int]:
    return rank_ * n // world, (rank_ + 1) * n // world


def gather(items: Sequence[T]) -> list[T]:
    """Every rank's ``items`` concatenated in rank order, on every rank (``all_gather_object``)."""
    if not _context.active or _context.world_size == 1:
        return list(items)
    import torch.distributed as dist

    parts: list[Any] = [None] * _context.world_size
    dist.all_gather_object(parts, list(items))
    return [item for part in parts for item in part]


def mean_over_ranks(values: Mapping[str, float]) -> dict[str, float]:
    """Per-key mean over ranks (a key a rank lacks counts as 0 there).

    Statistics accumulated with :func:`micro_batches`' scale average to their full-batch
    value exactly as gradients do; values equal on every rank (``lr``) stay unchanged.
    """
    if not _context.active or _context.world_size == 1:
        return dict(values)
    import torch.distributed as dist

    parts: list[Any] = [None] * _context.world_size
    dist.all_gather_object(parts, dict(values))
    keys = list(dict.fromkeys(key for part in [dict(values), *parts] for key in part))  # this rank's order first
    return {key: sum(part.get(key, 0.0) for part in parts) / _context.world_size for key in keys}


def micro_batches(rows: Sequence[int], lengths: Sequence[int], token_budget: int,
                  prompt_groups: "tuple[Sequence[int], Sequence[int]] | None" = None) -> Iterator[tuple[list[int], float]]:
    """This rank's micro-batches of one minibatch, with their gradient scale.

    Args:
        rows: The minibatch's rows (sequence indices of a batch every rank holds whole).
        lengths: Stream tokens of each of ``rows``.
        token_budget: Stream-token budget of one micro-batch.
        prompt_groups: ``(groups, shared)`` of each of ``rows`` when the training forward
            encodes a group's shared prompt once per micro-batch (the backend's
            ``prompt_groups``): micro-batches then keep a group together and count its
            prompt once (``ops.partition_shared_prompts``); ``None``: every row in full
            (``ops.partition_microbatches``).

    Yields:
        ``(indices into rows, scale)``: the caller backpropagates ``loss * share * scale``,
        where ``share`` is the micro-batch's weight in the *whole* minibatch's loss. On one
        process this is ``ops.partition_microbatches`` with scale 1. On ``W`` ranks, rank
        ``r`` gets the ``r``-th contiguous share of ``rows`` with scale ``W`` (gradients are
        then averaged over ranks); with FSDP, ranks with fewer micro-batches repeat one
        with scale 0, since every forward/backward is a collective there.

    Why this equals one process: with ``token-mean``, the minibatch loss is
    ``L = sum_i l_i / N`` over its ``N`` policy tokens, and a micro-batch ``m`` of ``n_m``
    tokens adds ``share_m * loss_m = (n_m / N) * (sum_{i in m} l_i / n_m)``. ``N`` counts the
    whole minibatch on every rank (its rows are global), so the micro-batches of all ranks
    add up to ``L``; rank ``r`` backpropagates ``W * sum_{m in r}``, and the average over
    ranks ``(1/W) sum_r W * grad(sum_{m in r})`` is ``grad L``. Normalising by a rank's own
    tokens instead would weigh a rank's tokens by ``1 / n_r``: wrong whenever ranks hold
    different token counts. The per-sequence modes are the same with sequences for tokens
    (``seq-mean-token-sum`` also divides by ``norm_tokens``, taken over the whole batch).
    """
    from agent_lightning import ops

    def partition(lo: int, hi: int) -> list[list[int]]:
        if prompt_groups is None:
            return ops.partition_microbatches(list(lengths[lo:hi]), token_budget)
        groups, shared = prompt_groups
        return ops.partition_shared_prompts(list(lengths[lo:hi]), list(groups[lo:hi]), list(shared[lo:hi]), token_budget)

    world = _context.world_size if _context.active else 1
    if world == 1:
        for part in partition(0, len(rows)):
            yield part, 1.0
        return
    lo, hi = _bounds(len(rows), _context.rank, world)
    parts = [[lo + i for i in part] for part in partition(lo, hi)] if hi > lo else []
    padding = 0
    if _context.strategy == "fsdp":  # agree on the count before the first (collective) forward
        import torch.distributed as dist

        counts: list[Any] = [None] * world
        dist.all_gather_object(counts, len(parts))
        padding = max(counts) - len(parts)
    for part in parts:
        yield part, float(world)
    for _ in range(padding):
        yield [0], 0.0


def average_gradients(params: Sequence[Any], bucket_elements: int = 1 << 25) -> None:
    """Average the gradients of ``params`` over ranks, in place (a no-op on one process).

    Gradients FSDP already reduced (``DTensor``) are skipped. A parameter without a
    gradient on this rank (it had no rows) contributes zeros. Bucketed: one all-reduce per
    ``bucket_elements`` elements of the same dtype and device.
    """
    if not _context.active or _context.world_size == 1:
        return
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    local = [p for p in params if p.requires_grad and not isinstance(p, DTensor)]
    for p in local:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    buckets: dict[tuple[Any, Any], list[list[Any]]] = {}
    for p in local:
        groups = buckets.setdefault((p.grad.dtype, p.grad.device), [[]])
        if groups[-1] and sum(q.numel() for q in groups[-1]) + p.numel() > bucket_elements:
            groups.append([])
        groups[-1].append(p)
    for groups in buckets.values():
        for group in groups:
            flat = torch.cat([p.grad.reshape(-1) for p in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= _context.world_size
            offset = 0
            for p in group:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                offset += p.numel()


def clip_grad_norm_(params: Sequence[Any], max_norm: float) -> Any:
    """``torch.nn.utils.clip_grad_norm_``, or :func:`agent_lightning.scaling.fsdp.clip_grad_norm_`
    when some gradients are FSDP shards (torch's refuses shards beside whole tensors)."""
    import torch
    from torch.distributed.tensor import DTensor

    params = list(params)
    if any(isinstance(p.grad, DTensor) for p in params):
        from agent_lightning.scaling import fsdp

        return fsdp.clip_grad_norm_(params, max_norm)
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


# ----------------------------------------------------------------------------- the model


def prepare_backend(backend: Backend, algorithm: Any = None) -> None:
    """Make every rank's policy start from rank 0's weights; wrap it for ``fsdp``.

    Called after the backend is built and before the algorithm creates the optimizer
    (``algorithm`` tells ``fsdp`` whether a frozen reference model will be needed).
    """
    if not _context.active:
        return
    from agent_lightning.config import ConfigError

    model = getattr(backend, "model", None)
    if model is None or not hasattr(model, "state_dict"):
        raise ConfigError(f"backend.name: backend {type(backend).__name__} has no torch module 'model'; "
                          "distributed training needs one")
    if _context.world_size > 1:
        import torch.distributed as dist

        for tensor in model.state_dict().values():
            dist.broadcast(tensor.data, src=0)
    if _context.strategy == "fsdp":
        from agent_lightning.scaling import fsdp

        fsdp.shard_model(backend, needs_reference=fsdp.needs_reference(backend, algorithm))


def sampling_weights(backend: Backend) -> Any:
    """Context for rollouts: under ``fsdp`` the whole weights are gathered on every rank for
    its share of the episodes (ranks then sample without talking to each other)."""
    import contextlib

    if _context.active and _context.strategy == "fsdp":
        from agent_lightning.scaling import fsdp

        return fsdp.unsharded(backend)
    return contextlib.nullcontext()


def checkpoint_state(backend: Backend) -> Any:
    """Context around rank 0's ``backend.save``: under ``fsdp`` every rank takes part in
    gathering the whole weights and optimizer state, which rank 0 then writes in the
    backend's usual files."""
    import contextlib

    if _context.active and _context.strategy == "fsdp":
        from agent_lightning.scaling import fsdp

        return fsdp.full_state_for_save(backend)
    return contextlib.nullcontext()


def load_backend(backend: Backend, folder: Any) -> None:
    """``backend.load(folder)`` on every rank (under ``fsdp``, the whole tensors read are
    cut into this rank's shards as they load)."""
    from pathlib import Path

    folder = Path(folder)
    if _context.world_size > 1 and not (folder / "manifest.json").is_file():
        raise RuntimeError(f"rank {_context.rank} cannot see checkpoint {folder}: a multi-node run needs "
                           "trainer.output_dir on a filesystem every node mounts")
    if _context.active and _context.strategy == "fsdp":
        from agent_lightning.scaling import fsdp

        with fsdp.full_state_for_load(backend):
            backend.load(str(folder))
        return
    backend.load(str(folder))


# ----------------------------------------------------------------------------- launching


def launch(nproc: int, cli_args: Sequence[str]) -> int:
    """``alightning <cli_args>`` in ``nproc`` processes on this machine, through
    ``python -m torch.distributed.run --standalone`` (a free port; one node). For several
    nodes run ``torchrun`` yourself (README, "Scaling up").

    Returns:
        torchrun's exit code (non-zero when a rank failed).
    """
    import subprocess
    import sys

    from agent_lightning.config import ConfigError

    if nproc < 1:
        raise ConfigError(f"--nproc: {nproc} is not a process count (>= 1)")
    if launched_by_torchrun():
        raise ConfigError("--nproc: this process was itself started by torchrun; drop --nproc")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "agent_lightning.cli", *cli_args]
    import signal
    import threading

    from agent_lightning.loop import stopping

    proc = subprocess.Popen(command)
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        """Pass SIGTERM/SIGINT on to torchrun, which passes it on to every rank (graceful stop)."""
        received.append(signum)
        proc.send_signal(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, forward) for sig in stopping.SIGNALS}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return stopping.exit_code(received[0]) if received and code != 0 else code
