"""Exact tokens across calls on the real chat templates of five families.

An agent sends its whole conversation each call; the ledger extends the previous context
with the *sampled* ids and the template's delta for the new messages only. For templates
that render a conversation the same way at every turn, the context the policy sees at each
call is then exactly the template's own rendering of the conversation (no drift); for a
template that rewrites earlier turns (Qwen3 drops the reasoning of earlier assistant turns)
the context keeps what the policy really wrote — and the conversation is still one segment,
so nothing is re-tokenized or counted as a break.
"""

from __future__ import annotations

import pytest

from agent_lightning.backends.transformers.chat_tokens import ChatTokens
from agent_lightning.serving.ledger import EpisodeLedger
from agent_lightning.serving.messages import for_template
from agent_lightning.types import Generation, Task

from templates import TEMPLATE_NAMES, needs_smollm2, tokenizer_with_template  # noqa: E402

pytestmark = needs_smollm2

REWRITING = {"qwen3"}
REPLIES = ["<think>\nTwo and two.\n</think>\n\nIt is 4.", "Then 8, since 4 times 2 is 8.", "Done: 8."]


def _ledger(chat: ChatTokens, tools=None) -> EpisodeLedger:
    return EpisodeLedger("ep", encode_prompt=lambda m, t: chat.prompt(for_template(m), t),
                         encode_continuation=lambda m, t, stop: chat.observation(for_template(m), after_stop=stop, tools=t),
                         max_context_tokens=100_000)


def _sample(tokenizer, chat: ChatTokens, text: str) -> tuple[Generation, str]:
    """``text`` as sampled ids, ending with the stop token when the stand-in tokenizer has the
    template's end-of-turn token (SmolLM2's ``<|im_end|>`` for ChatML templates); otherwise
    the reply is cut off (``length``) and the template's end-of-turn text comes with the delta."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    stop = chat.stop_token_ids()[-1]
    closes_turn = chat._probe(None)[1].lstrip().startswith(tokenizer.decode([stop]))
    ids = ids + [stop] if closes_turn else ids
    decoded = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return Generation(tuple(ids), tuple(-0.5 for _ in ids), "stop" if closes_turn else "length"), decoded


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_a_three_call_conversation_is_one_segment_with_the_sampled_ids(name):
    tokenizer = tokenizer_with_template(name)
    chat = ChatTokens(tokenizer)
    ledger = _ledger(chat)
    first_user = "What is 2+2?" if name != "mistral" else "Be brief. What is 2+2?"
    messages = ([{"role": "system", "content": "You are a calculator."}] if name != "mistral" else []) + \
               [{"role": "user", "content": first_user}]
    contexts, sampled = [], []
    for turn, reply_text in enumerate(REPLIES):
        plan = ledger.plan("policy", messages, None, 16)
        gen, text = _sample(tokenizer, chat, reply_text)
        reply = {"role": "assistant", "content": text}
        ledger.commit(plan, gen, text, reply, {"id": ""})
        contexts.append(list(plan.context))
        sampled.append(list(gen.token_ids))
        if name not in REWRITING:
            # No drift: the context is the template's own rendering of the conversation so far.
            rendered = tokenizer.apply_chat_template(for_template(messages), tokenize=False, add_generation_prompt=True)
            assert tokenizer.decode(plan.context) == rendered, f"{name}: call {turn} context drifted from the template"
        messages = messages + [reply, {"role": "user", "content": f"And times {turn + 2}?"}]
    # Each call's context starts with the previous context and exactly the ids sampled there.
    for before, ids, after in zip(contexts, sampled, contexts[1:]):
        assert after[: len(before) + len(ids)] == before + ids
    (traj,) = ledger.trajectories(Task(id="t", prompt=()), 0, 0)
    assert ledger.metrics()["agent/prefix_breaks"] == 0 and ledger.metrics()["agent/segments"] == 1
    assert [list(t.action_token_ids) for t in traj.turns] == sampled
    assert traj.token_ids == contexts[-1] + sampled[-1]


def test_qwen3_rewrites_earlier_turns_but_the_ledger_keeps_what_was_sampled():
    tokenizer = tokenizer_with_template("qwen3")
    chat = ChatTokens(tokenizer)
    ledger = _ledger(chat)
    messages = [{"role": "user", "content": "What is 2+2?"}]
    plan = ledger.plan("policy", messages, None, 16)
    gen, text = _sample(tokenizer, chat, REPLIES[0])
    ledger.commit(plan, gen, text, {"role": "assistant", "content": text}, {"id": ""})
    messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "Sure?"}]
    plan = ledger.plan("policy", messages, None, 16)
    rerendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ours = tokenizer.decode(plan.context)
    assert "Two and two." not in rerendered  # the template drops the earlier reasoning...
    assert "<think>\nTwo and two.\n</think>" in ours  # ...the stream keeps the sampled tokens
    assert plan.kind == "extend" and ours.endswith("<|im_start|>user\nSure?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("name", ["qwen2_5", "qwen3", "llama3_1"])
def test_tool_results_extend_the_segment_with_the_template_delta(name):
    tokenizer = tokenizer_with_template(name)
    chat = ChatTokens(tokenizer)
    ledger = _ledger(chat)
    tools = [{"type": "function", "function": {"name": "add", "description": "add two numbers",
                                               "parameters": {"type": "object", "properties": {"a": {"type": "number"},
                                                                                              "b": {"type": "number"}}}}}]
    messages = [{"role": "user", "content": "Add 2 and 3."}]
    plan = ledger.plan("policy", messages, tools, 32)
    assert '"add"' in tokenizer.decode(plan.context)  # the tools are rendered into the prompt
    call_text = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    gen, text = _sample(tokenizer, chat, call_text)
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
    reply = {"role": "assistant", "content": None, "tool_calls": [call]}
    ledger.commit(plan, gen, text, reply, {"id": ""})
    # The client sends the call back with re-serialised arguments, then the tool's result.
    echoed = {"role": "assistant", "content": None,
              "tool_calls": [{**call, "function": {"name": "add", "arguments": '{"a":2,"b":3}'}}]}
    messages += [echoed, {"role": "tool", "tool_call_id": "call_1", "content": "5"}]
    plan2 = ledger.plan("policy", messages, tools, 32)
    assert plan2.kind == "extend" and plan2.context[: len(plan.context) + len(gen.token_ids)] == plan.context + gen.token_ids
    assert "5" in tokenizer.decode(plan2.observation_ids)
