"""Playing agent episodes through the policy endpoint (a rollout executor).

Per step: every job ``(episode id, task, group)`` opens an episode on the endpoint and runs
the agent on its own thread (at most ``agent.concurrency`` at once) with the episode's base
URL; the calls it makes are sampled in shared batches and recorded by the episode's
ledger. When the agent returns (or fails, or runs past ``agent.timeout_s``) the episode is
closed — later calls get 409 — and its segments become trajectories. A failing agent fails
its episode only; the run goes on.
"""

from __future__ import annotations

import concurrent.futures as futures
import re
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Sequence

from agent_lightning.agents.llm import LLM
from agent_lightning.agents.results import InvalidResult, run_agent
from agent_lightning.agents.tasks import task_payload
from agent_lightning.serving.server import PolicyServer
from agent_lightning.serving.service import PolicyService, SamplingDefaults
from agent_lightning.types import Task, Trajectory


def _url_safe(episode_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._~-]", "_", episode_id)


class AgentExecutor:
    """Runs agents against a policy endpoint it starts on 127.0.0.1 (see the module docstring).

    Args:
        solve: The agent (``solve(task, llm)``, sync or async).
        backend: The policy.
        sampling: The run's ``sampling`` section.
        concurrency, timeout_s, max_batch, batch_wait_s, max_body_bytes, success_reward:
            the ``agent`` section's settings.
        models: The model names agents may ask for (the roles, with ``roles``).
        roles: Each model name is an agent role sampled with its own adapter.
        processes: Run the agents in these worker processes (``agent.workers``) instead of
            threads of this process; ``solve`` is then only the in-process copy that
            validated the config.
    """

    name = "agent"

    def __init__(self, solve: Callable[..., Any], *, backend: Any, sampling: Any, concurrency: int = 16,
                 timeout_s: float = 300.0, max_batch: int = 16, batch_wait_s: float = 0.01,
                 max_body_bytes: int = 4 * 1024 * 1024, success_reward: float = 1.0, models: Sequence[str] = ("policy",),
                 roles: bool = False, policy_lock: threading.Lock | None = None, processes: Any = None):
        self.solve = solve
        self.processes = processes
        self.backend = backend
        self.concurrency = max(1, concurrency)
        self.timeout_s = timeout_s
        self.success_reward = success_reward
        self.defaults = SamplingDefaults.from_config(sampling)
        self.service = PolicyService(backend, self.defaults, models=tuple(models), fixed_sampling=True,
                                     max_batch=max_batch, max_wait_s=batch_wait_s, lock=policy_lock, roles=roles)
        self.server = PolicyServer(self.service, max_body_bytes=max_body_bytes).start()
        self._counts: dict[str, float] = {}
        self._counts_lock = threading.Lock()

    # ------------------------------------------------------------------ RolloutExecutor

    def play(self, jobs: Sequence[tuple[str, Task, int]], *, temperature: float, seed: str | int) -> list[Trajectory]:
        """One agent episode per job; trajectories in job order (several per segmented episode)."""
        self.service.sampling = replace(self.defaults, temperature=temperature)
        self.service.seed_key = str(seed)
        slots = threading.BoundedSemaphore(self.concurrency)
        results: list[list[Trajectory] | None] = [None] * len(jobs)
        threads = []
        for index, job in enumerate(jobs):
            slots.acquire()
            thread = threading.Thread(target=self._episode, args=(index, job, results, slots), daemon=True,
                                      name=f"agent-{index}")
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()
        out: list[Trajectory] = []
        for trajs in results:
            out.extend(trajs or [])
        return out

    def metrics(self) -> dict[str, float]:
        """``agent/calls``, ``agent/segments``, ``agent/prefix_breaks``, ``agent/retried_calls``
        (totals since the last call) and ``agent/batch_size`` (mean requests per generate call)."""
        with self._counts_lock:
            counts, self._counts = self._counts, {}
        batches, requests = self.service.batcher.batches, self.service.batcher.requests
        self.service.batcher.batches = self.service.batcher.requests = 0
        if batches:
            counts["agent/batch_size"] = requests / batches
        return counts

    def close(self) -> None:
        self.server.stop()
        if self.processes is not None:
            self.processes.close()

    # ------------------------------------------------------------------ one episode

    def _episode(self, index: int, job: tuple[str, Task, int], results: list, slots: threading.BoundedSemaphore) -> None:
        episode_id, task, group = job
        key = f"{index}-{_url_safe(episode_id)}"  # unique: a step may deal one task twice
        try:
            ledger = self.service.open_episode(key, seed_id=episode_id)
            llm = LLM(base_url=self.server.base_url(key), api_key=self.service.api_key, model=self.service.models[0],
                      episode_id=key)
            started = time.monotonic()
            future = self._start(task_payload(task), llm, index)
            futures.wait([future], timeout=self.timeout_s)
            failure = None
            info: dict[str, Any] = {}
            if not future.done():
                failure = f"agent timed out after {self.timeout_s:g} s"
            elif isinstance(future.exception(), InvalidResult):
                failure = str(future.exception())
            elif future.exception() is not None:
                exc = future.exception()
                kind = getattr(exc, "kind", type(exc).__name__)  # a worker process's error names the agent's type
                failure = f"agent raised {kind}: {str(exc).splitlines()[0][:300] if str(exc) else ''}".rstrip(": ")
            else:
                info = future.result()
            self.service.close_episode(key)
            if failure is None and "agent_reward" not in info and ledger.episode_reward is not None:
                info["agent_reward"] = ledger.episode_reward
            success = info.pop("success", None)
            if success is None:
                success = info.get("agent_reward", float("-inf")) >= self.success_reward
            info["agent_time_s"] = time.monotonic() - started
            trajs = ledger.trajectories(task, group, int(getattr(self.backend, "version", 0)), failure=failure, info=info)
            results[index] = [replace(t, id=episode_id + t.id[len(key):], success=bool(success) and failure is None)
                              for t in trajs]
            with self._counts_lock:
                for name, value in ledger.metrics().items():
                    self._counts[name] = self._counts.get(name, 0.0) + value
        except Exception as exc:  # noqa: BLE001 - e.g. an episode id already open: this episode fails
            results[index] = [Trajectory(id=episode_id, task=task, group=group, prompt_token_ids=(), turns=(),
                                         failure=f"episode could not run: {type(exc).__name__}: {exc}",
                                         info={"episode": key, "segment": 0, "segments": 1})]
        finally:
            slots.release()

    def _start(self, payload: dict, llm: LLM, index: int) -> futures.Future:
        """Run the agent on one task, in a worker process or on a thread of this one: a future
        of its result as trajectory info (``results.run_agent``)."""
        future: futures.Future = futures.Future()
        if self.processes is None:
            threading.Thread(target=self._call_agent, args=(payload, llm, future), daemon=True,
                             name=f"agent-{index}-solve").start()
            return future
        try:
            return self.processes.submit(payload, llm)
        except Exception as exc:  # noqa: BLE001 - e.g. a worker that cannot be restarted: this episode fails
            future.set_exception(exc)
            return future

    def _call_agent(self, payload: dict, llm: LLM, future: futures.Future) -> None:
        try:
            future.set_result(run_agent(self.solve, payload, llm))
        except BaseException as exc:  # noqa: BLE001 - the agent's failure fails its episode only
            future.set_exception(exc)
