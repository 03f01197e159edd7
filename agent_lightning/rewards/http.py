"""``http``: score trajectories with an external scoring API.

Config::

    reward:
      name: http
      url: https://scorer.example.com/v1/score
      api_key_env: SCORER_API_KEY   # optional: the variable holding the key (never the key itself)
      header: Authorization         # the header that carries it ...
      header_prefix: "Bearer "      # ... as "<prefix><key>"
      timeout_s: 10                 # per request
      retries: 3                    # extra attempts after the first
      backoff_s: 0.5                # waits 0.5, 1, 2, ... s between attempts (capped at max_backoff_s)
      max_backoff_s: 8
      field: reward                 # the response's JSON field holding the score
      concurrency: 8                # parallel requests when scoring a step's episodes
      include_reference: true       # send task.reference (what the scorer judges against)

Each episode is one ``POST`` with a JSON body::

    {"trajectory_id": "...", "task": {"id": ..., "prompt": [messages], "reference": {...}},
     "turns": [{"action": "...", "reward": 0.0, "info": {...}}, ...],
     "final_answer": "<the last action>", "success": false, "step_rewards": [...]}

and the answer is ``{"reward": 0.75}`` (optionally ``"components": {"name": value}``). Connection
errors, timeouts, 429 and 5xx answers are retried with exponential backoff; other 4xx answers
and malformed bodies are not. When every attempt fails the reward raises, which fails that
episode only (the run goes on unless more than ``trainer.max_failure_rate`` of a step's
episodes fail). The key is read from the environment when the reward is built and never
appears in a log line or error message (they show the URL without query or credentials).
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field

from agent_lightning.config import parse_options
from agent_lightning.hookspecs import hookimpl
from agent_lightning.loop.env_threads import EnvThreadPool
from agent_lightning.types import RewardResult, Trajectory

log = logging.getLogger("agent_lightning.rewards.http")


class HttpRewardError(RuntimeError):
    """The scoring API could not score an episode (the message never holds the API key)."""


class HttpRewardOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    api_key_env: str | None = None
    header: str = "Authorization"
    header_prefix: str = "Bearer "
    timeout_s: float = Field(10.0, gt=0)
    retries: int = Field(3, ge=0)
    backoff_s: float = Field(0.5, ge=0)
    max_backoff_s: float = Field(8.0, ge=0)
    field: str = "reward"
    concurrency: int = Field(8, ge=1)
    include_reference: bool = True


def _public_url(url: str) -> str:
    """The URL without credentials, query or fragment (what messages may show)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def trajectory_payload(traj: Trajectory, *, include_reference: bool = True) -> dict[str, Any]:
    """The JSON body posted for one trajectory (see module docstring)."""
    task: dict[str, Any] = {"id": traj.task.id, "prompt": [dict(m) for m in traj.task.prompt]}
    if include_reference:
        task["reference"] = dict(traj.task.reference)
    return {
        "trajectory_id": traj.id,
        "task": task,
        "turns": [{"action": t.action, "reward": t.reward, "info": dict(t.info)} for t in traj.turns],
        "final_answer": traj.turns[-1].action if traj.turns else "",
        "success": traj.success,
        "step_rewards": traj.step_rewards,
    }


class _Retryable(Exception):
    pass


class HttpReward:
    """Callable reward posting each trajectory to ``url``; ``batch`` posts concurrently."""

    def __init__(self, options: HttpRewardOptions):
        parts = urllib.parse.urlsplit(options.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"reward.url: '{_public_url(options.url)}' is not an http(s) URL")
        self.options = options
        self.where = _public_url(options.url)
        self._key: str | None = None
        if options.api_key_env:
            key = os.environ.get(options.api_key_env)
            if not key:
                raise ValueError(f"reward.api_key_env: the environment variable {options.api_key_env} is not set")
            self._key = key

    def __repr__(self) -> str:
        return f"HttpReward(url={self.where!r})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _post(self, body: bytes) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers[self.options.header] = self.options.header_prefix + self._key
        request = urllib.request.Request(self.options.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.options.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            snippet = self._scrub(exc.read(200).decode("utf-8", "replace").strip().splitlines()[0] if exc.fp else "")
            message = f"HTTP {exc.code}" + (f": {snippet}" if snippet else "")
            if exc.code == 429 or exc.code >= 500:
                raise _Retryable(message) from None
            raise HttpRewardError(message) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            text = "timed out" if isinstance(reason, TimeoutError) or "timed out" in str(reason) else str(reason)
            raise _Retryable(f"{type(reason).__name__}: {self._scrub(text)}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise HttpRewardError("the answer is not JSON") from None

    def _value(self, answer: Any) -> float | RewardResult:
        if not isinstance(answer, dict) or self.options.field not in answer:
            raise HttpRewardError(f"the answer has no '{self.options.field}' field")
        value = answer[self.options.field]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HttpRewardError(f"'{self.options.field}' is {type(value).__name__}, not a number")
        components = answer.get("components")
        if isinstance(components, dict) and components:
            try:
                return RewardResult(components={str(k): float(v) for k, v in components.items()}, value=float(value))
            except (TypeError, ValueError):
                raise HttpRewardError("'components' must map names to numbers") from None
        return float(value)

    def __call__(self, trajectory: Trajectory) -> float | RewardResult:
        """Score one trajectory, retrying transient failures; raises ``HttpRewardError``."""
        o = self.options
        body = json.dumps(trajectory_payload(trajectory, include_reference=o.include_reference), default=str).encode()
        attempts = o.retries + 1
        for attempt in range(attempts):
            try:
                return self._value(self._post(body))
            except _Retryable as exc:
                if attempt + 1 == attempts:
                    raise HttpRewardError(f"scoring API {self.where} failed after {attempts} attempt(s): {exc}") from None
                wait = min(o.max_backoff_s, o.backoff_s * 2 ** attempt)
                log.warning("scoring API %s: %s; retrying in %.2fs (attempt %d of %d)", self.where, exc, wait, attempt + 2, attempts)
                time.sleep(wait)
            except HttpRewardError as exc:
                raise HttpRewardError(f"scoring API {self.where}: {exc}") from None
        raise AssertionError("unreachable")

    def batch(self, trajectories: Sequence[Trajectory]) -> list[Any]:
        """Score concurrently (``concurrency`` requests at a time); a failure is returned as
        its exception, in place, so that it fails that episode only."""
        if not trajectories:
            return []
        # Daemon threads, no lock taken on submit: a second Ctrl-C while scoring cannot leave the
        # process waiting on them at exit (loop/env_threads.py).
        pool = EnvThreadPool(max_workers=min(self.options.concurrency, len(trajectories)), name="http-reward")
        try:
            jobs = [pool.submit(self, traj) for traj in trajectories]
            out: list[Any] = []
            for job in jobs:
                try:
                    out.append(job.result())
                except Exception as exc:  # noqa: BLE001 - one failed request fails one episode
                    out.append(exc)
            return out
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def http_reward(**options: Any) -> HttpReward:
    """Build the ``http`` reward (options in the module docstring)."""
    return HttpReward(parse_options(HttpRewardOptions, "reward", options))


http_reward.description = "POST each trajectory to an external scoring API (key from an env var, retries, timeout)"  # type: ignore[attr-defined]


@hookimpl
def register_rewards(register):
    register("http", http_reward)
