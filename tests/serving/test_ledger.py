"""The episode token ledger: exact sampled tokens across calls, segments, breaks, retries."""

from __future__ import annotations

import pytest

from agent_lightning.serving.ledger import EpisodeLedger, LedgerError
from agent_lightning.types import Generation, Task

TASK = Task(id="t", prompt=())


def _words(messages):
    """A fake tokenizer: one id per character of each message's role and content."""
    return [ord(c) % 97 + 1 for m in messages for c in f"{m['role']}:{m.get('content') or ''}|"]


def _ledger(limit: int = 10_000) -> EpisodeLedger:
    return EpisodeLedger("ep", encode_prompt=lambda m, tools: [0, *_words(m)],
                         encode_continuation=lambda m, tools, after_stop: [98 if after_stop else 99, *_words(m)],
                         max_context_tokens=limit)


def _call(ledger, messages, ids, text, role="policy", finish="stop"):
    plan = ledger.plan(role, messages, None, 8)
    if plan.kind == "retry":
        return plan, plan.call
    reply = {"role": "assistant", "content": text}
    gen = Generation(token_ids=tuple(ids), logprobs=tuple(-0.5 for _ in ids), finish_reason=finish)
    return plan, ledger.commit(plan, gen, text, reply, {"id": ""})


def test_an_extended_conversation_reuses_the_sampled_ids_and_encodes_only_the_new_messages():
    ledger = _ledger()
    first = [{"role": "user", "content": "hi"}]
    plan1, _ = _call(ledger, first, [7, 8, 9], "yo")
    second = first + [{"role": "assistant", "content": "yo"}, {"role": "user", "content": "more"}]
    plan2, _ = _call(ledger, second, [5], "ok", finish="length")
    third = second + [{"role": "assistant", "content": "ok"}, {"role": "tool", "content": "r", "tool_call_id": "c"}]
    plan3, _ = _call(ledger, third, [4], "done")
    assert (plan1.kind, plan2.kind, plan3.kind) == ("new", "extend", "extend")
    delta2 = [98, *_words(second[2:])]  # after a stop token
    delta3 = [99, *_words(third[4:])]   # after a cut-off reply (no stop token)
    assert list(plan2.context) == [0, *_words(first), 7, 8, 9, *delta2]
    assert list(plan3.context) == list(plan2.context) + [5] + delta3
    (traj,) = ledger.trajectories(TASK, 0, 3)
    assert traj.token_ids == list(plan3.context) + [4]
    assert [t.action_token_ids for t in traj.turns] == [(7, 8, 9), (5,), (4,)]
    assert traj.policy_mask.count(True) == 5 and traj.id == "ep"
    assert ledger.metrics() == {"agent/calls": 3.0, "agent/segments": 1.0, "agent/prefix_breaks": 0.0,
                                "agent/retried_calls": 0.0}


def test_a_retried_request_is_answered_again_and_recorded_once():
    ledger = _ledger()
    msgs = [{"role": "user", "content": "hi"}]
    _, call = _call(ledger, msgs, [1, 2], "a")
    plan, again = _call(ledger, msgs, [3], "b")
    assert plan.kind == "retry" and again is call
    assert len(ledger.calls) == 1 and ledger.metrics()["agent/retried_calls"] == 1.0
    assert len(ledger.trajectories(TASK, 0, 0)[0].turns) == 1


@pytest.mark.parametrize("edit, reason", [
    (lambda m: m[:1] + [{"role": "assistant", "content": "EDITED"}] + m[2:], "assistant reply the endpoint returned was edited"),
    (lambda m: m[:2], "history dropped or summarised"),
    (lambda m: m[:1] + m[3:], "message 1 (assistant) differs"),
    (lambda m: m[:1] + [{"role": "user", "content": "summary"}], "message 1 (user) differs"),
])
def test_rewriting_history_starts_a_segment_and_counts_a_prefix_break(edit, reason):
    ledger = _ledger()
    msgs = [{"role": "user", "content": "hi"}]
    _call(ledger, msgs, [1], "a")
    msgs = msgs + [{"role": "assistant", "content": "a"}, {"role": "user", "content": "next"}]
    _call(ledger, msgs, [2], "b")
    msgs = msgs + [{"role": "assistant", "content": "b"}, {"role": "user", "content": "again"}]
    plan, _ = _call(ledger, edit(msgs), [3], "c")
    assert plan.kind == "new"
    metrics = ledger.metrics()
    assert metrics["agent/segments"] == 2.0 and metrics["agent/prefix_breaks"] == 1.0
    first, second = ledger.trajectories(TASK, 4, 0)
    assert (first.id, second.id) == ("ep#0", "ep#1")
    assert first.info["segments"] == second.info["segments"] == 2 and first.info["episode"] == "ep"
    (brk,) = first.info["breaks"]
    assert brk["call"] == 2 and brk["segment"] == 1 and reason in brk["reason"]


def test_another_conversation_is_a_segment_but_not_a_break():
    ledger = _ledger()
    _call(ledger, [{"role": "system", "content": "planner"}, {"role": "user", "content": "x"}], [1], "a")
    _call(ledger, [{"role": "system", "content": "solver"}, {"role": "user", "content": "x"}], [2], "b")
    assert ledger.metrics()["agent/segments"] == 2.0 and ledger.metrics()["agent/prefix_breaks"] == 0.0


def test_two_concurrent_calls_on_one_conversation_fork_instead_of_corrupting_it():
    ledger = _ledger()
    msgs = [{"role": "user", "content": "hi"}]
    _call(ledger, msgs, [1], "a")
    nxt = msgs + [{"role": "assistant", "content": "a"}, {"role": "user", "content": "p"}]
    other = msgs + [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]
    plan_p, plan_q = ledger.plan("policy", nxt, None, 8), ledger.plan("policy", other, None, 8)
    gen = Generation((5,), (-0.1,), "stop")
    ledger.commit(plan_p, gen, "x", {"role": "assistant", "content": "x"}, {})
    ledger.commit(plan_q, gen, "y", {"role": "assistant", "content": "y"}, {})
    first, forked = ledger.trajectories(TASK, 0, 0)
    assert first.token_ids == list(plan_p.context) + [5]
    assert forked.token_ids == list(plan_q.context) + [5] and forked.num_policy_tokens == 1
    assert "concurrent" in first.info["breaks"][0]["reason"]


def test_call_rewards_land_on_their_turns():
    ledger = _ledger()
    msgs = [{"role": "user", "content": "hi"}]
    _, c1 = _call(ledger, msgs, [1], "a")
    _, c2 = _call(ledger, msgs + [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}], [2], "b")
    ledger.set_reward(0.25, c2.id)
    ledger.set_reward(1.0)
    (traj,) = ledger.trajectories(TASK, 0, 0)
    assert [t.reward for t in traj.turns] == [0.0, 0.25]
    assert [t.info["call_reward"] for t in traj.turns] == [None, 0.25]
    assert traj.info["call_rewards"] is True and ledger.episode_reward == 1.0
    with pytest.raises(LedgerError, match="no call 'nope'"):
        ledger.set_reward(1.0, "nope")


def test_finished_episodes_and_long_contexts_are_refused():
    ledger = _ledger(limit=20)
    with pytest.raises(LedgerError, match="exceeds the context limit of 20"):
        ledger.plan("policy", [{"role": "user", "content": "a long message here"}], None, 8)
    ledger.finish()
    with pytest.raises(LedgerError, match="finished"):
        ledger.plan("policy", [{"role": "user", "content": "a"}], None, 1)
    (empty,) = ledger.trajectories(TASK, 0, 0)
    assert empty.failure and empty.turns == ()
