"""Gathering concurrent endpoint requests into shared ``Backend.generate`` calls.

One thread owns the backend's sampling. Requests queue up; the thread takes the first,
waits for more (until ``max_batch``, or for ``max_wait_s`` — stretched to 5 % of the last
``generate`` call, at most 1 s: when sampling takes seconds, as a 135M model's does on a
CPU, agents' HTTP clients need tens of milliseconds to all get their next request in, and a
batch split in two costs a whole second ``generate``), and samples every compatible
request (same temperature, top-p, stop strings and role) in one ``generate`` call, with one
``torch.Generator`` per request or counter-based keys (``sampling.noise``): per-call noise,
so a call's sample does not depend on what else shares its batch. Requests asking for fewer
new tokens than the batch's longest are cut at their own ``max_new_tokens`` (``finish_reason
"length"``); log-probs of the kept tokens are unchanged, since a token's sample never depends
on later ones.
"""

from __future__ import annotations

import concurrent.futures as futures
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from agent_lightning.loop.rollout import turn_noise
from agent_lightning.types import Backend, Generation, optional


@dataclass(frozen=True)
class SamplingRequest:
    """One call's sampling: ``prompt`` ids, settings, and its ``seed`` (per-call noise)."""

    prompt: tuple[int, ...]
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    stop: tuple[str, ...] = ()
    role: str | None = None
    """An agent role: sampled with that role's adapter (``Backend.use_role``)."""

    @property
    def group_key(self) -> tuple[Any, ...]:
        return (self.temperature, self.top_p, self.stop, self.role)


@dataclass
class _Pending:
    request: SamplingRequest
    future: futures.Future = field(default_factory=futures.Future)


class GenerateBatcher:
    """Samples queued requests in shared batches on one thread.

    Args:
        backend: The policy (only this thread calls its ``generate`` while it runs).
        max_batch: Most requests per ``generate`` call.
        max_wait_s: How long the first request of a batch waits for company.
        lock: Held around each ``generate`` call (the trainer takes it to update weights).
        noise: ``sampling.noise``: a ``torch.Generator`` per request, or counter-based keys.
    """

    def __init__(self, backend: Backend, *, max_batch: int = 16, max_wait_s: float = 0.01,
                 lock: threading.Lock | None = None, noise: str = "generator"):
        self.backend = backend
        self.noise = noise
        self.max_batch = max(1, int(max_batch))
        self.max_wait_s = max(0.0, float(max_wait_s))
        self.lock = lock or threading.Lock()
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="policy-batcher", daemon=True)
        self._closed = False
        self.batches = 0
        self.requests = 0
        self._last_generate_s = 0.0
        self._thread.start()

    def submit(self, request: SamplingRequest) -> futures.Future:
        """Queue a request; the future resolves to its :class:`Generation` (or its error)."""
        if self._closed:
            raise RuntimeError("the policy endpoint's sampler is closed")
        pending = _Pending(request)
        self._queue.put(pending)
        return pending.future

    def close(self) -> None:
        """Stop the thread; queued requests fail with ``RuntimeError``."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            deadline = time.monotonic() + max(self.max_wait_s, min(1.0, 0.05 * self._last_generate_s))
            stop = False
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            groups: dict[tuple[Any, ...], list[_Pending]] = {}
            for pending in batch:
                groups.setdefault(pending.request.group_key, []).append(pending)
            for members in groups.values():
                self._run(members)
            if stop:
                break
        while True:  # fail what is left
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None and not item.future.done():
                item.future.set_exception(RuntimeError("the policy endpoint's sampler closed"))

    def _run(self, members: list[_Pending]) -> None:
        live = [m for m in members if m.future.set_running_or_notify_cancel()]
        if not live:
            return
        first = live[0].request
        longest = max(m.request.max_new_tokens for m in live)
        generators = turn_noise([m.request.seed for m in live], self.noise)
        stop_kw = {"stop": first.stop} if first.stop else {}
        started = time.monotonic()
        try:
            with self.lock:
                if first.role is not None:
                    optional(self.backend, Backend, "use_role")(first.role)
                results = self.backend.generate([list(m.request.prompt) for m in live], temperature=first.temperature,
                                                top_p=first.top_p, max_new_tokens=longest, generator=generators, **stop_kw)
        except BaseException as exc:  # noqa: BLE001 - every waiting request learns of it
            for m in live:
                m.future.set_exception(exc)
            return
        self._last_generate_s = time.monotonic() - started
        self.batches += 1
        self.requests += len(live)
        for m, gen in zip(live, results):
            m.future.set_result(_cut(gen, m.request.max_new_tokens))


def _cut(gen: Generation, limit: int) -> Generation:
    if len(gen.token_ids) <= limit:
        return gen
    return Generation(token_ids=gen.token_ids[:limit], logprobs=gen.logprobs[:limit], finish_reason="length")

