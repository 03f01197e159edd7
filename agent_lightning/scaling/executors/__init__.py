"""Rollout executors: where episodes are played.

An executor turns a step's jobs — ``(episode id, task, group)`` — into trajectories:

    executor.play(jobs, temperature=1.0, seed="0/train/12") -> list[Trajectory]  # job order
    executor.metrics()  -> {"rollout/...": float}   # counters since the last call
    executor.close()

* ``inprocess`` (the default): ``rollout.play`` in the trainer's process, environments
  stepped in a thread pool.
* ``ray``: environments — and, when the policy is on CPU, policy generation — run in Ray
  actors (``agent_lightning.scaling.executors.ray_executor``), across the cores of this machine or
  the nodes of a Ray cluster.

Sampling noise is keyed by ``(seed, episode id, turn)`` (``rollout.episode_seed``), so
every executor returns the same trajectories for the same seed, however the episodes are
split between workers, and a retried episode is replayed exactly.

The config section is ``trainer.executor: {name: inprocess | ray, ...options}``; the
options are validated by the executor (errors name ``trainer.executor.<key>``).
"""

from __future__ import annotations

import concurrent.futures as futures
import functools
from typing import Any, Protocol, Sequence

from agent_lightning.types import Backend, Task, Trajectory

EXECUTORS: tuple[str, ...] = ("inprocess", "ray")
"""Executor names accepted by ``trainer.executor.name``."""

Job = tuple[str, Task, int]
"""``(episode id, task, group)``: one episode to play."""


class RolloutExecutor(Protocol):
    """Plays episodes; see the module docstring."""

    name: str

    def play(self, jobs: Sequence[Job], *, temperature: float, seed: str | int) -> list[Trajectory]: ...

    def metrics(self) -> dict[str, float]: ...

    def close(self) -> None: ...


def _build_backend(factory: Any, model_config: Any, backend_config: Any, seed: int) -> Any:
    """A policy replica for a worker: the run's backend on the worker's device, seeded like
    the trainer's (the trainer's weights are loaded over it before it samples)."""
    import random

    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    return factory(model_config, backend_config, seed=seed)


def create_executor(config: Any, *, backend: Backend, envs: Any, threads: futures.Executor,
                    plugin_manager: Any) -> RolloutExecutor:
    """The executor named by ``config.trainer.executor`` for a trainer's components.

    The name needs no check here: ``ExecutorConfig.name`` accepts only :data:`EXECUTORS`.

    Args:
        config: The ``RunConfig``.
        backend: The trainer's policy (samples in process; its weights go to Ray workers).
        envs: The trainer's ``EnvPool`` (used by the in-process executor).
        threads: The trainer's thread pool for environment steps.
        plugin_manager: Where the environment and backend factories are looked up, so that
            Ray workers build exactly the components the trainer uses.
    """
    section = config.trainer.executor
    if getattr(config, "agent", None) is not None:
        return _agent_executor(config, section, backend=backend, plugin_manager=plugin_manager)
    if section.name == "ray":
        return _ray_executor(config, section.options, backend=backend, plugin_manager=plugin_manager)
    return _inprocess_executor(config, section.options, backend=backend, envs=envs, threads=threads)


def _inprocess_executor(config: Any, options: dict[str, Any], *, backend: Backend, envs: Any,
                        threads: futures.Executor) -> RolloutExecutor:
    """``trainer.executor.name: inprocess``: episodes played in the trainer's process (no options)."""
    from agent_lightning.config import ConfigError
    from agent_lightning.scaling.executors.inprocess import InProcessExecutor

    if options:
        raise ConfigError(f"trainer.executor: the inprocess executor takes no options (got {', '.join(sorted(options))})")
    return InProcessExecutor(backend=backend, envs=envs, threads=threads, sampling=config.sampling,
                             step_timeout_s=config.trainer.step_timeout_s)


def _ray_executor(config: Any, options: dict[str, Any], *, backend: Backend, plugin_manager: Any) -> RolloutExecutor:
    """``trainer.executor.name: ray``: episodes played by Ray workers that build the run's
    environment and backend from the plugin manager's factories."""
    import importlib.util

    from agent_lightning.config import ConfigError, parse_options
    from agent_lightning.scaling.executors.ray_executor import RayExecutor, RayExecutorConfig

    ray_config = parse_options(RayExecutorConfig, "trainer.executor", options)
    if importlib.util.find_spec("ray") is None:
        raise ConfigError("trainer.executor.name: 'ray' needs the ray package (pip install 'agent-lightning[ray]')")
    env_entry = plugin_manager.environments.get(config.environment.name)
    backend_entry = plugin_manager.backends.get(config.backend.name)
    worker_backend = config.backend.model_copy(update={"device": "cpu", "threads": ray_config.torch_threads})
    return RayExecutor(
        ray_config,
        env_factory=functools.partial(env_entry.factory, **config.environment.options),
        backend=backend,
        backend_factory=functools.partial(_build_backend, backend_entry.factory, config.model, worker_backend,
                                          config.trainer.seed),
        sampling=config.sampling,
        step_timeout_s=config.trainer.step_timeout_s,
    )


def _agent_executor(config: Any, section: Any, *, backend: Backend, plugin_manager: Any) -> RolloutExecutor:
    """``agent:`` runs: the agent plays through the policy endpoint of this process (which
    batches every episode's calls into shared generate calls), on threads here or in
    ``agent.workers`` worker processes."""
    from agent_lightning.agents.runner import AgentExecutor
    from agent_lightning.config import ConfigError
    from agent_lightning.plugins import create_component, get_plugin_manager

    if section.name != "inprocess" or section.options:
        raise ConfigError("trainer.executor: agent runs play in process (the endpoint batches their calls); "
                          f"remove trainer.executor (got '{section.name}')")
    a = config.agent
    name, options = a.factory
    solve = create_component(plugin_manager, "agent", "agent", name, **options)
    processes = None
    if a.workers:
        from agent_lightning.agents.processes import AgentProcesses

        if name not in get_plugin_manager().registries["agent"]:
            raise ConfigError(f"agent.workers: agent '{name}' is registered in the trainer's process only, not through "
                              "an installed plugin, so worker processes cannot build it; set agent.workers: 0")
        try:
            processes = AgentProcesses(name, options, workers=a.workers)
        except RuntimeError as exc:
            raise ConfigError(f"agent.workers: {exc}") from None
    try:
        return AgentExecutor(solve, backend=backend, sampling=config.sampling, concurrency=a.concurrency,
                             timeout_s=a.timeout_s, max_batch=a.max_batch, batch_wait_s=a.batch_wait_ms / 1000.0,
                             max_body_bytes=a.max_body_bytes, success_reward=a.success_reward,
                             models=tuple(a.roles) or ("policy",), roles=bool(a.roles), processes=processes)
    except BaseException:
        if processes is not None:
            processes.close()
        raise
