"""FSDP2 for ``trainer.distributed.strategy: fsdp``: shard the decoder layers over the ranks.

Each decoder layer (the classes a transformers model lists in ``_no_split_modules``) gets
``torch.distributed.fsdp.fully_shard``: its weights, their gradients and the AdamW state
are cut in ``world_size`` shards (``DTensor``). The embeddings, the final norm and the
lm head stay whole on every rank, because the training forward reads the head's weight
directly (``modeling.lm_head``, fused log-probs); their gradients are averaged by
``distributed.average_gradients``. For a decoder-only LM, layers hold nearly all weights.

* Training: a layer's forward all-gathers its weights, its backward reduce-scatters (and
  averages) its gradients, so every rank must run the same number of forward/backward
  passes: ``distributed.micro_batches`` pads with zero-weight micro-batches.
* Sampling (:func:`unsharded`): ranks play different numbers of turns and tokens, so the
  layers are gathered whole once before the rollouts and kept so until they end; then
  no forward talks to another rank.
* Checkpoints (:func:`full_state_for_save`, :func:`full_state_for_load`): every rank
  gathers whole tensors; rank 0 writes the backend's usual files (a checkpoint of an
  ``fsdp`` run is the same as a ``ddp`` one); on load every rank cuts its shards from the
  whole tensors read.
* Gradient clipping (:func:`clip_grad_norm_`) adds the shards' squares over ranks.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

from agent_lightning.types import Backend

STRATEGY_KEY = "trainer.distributed.strategy"


def _fsdp_modules(model: Any) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _layer_class_names(lm: Any) -> set[str]:
    """Class names of ``lm``'s decoder layers: what a transformers model lists in
    ``_no_split_modules`` (modules never cut across devices).

    Private API, isolated here: transformers has no public accessor for that list (checked
    against transformers 5.25 and accelerate 1.16, whose FSDP auto-wrap policy reads the
    same attribute).
    """
    return set(getattr(lm, "_no_split_modules", None) or ())


def needs_reference(backend: Backend, algorithm: Any) -> bool:
    """A KL term to a frozen copy of the model (full fine-tuning; LoRA switches adapters off)."""
    options = getattr(algorithm, "config", None)
    return float(getattr(options, "kl_coef", 0.0) or 0.0) > 0 and not getattr(backend, "is_lora", False)


def shard_model(backend: Backend, *, needs_reference: bool = False) -> None:
    """``fully_shard`` every decoder layer of ``backend.model`` (before the optimizer exists).

    With ``needs_reference``, the frozen reference (``backend.reference_model()``) is copied
    first, whole: a sharded module cannot be copied, and a whole one samples no collective.
    """
    from torch.distributed.fsdp import fully_shard

    from agent_lightning.backends.transformers.modeling import causal_lm
    from agent_lightning.config import ConfigError

    model = backend.model
    names = _layer_class_names(causal_lm(model))
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(f"{STRATEGY_KEY}: 'fsdp' shards decoder layers, and {type(causal_lm(model)).__name__} "
                          "names none in _no_split_modules; use 'ddp'")
    if getattr(backend, "optimizer", None) is not None:
        raise RuntimeError("fsdp.shard_model must run before the optimizer is created")
    if needs_reference:
        backend.reference_model()
    for layer in layers:
        fully_shard(layer)


@contextlib.contextmanager
def unsharded(backend: Backend) -> Iterator[None]:
    """Whole layer weights on every rank for the duration (sampling without collectives)."""
    modules = _fsdp_modules(backend.model)
    for module in modules:
        module.unshard()
        module.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for module in modules:
            module.set_reshard_after_forward(True)
            module.reshard()


@contextlib.contextmanager
def full_state_for_save(backend: Backend) -> Iterator[None]:
    """While open, ``backend.model.state_dict()`` and ``backend.optimizer.state_dict()``
    hold whole tensors on every rank (gathered here, collectively, in a fixed order)."""
    from torch.distributed.tensor import DTensor

    model = backend.model
    whole = {key: value.full_tensor() for key, value in model.state_dict().items() if isinstance(value, DTensor)}

    def replace(module: Any, state_dict: dict, prefix: str, local_metadata: Any) -> None:
        for key in list(state_dict):
            if key in whole:
                state_dict[key] = whole[key]

    handle = model.register_state_dict_post_hook(replace)
    optimizer = getattr(backend, "optimizer", None)
    saved: list[tuple[dict, str, Any]] = []
    if optimizer is not None:
        for group in optimizer.param_groups:  # param order: the same on every rank
            for param in group["params"]:
                state = optimizer.state.get(param, {})
                for name in sorted(state):
                    if isinstance(state[name], DTensor):
                        saved.append((state, name, state[name]))
                        state[name] = state[name].full_tensor()
    try:
        yield
    finally:
        handle.remove()
        for state, name, value in saved:
            state[name] = value


@contextlib.contextmanager
def full_state_for_load(backend: Backend) -> Iterator[None]:
    """While open, ``backend.model.load_state_dict`` accepts whole tensors for sharded
    weights; on leaving, whole optimizer state loaded for sharded weights is cut to this
    rank's shard. Cutting is local (no communication): every rank read the same files."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    model = backend.model
    targets = {key: value for key, value in model.state_dict().items() if isinstance(value, DTensor)}

    def shard(value: Any, like: Any) -> Any:
        if isinstance(value, DTensor) or not hasattr(value, "shape") or value.shape != like.shape:
            return value
        return distribute_tensor(value.to(like.dtype), like.device_mesh, like.placements, src_data_rank=None)

    def cut(module: Any, state_dict: dict, prefix: str, *args: Any) -> None:
        for key in list(state_dict):
            if key in targets:
                state_dict[key] = shard(state_dict[key], targets[key])

    handle = model.register_load_state_dict_pre_hook(cut)
    try:
        yield
    finally:
        handle.remove()
    optimizer = getattr(backend, "optimizer", None)
    if optimizer is not None:
        for group in optimizer.param_groups:
            for param in group["params"]:
                state = optimizer.state.get(param, {})
                if isinstance(param, DTensor):
                    for name in list(state):
                        state[name] = shard(state[name], param)


def clip_grad_norm_(params: Sequence[Any], max_norm: float) -> Any:
    """Clip like ``torch.nn.utils.clip_grad_norm_`` when layer gradients are shards
    (``DTensor``) and the others whole: the norm sums the shards' squares over ranks and
    counts the whole gradients (averaged already, the same on every rank) once.

    Returns:
        The total norm before clipping, a 0-dim float32 tensor on the CPU.
    """
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    device = next(g.to_local().device for g in grads if isinstance(g, DTensor))
    sharded = torch.zeros((), dtype=torch.float32, device=device)
    whole = torch.zeros((), dtype=torch.float32, device=device)
    for g in grads:
        if isinstance(g, DTensor):
            sharded += g.to_local().float().pow(2).sum()
        else:
            whole += g.float().pow(2).sum().to(device)
    dist.all_reduce(sharded, op=dist.ReduceOp.SUM)
    total = (sharded + whole).sqrt()
    coefficient = float(torch.clamp(max_norm / (total + 1e-6), max=1.0))
    if torch.isfinite(total) and coefficient < 1.0:
        for g in grads:
            g.mul_(coefficient)
    return total.cpu()
