"""The thread pool that runs environment calls (``reset``/``step``) beside the rollout loop.

A ``concurrent.futures.Executor`` like ``ThreadPoolExecutor``, with two differences that
matter for a training run's exit:

* **Daemon threads.** Python joins a ``ThreadPoolExecutor``'s threads at exit. An
  environment step that never returns (it hung past ``trainer.step_timeout_s``, so its
  episode already failed) would then keep the finished process alive for ever. Here the
  process exits; the stuck call is abandoned with it.
* **No Python-level lock on the submitting side.** A second Ctrl-C raises
  ``KeyboardInterrupt`` wherever the main thread is. ``ThreadPoolExecutor.submit`` takes its
  idle semaphore's lock inside ``Condition.__enter__`` (Python code): an interrupt landing
  between the acquire and the ``with`` block leaves that lock held, every worker blocks on it
  when its call returns, and the exit join waits for ever (seen: ``alightning run`` hung after
  "interrupted"). ``submit`` here is one ``SimpleQueue.put`` (C) plus, for the first
  ``max_workers`` calls, starting a thread.

``shutdown(cancel_futures=True)`` cancels the calls not yet started; with ``wait=False`` it
returns at once, and a thread still inside a call leaves when that call returns (or with
the process).
"""

from __future__ import annotations

import queue
import threading
from concurrent import futures
from typing import Any, Callable

_STOP = None  # the sentinel a worker exits on


class EnvThreadPool(futures.Executor):
    """Up to ``max_workers`` daemon threads named ``{name}_{i}``, started as calls arrive."""

    def __init__(self, max_workers: int, name: str = "env"):
        if max_workers < 1:
            raise ValueError(f"EnvThreadPool: max_workers must be >= 1 (got {max_workers})")
        self.max_workers = max_workers
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._shut = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future:
        """Queue ``fn(*args, **kwargs)``; its future holds the result or the exception."""
        if self._shut:
            raise RuntimeError(f"EnvThreadPool {self.name!r}: cannot submit after shutdown")
        future: futures.Future = futures.Future()
        self._queue.put((future, fn, args, kwargs))
        if len(self._threads) < self.max_workers:
            thread = threading.Thread(target=self._work, name=f"{self.name}_{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return future

    def _work(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            future, fn, args, kwargs = item
            del item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(exc)
                del exc  # no frame -> exception -> frame cycle kept alive in this loop
            else:
                future.set_result(result)
            del future, fn, args, kwargs

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking calls; cancel those not started (``cancel_futures``); join the threads
        (``wait``). Idempotent."""
        self._shut = True
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    item[0].cancel()
        for _ in self._threads:
            self._queue.put(_STOP)
        if wait:
            for thread in self._threads:
                thread.join()
