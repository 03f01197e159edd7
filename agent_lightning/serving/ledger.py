"""The token ledger of one episode: exact sampled tokens across an agent's calls.

An agent sends its whole conversation on every call. A call whose messages are an earlier
call's messages plus the reply it got (:func:`messages.same_message`) plus new messages
*extends* that conversation: its context is the earlier context, the sampled ids, and the
chat template's delta for the new messages only — the reply is never re-tokenized, so the
tokens trained on are the tokens sampled. Anything else (a summary, a dropped tool output,
an edited reply, another role's conversation) starts a new *segment*: a fresh prompt. A
segment becomes one ``Trajectory`` at the end of the episode.

* A call with the same messages as a call already answered (a client retry) gets that
  answer again and is recorded once (``retried_calls``).
* A new segment whose first message opens an existing conversation of the same role is a
  *prefix break* (history rewritten), counted and explained in ``breaks``; a conversation
  that opens differently (a sub-agent, another role) is just another segment.

Thread-safety: :meth:`EpisodeLedger.plan` and :meth:`EpisodeLedger.commit` take the
ledger's lock; sampling happens between them, outside it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from agent_lightning.serving.messages import same_message
from agent_lightning.types import Generation, Task, Trajectory, Turn


class LedgerError(ValueError):
    """A call the episode cannot take (finished episode, context too long, unencodable messages)."""


@dataclass
class _TurnRecord:
    call_id: str
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    observation_ids: tuple[int, ...] = ()


@dataclass
class Segment:
    """One token stream of an episode: a prompt and the calls that extended it."""

    index: int
    role: str
    tools_key: str
    prompt_ids: list[int]
    messages: list[dict] = field(default_factory=list)
    """The conversation as the client holds it after the segment's latest call (request + reply)."""
    context: list[int] = field(default_factory=list)
    turns: list[_TurnRecord] = field(default_factory=list)
    last_finish: str = "stop"
    started_by: str | None = None
    """Why the segment exists, when it broke an existing conversation (else ``None``)."""


@dataclass
class Call:
    """One answered call."""

    id: str
    index: int
    role: str
    segment: int
    response: dict[str, Any]
    reward: float | None = None


@dataclass(frozen=True)
class Plan:
    """What :meth:`EpisodeLedger.plan` decided for a request.

    ``kind``: ``"retry"`` (``call`` holds the earlier answer), ``"extend"`` (``segment``
    extended by ``observation_ids``) or ``"new"`` (a new segment with ``context`` as prompt).
    ``context``: the ids to sample from.
    """

    kind: str
    role: str
    request_key: str
    context: tuple[int, ...] = ()
    segment: int = -1
    expected_turns: int = 0
    observation_ids: tuple[int, ...] = ()
    messages: tuple[dict, ...] = ()
    tools_key: str = ""
    reason: str | None = None
    call: Call | None = None


def request_key(role: str, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None) -> str:
    """A digest of what makes two requests the same call (role, messages, tools)."""
    data = json.dumps([role, list(messages), list(tools or [])], sort_keys=True, ensure_ascii=False)
    return hashlib.blake2b(data.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _tools_key(tools: Sequence[Mapping[str, Any]] | None) -> str:
    return json.dumps(list(tools or []), sort_keys=True, ensure_ascii=False)


def _extends(held: Sequence[dict], messages: Sequence[dict]) -> bool:
    """Whether ``messages`` starts with the conversation ``held`` (its last message is our
    reply, compared with :func:`same_message`) and adds at least one message."""
    if len(messages) <= len(held):
        return False
    for i, (ours, theirs) in enumerate(zip(held, messages)):
        if i == len(held) - 1:
            if not same_message(ours, theirs):
                return False
        elif ours != theirs:
            return False
    return True


def _divergence(held: Sequence[dict], messages: Sequence[dict]) -> str:
    """Where ``messages`` departs from the conversation ``held`` (for the break record)."""
    for i, (ours, theirs) in enumerate(zip(held, messages)):
        same = same_message(ours, theirs) if ours.get("role") == "assistant" else ours == theirs
        if not same:
            edited = ours.get("role") == "assistant" == theirs.get("role")
            what = "an assistant reply the endpoint returned was edited" if edited else "it was changed"
            return f"message {i} ({theirs.get('role', '?')}) differs from the conversation held: {what}"
    if len(messages) <= len(held):
        return f"{len(messages)} messages sent where the conversation already holds {len(held)} (history dropped or summarised)"
    return "the conversation was not extended"


class EpisodeLedger:
    """The calls and token streams of one episode.

    Args:
        episode_id: The episode's id (its URL part).
        encode_prompt: ``(messages, tools) -> ids`` of a fresh prompt.
        encode_continuation: ``(new messages, tools, after_stop) -> ids`` appended after a reply.
        max_context_tokens: Longest context a call may sample from (prompt + new tokens).
        seed_id: Keys the per-call sampling noise (default ``episode_id``): the trainer passes the
            job's episode id, so that an agent episode samples what the same episode played
            through an environment would.
    """

    def __init__(self, episode_id: str, *, encode_prompt: Callable[[list[dict], list[dict] | None], list[int]],
                 encode_continuation: Callable[[list[dict], list[dict] | None, bool], list[int]],
                 max_context_tokens: int, seed_id: str | None = None):
        self.episode_id = episode_id
        self.seed_id = episode_id if seed_id is None else seed_id
        """The episode id the sampling noise is keyed by (``rollout.episode_seed``)."""
        self._encode_prompt = encode_prompt
        self._encode_continuation = encode_continuation
        self.max_context_tokens = max_context_tokens
        self.segments: list[Segment] = []
        self.calls: list[Call] = []
        self._answered: dict[str, Call] = {}
        self.breaks: list[dict[str, Any]] = []
        self.retried_calls = 0
        self.episode_reward: float | None = None
        self.finished = False
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ calls

    def plan(self, role: str, messages: list[dict], tools: list[dict] | None, max_new_tokens: int) -> Plan:
        """Decide how to answer a request (see the module docstring). Raises
        :class:`LedgerError` for a finished episode, unencodable messages or a context longer
        than ``max_context_tokens``."""
        key = request_key(role, messages, tools)
        tkey = _tools_key(tools)
        with self.lock:
            if self.finished:
                raise LedgerError(f"episode '{self.episode_id}' is finished; it takes no more calls")
            if key in self._answered:
                self.retried_calls += 1
                return Plan("retry", role, key, call=self._answered[key])
            candidates = [s for s in self.segments if s.role == role and s.tools_key == tkey and s.messages
                          and _extends(s.messages, messages)]
            best = max(candidates, key=lambda s: len(s.messages), default=None)
            if best is not None:
                new = messages[len(best.messages):]
                try:
                    obs = self._encode_continuation(new, tools, best.last_finish == "stop")
                except Exception as exc:  # noqa: BLE001 - a template that cannot render the new messages
                    raise LedgerError(f"messages could not be rendered with the chat template: {type(exc).__name__}: {exc}") from None
                context = tuple(best.context) + tuple(obs)
                plan = Plan("extend", role, key, context=context, segment=best.index, expected_turns=len(best.turns),
                            observation_ids=tuple(obs), messages=tuple(messages), tools_key=tkey)
            else:
                try:
                    prompt = self._encode_prompt(messages, tools)
                except Exception as exc:  # noqa: BLE001
                    raise LedgerError(f"messages could not be rendered with the chat template: {type(exc).__name__}: {exc}") from None
                reason = None
                opened = [s for s in self.segments if s.role == role and s.messages and s.messages[0] == messages[0]]
                if opened:
                    held = max(opened, key=lambda s: len(s.messages))
                    reason = _divergence(held.messages, messages) if held.tools_key == tkey else "the tool list changed"
                plan = Plan("new", role, key, context=tuple(prompt), messages=tuple(messages), tools_key=tkey, reason=reason)
        if len(plan.context) + max_new_tokens > self.max_context_tokens:
            raise LedgerError(f"the conversation is {len(plan.context)} tokens; with max_tokens={max_new_tokens} it "
                              f"exceeds the context limit of {self.max_context_tokens} tokens")
        return plan

    def commit(self, plan: Plan, generation: Generation, text: str, reply: dict, response: dict) -> Call:
        """Record an answered ``plan`` (``plan.kind != "retry"``): the sampled ``generation``,
        its decoded ``text``, the assistant message ``reply`` returned and the whole ``response``."""
        with self.lock:
            if self.finished:
                raise LedgerError(f"episode '{self.episode_id}' finished while the call was sampling")
            if plan.kind == "extend":
                segment = self.segments[plan.segment]
                if len(segment.turns) != plan.expected_turns:  # two concurrent calls on one conversation
                    segment = self._new_segment(plan, "a concurrent call extended the same conversation first",
                                                prompt=list(plan.context))
                else:
                    segment.turns[-1].observation_ids = plan.observation_ids
                    segment.context = list(plan.context)
            else:
                segment = self._new_segment(plan, plan.reason, prompt=list(plan.context))
            call = Call(id=f"chatcmpl-{self.episode_id}-{len(self.calls)}", index=len(self.calls), role=plan.role,
                        segment=segment.index, response=response)
            response["id"] = call.id
            segment.turns.append(_TurnRecord(call.id, text, generation.token_ids, generation.logprobs))
            segment.context.extend(generation.token_ids)
            segment.messages = list(plan.messages) + [reply]
            segment.last_finish = generation.finish_reason
            self.calls.append(call)
            self._answered[plan.request_key] = call
            return call

    def _new_segment(self, plan: Plan, reason: str | None, *, prompt: list[int]) -> Segment:
        segment = Segment(index=len(self.segments), role=plan.role, tools_key=plan.tools_key, prompt_ids=prompt,
                          context=list(prompt), started_by=reason)
        self.segments.append(segment)
        if reason is not None:
            self.breaks.append({"call": len(self.calls), "segment": segment.index, "role": plan.role, "reason": reason})
        return segment

    # ------------------------------------------------------------------ rewards and the end

    def set_reward(self, value: float, call_id: str | None = None) -> None:
        """A reward for one call (``call_id``) or for the whole episode."""
        with self.lock:
            if call_id is None:
                self.episode_reward = float(value)
                return
            for call in self.calls:
                if call.id == call_id:
                    call.reward = float(value)
                    return
        raise LedgerError(f"episode '{self.episode_id}' has no call '{call_id}'")

    def finish(self) -> None:
        """No more calls: later requests are refused."""
        with self.lock:
            self.finished = True

    def metrics(self) -> dict[str, float]:
        """``agent/calls``, ``agent/segments``, ``agent/prefix_breaks``, ``agent/retried_calls``."""
        return {"agent/calls": float(len(self.calls)), "agent/segments": float(len(self.segments)),
                "agent/prefix_breaks": float(sum(1 for b in self.breaks if b["reason"] is not None)),
                "agent/retried_calls": float(self.retried_calls)}

    def trajectories(self, task: Task, group: int, policy_version: int, *, failure: str | None = None,
                     info: Mapping[str, Any] | None = None) -> list[Trajectory]:
        """One trajectory per segment with calls (ids ``<episode>`` or ``<episode>#<k>``).

        Each carries ``info``: ``episode``, ``segment``, ``segments`` (the episode's count, which
        the algorithms use to weigh a segmented episode like one), ``role``, ``call_rewards``
        (whether any call got its own reward; ``Turn.reward`` then holds it, the episode
        reward otherwise sits in ``final_reward``), and ``breaks`` on the first segment. An
        episode with no call yields one empty trajectory (so that its failure is counted).
        """
        with self.lock:
            kept = [s for s in self.segments if s.turns]
            rewards = {c.id: c.reward for c in self.calls}
            per_call = any(r is not None for r in rewards.values())
            out = []
            for k, seg in enumerate(kept):
                turns = tuple(Turn(action=t.text, action_token_ids=t.token_ids, action_logprobs=t.logprobs,
                                   observation_token_ids=t.observation_ids if i < len(seg.turns) - 1 else (),
                                   reward=float(rewards.get(t.call_id) or 0.0),
                                   info={"call_id": t.call_id, "role": seg.role,
                                         "call_reward": rewards.get(t.call_id)})
                              for i, t in enumerate(seg.turns))
                meta = {**dict(info or {}), "episode": self.episode_id, "segment": k, "segments": len(kept),
                        "role": seg.role, "call_rewards": per_call}
                if k == 0:
                    meta["breaks"] = list(self.breaks)
                    meta["calls"] = len(self.calls)
                    meta["retried_calls"] = self.retried_calls
                tid = self.episode_id if len(kept) == 1 else f"{self.episode_id}#{k}"
                out.append(Trajectory(id=tid, task=task, group=group, prompt_token_ids=tuple(seg.prompt_ids),
                                      turns=turns, failure=failure, policy_version=policy_version, info=meta))
            if not out:
                out.append(Trajectory(id=self.episode_id, task=task, group=group, prompt_token_ids=(), turns=(),
                                      failure=failure or "the agent made no call to the policy endpoint",
                                      policy_version=policy_version,
                                      info={**dict(info or {}), "episode": self.episode_id, "segment": 0, "segments": 1,
                                            "role": "", "call_rewards": False, "breaks": [], "calls": 0}))
            return out
