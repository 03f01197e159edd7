"""What the policy endpoint does with a request, apart from HTTP.

:class:`PolicyService` owns the run's episodes (one :class:`~agent_lightning.serving.ledger.EpisodeLedger`
each), the sampling batcher and the OpenAI response shapes. ``app.py`` maps HTTP onto it.

In training (``fixed_sampling``), every call samples at the run's temperature and top-p —
the log-probs the trainer recomputes assume them — and a client's ``temperature``/``top_p``
are ignored; ``max_tokens`` is capped at ``sampling.max_new_tokens``. Serving a trained
policy (``alightning serve``) honours the client's settings.
"""

from __future__ import annotations

import asyncio
import collections
import json
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping

from agent_lightning.loop.rollout import episode_seed
from agent_lightning.serving import messages as msgs
from agent_lightning.serving import tool_calls
from agent_lightning.serving.batching import GenerateBatcher, SamplingRequest
from agent_lightning.serving.ledger import EpisodeLedger, LedgerError
from agent_lightning.types import Backend, optional


class RequestError(ValueError):
    """A request the endpoint refuses: ``status`` (4xx), OpenAI ``type``/``code``/``param``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.type, self.code, self.param = status, type, code, param

    def body(self) -> dict[str, Any]:
        # Messages quote the client's names and values: keep them one line of sendable UTF-8
        # (a lone surrogate from a "\ud800" escape cannot be encoded, and fails the response).
        message = " ".join(_sendable(str(self)).splitlines())
        param = None if self.param is None else _sendable(self.param)
        return {"error": {"message": message, "type": self.type, "param": param, "code": self.code}}


def _sendable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class SamplingDefaults:
    """The run's sampling settings (``sampling`` section)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    max_context_tokens: int = 2048
    stop: tuple[str, ...] = ()
    noise: str = "generator"
    """``sampling.noise``: a ``torch.Generator`` per call, or counter-based keys."""

    @classmethod
    def from_config(cls, sampling: Any) -> "SamplingDefaults":
        """The settings of a ``sampling`` config section (``config.SamplingConfig``)."""
        return cls(temperature=sampling.temperature, top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens,
                   max_context_tokens=sampling.max_context_tokens, stop=tuple(sampling.stop),
                   noise=sampling.noise)


_ENCODE_CACHE, _ENCODE_CACHE_CHARS = 4096, 16 * 1024 * 1024
"""Renderings kept by :meth:`PolicyService._encoded`: at most this many, keyed by at most this
many characters of messages in all (least recently used go first)."""

_FIELDS = {"model", "messages", "tools", "tool_choice", "temperature", "top_p", "max_tokens", "max_completion_tokens",
           "stream", "stream_options", "stop", "n", "seed", "user", "parallel_tool_calls", "frequency_penalty",
           "presence_penalty", "logprobs", "top_logprobs", "metadata", "store", "response_format", "logit_bias",
           "service_tier", "reasoning_effort", "modalities", "prediction", "extra_body", "function_call", "functions"}


def _number(body: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise RequestError(400, f"{name}: must be a number from {low} to {high}, not {value!r}"[:300], param=name)
    return float(value)


class PolicyService:
    """Episodes, sampling and responses of one policy endpoint.

    Args:
        backend: The policy.
        sampling: The run's sampling settings.
        models: Model names the endpoint answers to; the first is the default.
        roles: The model names are agent roles (``agent.roles``): each samples with its adapter.
        fixed_sampling: Training: the run's temperature/top-p win over the client's.
        seed_key: Per-call noise key (``rollout.episode_seed``); ``None``: fresh noise per call.
        max_batch, max_wait_s: Batching (``batching.GenerateBatcher``).
        lock: Held around sampling (the trainer holds it while it updates weights).
    """

    def __init__(self, backend: Backend, sampling: SamplingDefaults, *, models: tuple[str, ...] = ("policy",),
                 fixed_sampling: bool = True, seed_key: str | None = None, max_batch: int = 16,
                 max_wait_s: float = 0.01, lock: threading.Lock | None = None, api_key: str | None = None,
                 roles: bool = False):
        self.backend = backend
        self.sampling = sampling
        self.models = tuple(models)
        self.roles = roles  # the model names are agent roles, each sampled with its own adapter
        self.fixed_sampling = fixed_sampling
        self.seed_key = seed_key
        self.api_key = api_key or f"al-{secrets.token_urlsafe(24)}"
        self.batcher = GenerateBatcher(backend, max_batch=max_batch, max_wait_s=max_wait_s, lock=lock,
                                       noise=sampling.noise)
        tokenizer = optional(backend, Backend, "tokenizer")
        self.tool_format = tool_calls.detect_format(getattr(tokenizer, "chat_template", None))
        self.episodes: dict[str, EpisodeLedger] = {}
        self._closed: collections.deque[str] = collections.deque(maxlen=100_000)  # recently finished: 409, not 404
        self._closed_set: set[str] = set()
        self._episodes_lock = threading.Lock()
        self._anonymous = 0
        self._encode_cache: collections.OrderedDict[str, tuple[int, ...]] = collections.OrderedDict()
        self._encode_lock = threading.Lock()
        self._encode_chars = 0

    # ------------------------------------------------------------------ episodes

    def open_episode(self, episode_id: str, seed_id: str | None = None) -> EpisodeLedger:
        """A new episode reachable at ``/rollouts/<episode_id>/v1`` (``seed_id``: see ``EpisodeLedger``)."""
        ledger = EpisodeLedger(episode_id, encode_prompt=self._encode_prompt, encode_continuation=self._encode_continuation,
                               max_context_tokens=self.sampling.max_context_tokens, seed_id=seed_id)
        with self._episodes_lock:
            if episode_id in self.episodes:
                raise ValueError(f"episode '{episode_id}' is already open")
            self.episodes[episode_id] = ledger
        return ledger

    def close_episode(self, episode_id: str) -> EpisodeLedger:
        """Finish an episode (later calls get 409) and forget it."""
        with self._episodes_lock:
            ledger = self.episodes.pop(episode_id)
            if len(self._closed) == self._closed.maxlen:
                self._closed_set.discard(self._closed[0])
            self._closed.append(episode_id)
            self._closed_set.add(episode_id)
        ledger.finish()
        return ledger

    def ledger(self, episode_id: str | None) -> EpisodeLedger:
        if episode_id is None:  # serving: every call is its own episode
            with self._episodes_lock:
                self._anonymous += 1
                name = f"serve-{self._anonymous}"
            return EpisodeLedger(name, encode_prompt=self._encode_prompt, encode_continuation=self._encode_continuation,
                                 max_context_tokens=self.sampling.max_context_tokens)
        with self._episodes_lock:
            ledger = self.episodes.get(episode_id)
            finished = ledger is None and episode_id in self._closed_set
        if finished:
            raise RequestError(409, f"episode '{episode_id[:200]}' is finished; it takes no more calls",
                               code="episode_finished")
        if ledger is None:
            raise RequestError(404, f"no episode '{episode_id[:200]}' on this endpoint", code="episode_not_found")
        return ledger

    def close(self) -> None:
        self.batcher.close()

    # ------------------------------------------------------------------ tokens

    def _encode_prompt(self, messages: list[dict], tools: list[dict] | None) -> list[int]:
        rendered = msgs.for_template(messages)
        return self._encoded(("prompt", rendered, tools or None), lambda: (
            self.backend.encode_prompt(rendered, tools=tools) if tools  # type: ignore[call-arg]
            else self.backend.encode_prompt(rendered)))

    def _encode_continuation(self, messages: list[dict], tools: list[dict] | None, after_stop: bool) -> list[int]:
        rendered = msgs.for_template(messages)
        return self._encoded(("continuation", rendered, tools or None, after_stop), lambda: (
            self.backend.encode_observation(rendered, after_stop=after_stop, tools=tools) if tools  # type: ignore[call-arg]
            else self.backend.encode_observation(rendered, after_stop=after_stop)))

    def _encoded(self, key: tuple, encode: Any) -> list[int]:
        """``encode()`` through a cache of recent renderings: agents resend the same system prompt,
        task prompt (once per group member) and tool results, and a chat template's Jinja
        rendering costs more than the rest of a call's handling together."""
        text = json.dumps(key, ensure_ascii=False, default=repr)  # key order kept: a template may iterate it
        with self._encode_lock:
            ids = self._encode_cache.get(text)
            if ids is not None:
                self._encode_cache.move_to_end(text)
                return list(ids)
        ids = tuple(encode())
        with self._encode_lock:
            if text not in self._encode_cache:
                self._encode_cache[text] = ids
                self._encode_chars += len(text)
            while len(self._encode_cache) > _ENCODE_CACHE or self._encode_chars > _ENCODE_CACHE_CHARS:
                old, _ = self._encode_cache.popitem(last=False)
                self._encode_chars -= len(old)
        return list(ids)

    # ------------------------------------------------------------------ calls

    def parse(self, body: Any) -> dict[str, Any]:
        """Validate a chat-completions body; raises :class:`RequestError` (400) naming the field."""
        if not isinstance(body, dict):
            raise RequestError(400, f"the request body must be a JSON object, not {type(body).__name__}")
        unknown = sorted(k for k in body if k not in _FIELDS)
        if unknown:
            raise RequestError(400, f"unknown field '{str(unknown[0])[:80]}' in the request body", param=str(unknown[0])[:80])
        model = body.get("model", self.models[0])
        if not isinstance(model, str) or model not in self.models:
            known = ", ".join(self.models)
            raise RequestError(404, f"model: '{str(model)[:80]}' is not served here; models: {known}", param="model",
                               code="model_not_found")
        try:
            messages = msgs.validate_messages(body.get("messages"))
            tools = tool_calls.validate_tools(body["tools"]) if body.get("tools") is not None else []
            choice = tool_calls.validate_tool_choice(body.get("tool_choice"), tools)
        except ValueError as exc:
            raise RequestError(400, str(exc)[:500]) from None
        n = body.get("n", 1)
        if n != 1:
            raise RequestError(400, f"n: only 1 choice per request is supported, not {str(n)[:40]}", param="n")
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise RequestError(400, f"max_tokens: must be a positive integer, not {str(limit)[:40]}", param="max_tokens")
        temperature = _number(body, "temperature", 0.0, 2.0)
        top_p = _number(body, "top_p", 0.0, 1.0)
        stop = body.get("stop")
        if stop is not None:
            stop = [stop] if isinstance(stop, str) else stop
            if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
                raise RequestError(400, "stop: must be a non-empty string or a list of at most 4", param="stop")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise RequestError(400, "seed: must be an integer", param="seed")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError(400, "stream: must be true or false", param="stream")
        options = body.get("stream_options") or {}
        return {"model": model, "messages": messages, "tools": tools, "tool_choice": choice, "max_tokens": limit,
                "temperature": temperature, "top_p": top_p, "stop": tuple(stop or ()), "seed": seed, "stream": stream,
                "include_usage": bool(isinstance(options, dict) and options.get("include_usage"))}

    def _sampling(self, req: Mapping[str, Any], ledger: EpisodeLedger) -> tuple[float, float, int, tuple[str, ...], int]:
        s = self.sampling
        cap = req["max_tokens"] or s.max_new_tokens
        if self.fixed_sampling:
            cap = min(cap, s.max_new_tokens)
        if self.fixed_sampling:
            temperature, top_p, stop = s.temperature, s.top_p, s.stop
        else:
            temperature = s.temperature if req["temperature"] is None else req["temperature"]
            top_p = s.top_p if req["top_p"] is None else req["top_p"]
            stop = req["stop"] or s.stop
        if self.seed_key is not None:
            seed = episode_seed(self.seed_key, ledger.seed_id, len(ledger.calls))
        elif req["seed"] is not None:
            seed = int(req["seed"]) & ((1 << 63) - 1)
        else:
            seed = secrets.randbits(63)
        return temperature, top_p, cap, tuple(stop), seed

    async def complete(self, episode_id: str | None, body: Any) -> dict[str, Any]:
        """Answer one chat-completions request: the OpenAI ``chat.completion`` object."""
        req = self.parse(body)
        ledger = self.ledger(episode_id)
        loop = asyncio.get_running_loop()
        temperature, top_p, cap, stop, seed = self._sampling(req, ledger)
        try:
            plan = await loop.run_in_executor(None, ledger.plan, req["model"], req["messages"], req["tools"] or None, cap)
        except LedgerError as exc:
            status = 409 if "finished" in str(exc) else 400
            raise RequestError(status, str(exc)[:500], code="context_length_exceeded" if "context" in str(exc) else None) from None
        if plan.kind == "retry":
            return plan.call.response
        future = self.batcher.submit(SamplingRequest(plan.context, temperature, top_p, cap, seed, stop,
                                                     role=req["model"] if self.roles else None))
        generation = await asyncio.wrap_future(future)
        text = self.backend.decode(generation.token_ids)
        parsed = tool_calls.parse_tool_calls(text, self.tool_format if req["tools"] else "none",
                                             id_prefix=f"call_{ledger.episode_id[-24:]}_{len(ledger.calls)}")
        parsed = tool_calls.apply_tool_choice(parsed, req["tool_choice"])
        reply: dict[str, Any] = {"role": "assistant", "content": parsed.content if parsed.tool_calls else text}
        finish = "length" if generation.finish_reason == "length" else "stop"
        if parsed.tool_calls:
            reply["tool_calls"] = [dict(c) for c in parsed.tool_calls]
            finish = "tool_calls"
        response = {
            "id": "", "object": "chat.completion", "created": int(time.time()), "model": req["model"],
            "choices": [{"index": 0, "message": reply, "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": len(plan.context), "completion_tokens": len(generation.token_ids),
                      "total_tokens": len(plan.context) + len(generation.token_ids)},
            "system_fingerprint": f"policy-v{int(getattr(self.backend, 'version', 0))}",
        }
        try:
            ledger.commit(plan, generation, text, reply, response)
        except LedgerError as exc:
            raise RequestError(409, str(exc)[:500]) from None
        return response

    def reward(self, episode_id: str, body: Any) -> dict[str, Any]:
        """``{"reward": float, "call_id"?: str}``: a reward for a call, or the episode."""
        ledger = self.ledger(episode_id)
        if not isinstance(body, dict) or set(body) - {"reward", "call_id"} or "reward" not in body:
            raise RequestError(400, 'the body must be {"reward": <number>, "call_id": <optional call id>}')
        value, call_id = body["reward"], body.get("call_id")
        # A range check, not float(): an integer past the float range (1 followed by 400 zeros) overflows it.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -sys.float_info.max <= value <= sys.float_info.max:
            raise RequestError(400, f"reward: must be a finite number, not {str(value)[:40]}", param="reward")
        if call_id is not None and not isinstance(call_id, str):
            raise RequestError(400, "call_id: must be a string (the id of a chat completion)", param="call_id")
        try:
            ledger.set_reward(float(value), call_id)
        except LedgerError as exc:
            raise RequestError(404, str(exc)[:300], param="call_id") from None
        return {"ok": True}


def stream_chunks(response: Mapping[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """A finished ``chat.completion`` as ``chat.completion.chunk`` objects (server-sent events):
    the role, the content in pieces, each tool call, then the finish reason (and usage)."""
    base = {"id": response["id"], "object": "chat.completion.chunk", "created": response["created"],
            "model": response["model"], "system_fingerprint": response.get("system_fingerprint")}
    choice = response["choices"][0]
    message = choice["message"]
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    content = message.get("content") or ""
    for start in range(0, len(content), 16):
        chunks.append({**base, "choices": [{"index": 0, "delta": {"content": content[start:start + 16]}, "finish_reason": None}]})
    for i, call in enumerate(message.get("tool_calls") or []):
        delta = {"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                 "function": {"name": call["function"]["name"], "arguments": call["function"]["arguments"]}}]}
        chunks.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]})
    if include_usage:
        chunks.append({**base, "choices": [], "usage": response["usage"]})
    return chunks
