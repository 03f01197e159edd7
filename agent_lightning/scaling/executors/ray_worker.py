"""What runs inside a Ray actor, and the driver-side proxy of a remote environment.

Nothing here imports ray at module level: ``RayExecutor`` wraps ``RolloutWorker`` with
``ray.remote`` when it starts workers, and the worker imports ray only to fetch weights.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Sequence

from agent_lightning.config import SamplingConfig
from agent_lightning.loop.env_threads import EnvThreadPool
from agent_lightning.loop.rollout import EnvPool, play
from agent_lightning.types import Environment, Observation, StepResult, Task, Trajectory


class WorkerLostError(RuntimeError):
    """The Ray actor holding an environment died; the episode is replayed elsewhere."""


class RolloutWorker:
    """One rollout worker (a Ray actor; one core by default).

    Plays whole episodes with a policy replica (``play``), or hosts single environments
    that the driver steps (``env_reset``/``env_step``/``env_close``) when generation stays
    on the driver (a GPU policy).

    Args:
        env_factory: Builds one environment (picklable: shipped to the actor).
        sampling: The run's ``sampling`` section.
        step_timeout_s: Per-step environment timeout.
        backend_factory: Builds the policy replica; ``None`` for environment-only workers.
        env_threads: Environment steps run concurrently within the worker (1: one after
            the other, so that a worker uses one core).
        torch_threads: torch intra-op threads in the worker.
    """

    def __init__(self, env_factory: Callable[[], Environment], sampling: SamplingConfig, step_timeout_s: float,
                 backend_factory: Callable[[], Any] | None = None, env_threads: int = 1, torch_threads: int = 1):
        if backend_factory is not None:
            import torch

            torch.set_num_threads(torch_threads)
        self.env_factory = env_factory
        self.sampling = sampling
        self.step_timeout_s = step_timeout_s
        self.envs = EnvPool(env_factory)
        self.threads = EnvThreadPool(max_workers=env_threads, name="worker-env")
        self.backend = backend_factory() if backend_factory is not None else None
        self.version: int | None = None
        self.hosted: dict[int, Environment] = {}

    def ready(self) -> int:
        """The worker's process id, once it is built."""
        return os.getpid()

    def play(self, jobs: Sequence[tuple[str, Task, int]], temperature: float, seed: str | int,
             policy_version: int, weights: tuple[int, list[Any]] | None) -> list[Trajectory]:
        """Play ``jobs`` on the replica after loading ``weights = (version, [object ref])``
        when the replica holds another version (the ref is wrapped in a list so that Ray
        hands it over unresolved)."""
        if self.backend is None:
            raise RuntimeError("this rollout worker hosts environments only (generate_on=driver)")
        if weights is not None and weights[0] != self.version:
            import ray

            from agent_lightning.scaling.executors.weights import apply_weights

            apply_weights(self.backend, ray.get(weights[1][0]), weights[0])
            self.version = weights[0]
        return play(self.backend, self.envs, jobs, sampling=self.sampling, temperature=temperature,
                    step_timeout_s=self.step_timeout_s, policy_version=policy_version, executor=self.threads,
                    seed=seed)

    # ---------------------------------------------------------- hosted environments

    def env_reset(self, slot: int, task: Task) -> Observation:
        if slot not in self.hosted:
            self.hosted[slot] = self.env_factory()
        return self.hosted[slot].reset(task)

    def env_step(self, slot: int, action: str) -> StepResult:
        return self.hosted[slot].step(action)

    def env_close(self, slot: int) -> None:
        env = self.hosted.pop(slot, None)
        if env is not None:
            env.close()

    def close(self) -> None:
        self.envs.close()
        for slot in list(self.hosted):
            try:
                self.env_close(slot)
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self.threads.shutdown(wait=False, cancel_futures=True)


class RemoteEnv:
    """Driver-side ``Environment`` whose instance lives in a worker (slot ``slot``).

    A dead worker surfaces as ``WorkerLostError`` (the episode fails with that reason, and
    the executor replays it on a live worker); ``on_lost(worker)`` is told first.
    """

    _slots = iter(range(1 << 62))
    _slots_lock = threading.Lock()

    def __init__(self, worker: Any, on_lost: Callable[[Any], None]):
        with RemoteEnv._slots_lock:
            self.slot = next(RemoteEnv._slots)
        self.worker = worker
        self.on_lost = on_lost

    def _call(self, method: str, *args: Any) -> Any:
        import ray

        try:
            return ray.get(getattr(self.worker.handle, method).remote(self.slot, *args))
        except ray.exceptions.RayActorError as exc:
            self.on_lost(self.worker)
            raise WorkerLostError(f"rollout worker {self.worker.name} died ({type(exc).__name__})") from None

    def tasks(self, split: str) -> Sequence[Task]:
        raise RuntimeError("RemoteEnv plays episodes only; tasks come from the trainer's own environment")

    def reset(self, task: Task) -> Observation:
        return self._call("env_reset", task)

    def step(self, action: str) -> StepResult:
        return self._call("env_step", action)

    def close(self) -> None:
        if self.worker.alive:
            self.worker.handle.env_close.remote(self.slot)  # fire and forget
