"""The Ray executor: episodes played in Ray actors, across cores or a cluster's nodes.

Two placements (``generate_on``):

* ``workers`` (``auto`` when the policy is on CPU): each actor holds a policy replica
  and its own environments and plays whole episodes (``rollout.play``). The step's jobs
  are split into chunks, ``chunks_per_worker`` per worker. Weights travel as a versioned
  state dict (adapter only with LoRA): put into the object store once per policy
  version, loaded by a worker only when its replica holds another version.
* ``driver`` (``auto`` on GPU): generation stays on the trainer's backend; every
  environment lives in an actor and is stepped through a ``RemoteEnv`` proxy.

A worker that dies mid-episode (crash, node loss, ``ray.kill``) is replaced by a fresh
actor, and its episodes are played again on a live worker — same episode ids, same
per-episode sampling seeds, so a replay is the same episode and a result is kept once per
id. ``metrics()`` reports ``rollout/worker_deaths`` and ``rollout/retried_episodes``.
An episode whose workers died more than ``max_retries`` times fails with that reason.

Cluster: ``address`` (or ``RAY_ADDRESS``) joins a running cluster (``ray start --head``
on the head node, ``ray start --address=HEAD:6379`` on the others); without one a local
cluster of ``num_cpus`` CPUs starts (``ray.init(num_cpus=..., include_dashboard=False)``)
and stops with the executor. An already initialised Ray is used as it is.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from agent_lightning.config import SamplingConfig
from agent_lightning.loop.env_threads import EnvThreadPool
from agent_lightning.loop.rollout import EnvPool, play
from agent_lightning.scaling.executors.ray_worker import RemoteEnv, RolloutWorker, WorkerLostError
from agent_lightning.scaling.executors.weights import weights_payload
from agent_lightning.types import Backend, Environment, Task, Trajectory


class RayExecutorConfig(BaseModel):
    """Options of ``trainer.executor`` when ``name: ray``."""

    model_config = ConfigDict(extra="forbid")

    workers: int = Field(2, ge=1, description="rollout actors")
    address: str | None = Field(None, description="Ray cluster address; null: RAY_ADDRESS, else a local cluster")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local cluster; null: workers x cpus_per_worker")
    cpus_per_worker: float = Field(1.0, gt=0)
    generate_on: Literal["auto", "workers", "driver"] = "auto"
    chunks_per_worker: int = Field(1, ge=1, description="requests per worker and step; more balance uneven episodes")
    env_threads: int = Field(1, ge=1, description="environment steps run at once inside one worker (a hung step holds one)")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads of a worker's policy replica")
    max_retries: int = Field(3, ge=0, description="replays of an episode whose worker died")


@dataclass
class _Worker:
    name: str
    handle: Any
    started: Any = None  # ref of ready(): a replacement may still be importing its model
    alive: bool = True
    inflight: int = 0

    def is_ready(self) -> bool:
        import ray

        if self.started is not None and ray.wait([self.started], timeout=0)[0]:
            self.started = None
        return self.started is None


def ensure_ray(config: RayExecutorConfig) -> bool:
    """Connect to Ray unless it is initialised; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        cpus = config.num_cpus or max(1, math.ceil(config.workers * config.cpus_per_worker))
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"


class RayExecutor:
    """Plays episodes in Ray actors; see the module docstring.

    Args:
        config: The executor's options.
        env_factory: Builds one environment in a worker (picklable).
        backend: The trainer's policy: its version and weights go to the workers; it
            generates itself when ``generate_on`` resolves to ``driver``.
        backend_factory: Builds a worker's policy replica (picklable); needed for
            ``generate_on: workers``.
        sampling: The run's ``sampling`` section.
        step_timeout_s: Per-step environment timeout.
    """

    name = "ray"

    def __init__(self, config: RayExecutorConfig, *, env_factory: Callable[[], Environment], backend: Backend,
                 backend_factory: Callable[[], Any] | None, sampling: SamplingConfig, step_timeout_s: float):
        import ray

        self.config = config
        self.backend = backend
        self.sampling = sampling
        self.step_timeout_s = step_timeout_s
        self.env_factory = env_factory
        mode = config.generate_on
        if mode == "auto":
            device = getattr(getattr(backend, "device", None), "type", "cpu")
            mode = "workers" if device == "cpu" else "driver"
        if mode == "workers" and backend_factory is None:
            raise ValueError("trainer.executor.generate_on: 'workers' needs a backend that workers can rebuild")
        self.generate_on = mode
        self.backend_factory = backend_factory if mode == "workers" else None
        self._owns_ray = ensure_ray(config)
        self._actor = ray.remote(RolloutWorker).options(
            num_cpus=config.cpus_per_worker, max_concurrency=1 if mode == "workers" else config.env_threads)
        self._lock = threading.Lock()
        self._spawned = 0
        self._deaths = 0
        self._retried = 0
        self._weights: tuple[int, list[Any] | None] | None = None
        self.workers = [self._spawn() for _ in range(config.workers)]
        try:
            ray.get([w.started for w in self.workers])
        except ray.exceptions.RayError as exc:
            self.close()
            raise RuntimeError(f"rollout workers could not start: {_first_line(exc)}") from None
        self.threads: EnvThreadPool | None = None
        self.remote_envs: EnvPool | None = None
        self._next_worker = 0
        if mode == "driver":
            self.threads = EnvThreadPool(max_workers=max(8, 2 * config.workers * config.env_threads), name="ray-env")
            self.remote_envs = EnvPool(self._remote_env)

    # ------------------------------------------------------------------ workers

    def _spawn(self) -> _Worker:
        handle = self._actor.remote(self.env_factory, self.sampling, self.step_timeout_s, self.backend_factory,
                                    self.config.env_threads, self.config.torch_threads)
        worker = _Worker(name=f"rollout-worker-{self._spawned}", handle=handle, started=handle.ready.remote())
        self._spawned += 1
        return worker

    def _lost(self, worker: _Worker) -> None:
        """Count a dead worker once, and put a fresh actor in its place."""
        import ray

        with self._lock:
            if not worker.alive:
                return
            worker.alive = False
            self._deaths += 1
            try:
                ray.kill(worker.handle)
            except Exception:  # noqa: BLE001 - it is gone already
                pass
            if worker in self.workers:
                self.workers[self.workers.index(worker)] = self._spawn()

    def _live(self) -> list[_Worker]:
        with self._lock:
            return [w for w in self.workers if w.alive]

    def _publish(self, version: int) -> tuple[int, list[Any]] | None:
        """The ``(version, [object ref])`` of the policy's weights, put once per version."""
        import ray

        if self._weights is None or self._weights[0] != version:
            state = weights_payload(self.backend)
            self._weights = (version, None if state is None else [ray.put(state)])
        return None if self._weights[1] is None else (self._weights[0], self._weights[1])

    # ------------------------------------------------------------------ playing

    def play(self, jobs: Sequence[tuple[str, Task, int]], *, temperature: float, seed: str | int) -> list[Trajectory]:
        """Trajectories of ``jobs`` in job order; episode ids must be unique."""
        ids = [job[0] for job in jobs]
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})[:3]
            raise ValueError(f"episode ids must be unique within a call (repeated: {', '.join(dupes)})")
        if not jobs:
            return []
        if self.generate_on == "workers":
            return self._play_on_workers(jobs, temperature, seed)
        return self._play_on_driver(jobs, temperature, seed)

    def _play_on_workers(self, jobs: Sequence[tuple[str, Task, int]], temperature: float,
                         seed: str | int) -> list[Trajectory]:
        import ray

        version = int(getattr(self.backend, "version", 0))
        weights = self._publish(version)
        n = min(len(jobs), len(self.workers) * self.config.chunks_per_worker)
        chunks = [list(jobs[k * len(jobs) // n:(k + 1) * len(jobs) // n]) for k in range(n)]
        pending: dict[Any, tuple[_Worker, list[tuple[str, Task, int]], int]] = {}

        def submit(chunk: list[tuple[str, Task, int]], attempt: int) -> None:
            # Least loaded first; a worker still starting counts one request more.
            worker = min(self._live(), key=lambda w: (w.inflight + (not w.is_ready()), not w.is_ready()))
            worker.inflight += 1
            pending[worker.handle.play.remote(chunk, temperature, seed, version, weights)] = (worker, chunk, attempt)

        for chunk in chunks:
            submit(chunk, 0)
        results: dict[str, Trajectory] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            worker, chunk, attempt = pending.pop(ready[0])
            worker.inflight -= 1
            try:
                trajectories = ray.get(ready[0])
            except ray.exceptions.RayActorError:
                self._lost(worker)
                if attempt < self.config.max_retries:
                    with self._lock:
                        self._retried += len(chunk)
                    submit(chunk, attempt + 1)
                else:
                    for eid, task, group in chunk:
                        results[eid] = self._abandoned(eid, task, group, version, attempt + 1)
                continue
            except ray.exceptions.RayTaskError as exc:
                raise RuntimeError(f"rollout worker {worker.name} failed: {_first_line(exc)}") from None
            for traj in trajectories:
                results.setdefault(traj.id, traj)  # idempotent: one result per episode id
        return [results[eid] for eid in (job[0] for job in jobs)]

    def _abandoned(self, eid: str, task: Task, group: int, version: int, deaths: int) -> Trajectory:
        return Trajectory(id=eid, task=task, group=group, prompt_token_ids=(), turns=(), policy_version=version,
                          failure=f"rollout workers died {deaths} times while playing this episode")

    # ------------------------------------------------------------------ driver-side generation

    def _remote_env(self) -> RemoteEnv:
        live = self._live()
        worker = live[self._next_worker % len(live)]
        self._next_worker += 1
        return RemoteEnv(worker, self._lost)

    def _rebind(self) -> None:
        """Point proxies of dead workers at live ones (their episodes start afresh anyway)."""
        assert self.remote_envs is not None
        for slot, env in enumerate(self.remote_envs.instances):
            if isinstance(env, RemoteEnv) and not env.worker.alive:
                self.remote_envs.instances[slot] = self._remote_env()

    def _play_on_driver(self, jobs: Sequence[tuple[str, Task, int]], temperature: float,
                        seed: str | int) -> list[Trajectory]:
        assert self.remote_envs is not None and self.threads is not None
        version = int(getattr(self.backend, "version", 0))

        def run(batch: Sequence[tuple[str, Task, int]]) -> list[Trajectory]:
            self._rebind()
            return play(self.backend, self.remote_envs, batch, sampling=self.sampling, temperature=temperature,
                        step_timeout_s=self.step_timeout_s, policy_version=version, executor=self.threads,
                        seed=seed)

        results = {t.id: t for t in run(jobs)}
        marker = f"raised {WorkerLostError.__name__}"
        for attempt in range(self.config.max_retries + 1):
            lost = [job for job in jobs if marker in (results[job[0]].failure or "")]
            if not lost:
                break
            if attempt == self.config.max_retries:
                for eid, task, group in lost:
                    results[eid] = self._abandoned(eid, task, group, version, attempt + 1)
                break
            with self._lock:
                self._retried += len(lost)
            results.update({t.id: t for t in run(lost)})
        return [results[job[0]] for job in jobs]

    # ------------------------------------------------------------------ bookkeeping

    def metrics(self) -> dict[str, float]:
        """``rollout/worker_deaths`` and ``rollout/retried_episodes`` since the last call,
        and ``rollout/workers`` (live actors now)."""
        with self._lock:
            out = {"rollout/worker_deaths": float(self._deaths), "rollout/retried_episodes": float(self._retried),
                   "rollout/workers": float(sum(w.alive for w in self.workers))}
            self._deaths = self._retried = 0
        return out

    def close(self) -> None:
        """Stop the workers (closing their environments first), and the local cluster if
        this executor started it."""
        import ray

        workers, self.workers = list(getattr(self, "workers", [])), []
        try:
            ray.get([w.handle.close.remote() for w in workers if w.alive], timeout=10)
        except Exception:  # noqa: BLE001 - best effort before the kill
            pass
        for worker in workers:
            try:
                ray.kill(worker.handle)
            except Exception:  # noqa: BLE001
                pass
        if getattr(self, "threads", None) is not None:
            self.threads.shutdown(wait=False, cancel_futures=True)
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
