"""The default executor: ``rollout.play`` in the trainer's own process."""

from __future__ import annotations

import concurrent.futures as futures
from typing import Sequence

from agent_lightning.config import SamplingConfig
from agent_lightning.loop.rollout import EnvPool, play
from agent_lightning.types import Backend, Task, Trajectory


class InProcessExecutor:
    """One batched ``generate`` per turn on the trainer's backend; environment steps in the
    trainer's thread pool. Owns nothing: the trainer closes the pool and the threads."""

    name = "inprocess"

    def __init__(self, *, backend: Backend, envs: EnvPool, threads: futures.Executor,
                 sampling: SamplingConfig, step_timeout_s: float):
        self.backend = backend
        self.envs = envs
        self.threads = threads
        self.sampling = sampling
        self.step_timeout_s = step_timeout_s

    def play(self, jobs: Sequence[tuple[str, Task, int]], *, temperature: float, seed: str | int) -> list[Trajectory]:
        return play(self.backend, self.envs, jobs, sampling=self.sampling, temperature=temperature,
                    step_timeout_s=self.step_timeout_s, policy_version=int(getattr(self.backend, "version", 0)),
                    executor=self.threads, seed=seed)

    def metrics(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        return None
