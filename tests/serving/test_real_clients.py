"""The policy endpoint driven by the clients agents really use: the ``openai`` SDK (sync, async,
streaming, tools, errors), LangChain's ``ChatOpenAI`` in a tool-calling agent, the OpenAI Agents
SDK, and training runs whose agents talk through the ``openai`` SDK and LangChain.

Each test starts a real endpoint (uvicorn on 127.0.0.1) and checks what the endpoint recorded
against the backend's own encoding: the token stream of an episode is the prompt's ids, the
sampled ids and the chat template's delta for each new message, nothing re-tokenised. The tiny
test model cannot write tool calls; the tool tests answer from a script (``scripted.py``) on
SmolLM2's real BPE tokenizer with Qwen2.5's chat template.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from scripted import load_scripted_backend
from templates import needs_smollm2

from agent_lightning.serving.messages import for_template, validate_messages
from agent_lightning.serving.server import PolicyServer
from agent_lightning.serving.service import PolicyService, SamplingDefaults
from agent_lightning.serving.tool_calls import validate_tools
from agent_lightning.types import Task

TASK = Task(id="t", prompt=(), reference={})
QUESTION = {"role": "user", "content": "guess my number between 1 and 6 ."}

CALCULATOR = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}
TOOL_CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2 + 2"}}\n</tool_call>'
BAD_TOOL_CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": 2 + 2}}\n</tool_call>'
ANSWER = "2 + 2 = 4."


@pytest.fixture(autouse=True)
def _no_tracing(monkeypatch):
    """No network beyond 127.0.0.1: LangSmith and the Agents SDK must not try to upload traces."""
    monkeypatch.setenv("LANGCHAIN_TRACING_V2", "false")
    monkeypatch.setenv("LANGSMITH_TRACING", "false")
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")


@pytest.fixture(scope="module")
def tiny():
    """The tiny random-init model (word-level tokenizer): real sampling, no tool calls."""
    from agent_lightning.backends.transformers.backend import TransformersBackend
    from agent_lightning.config import BackendConfig, ModelConfig

    return TransformersBackend(ModelConfig(preset="tiny", preset_options={"hidden_size": 32, "num_layers": 1,
                                                                          "num_heads": 2}),
                               BackendConfig(device="cpu"), seed=0)


@pytest.fixture(scope="module")
def scripted():
    """SmolLM2 (GGUF) with Qwen2.5's template, answering from a script (set per test)."""
    return load_scripted_backend("qwen2_5")


def calculator_script(prompt: str, name: str = "calculator", call: str = TOOL_CALL) -> str:
    """A tool call while the conversation holds no tool result, then the answer."""
    if "<tool_response>" in prompt:
        return ANSWER
    return call.replace('"calculator"', f'"{name}"') if f'"{name}"' in prompt else "no tools here."


@contextlib.contextmanager
def serve(backend, *episodes: str, max_new_tokens: int = 8, seed_key: str | None = "test", max_wait_s: float = 0.01):
    """A started endpoint with ``episodes`` open: ``(service, server)``."""
    service = PolicyService(backend, SamplingDefaults(max_new_tokens=max_new_tokens, max_context_tokens=4096),
                            seed_key=seed_key, max_wait_s=max_wait_s)
    with PolicyServer(service) as server:
        for episode in episodes:
            service.open_episode(episode)
        yield service, server


def openai_client(server, service, episode: str, *, asynchronous: bool = False, **kwargs):
    from openai import AsyncOpenAI, OpenAI

    cls = AsyncOpenAI if asynchronous else OpenAI
    return cls(base_url=server.base_url(episode), api_key=kwargs.pop("api_key", service.api_key), max_retries=0,
               **kwargs)


def content(response) -> str:
    return response.choices[0].message.content


# -- the openai SDK ----------------------------------------------------------------------------

def test_openai_sync_conversation_is_one_exact_token_stream(tiny):
    from agent_lightning.agents.llm import LLM

    with serve(tiny, "sync") as (service, server):
        client = openai_client(server, service, "sync")
        assert [m.id for m in client.models.list()] == ["policy"]
        messages, replies, hints = [QUESTION], [], ["higher than 2", "lower than 5"]
        for hint in [*hints, None]:
            replies.append(client.chat.completions.create(model="policy", messages=messages))
            if hint is not None:
                messages += [{"role": "assistant", "content": content(replies[-1])}, {"role": "user", "content": hint}]
        llm = LLM(base_url=server.base_url("sync"), api_key=service.api_key, model="policy", episode_id="sync")
        llm.reward(0.5, call_id=replies[1].id)
        llm.reward(1.0)
        ledger = service.episodes["sync"]
        (traj,) = ledger.trajectories(TASK, 0, 0)

    assert ledger.metrics() == {"agent/calls": 3.0, "agent/segments": 1.0, "agent/prefix_breaks": 0.0,
                                "agent/retried_calls": 0.0}
    assert [r.id for r in replies] == ["chatcmpl-sync-0", "chatcmpl-sync-1", "chatcmpl-sync-2"]
    stream = list(tiny.encode_prompt([QUESTION]))
    assert list(traj.prompt_token_ids) == stream
    for k, (turn, reply) in enumerate(zip(traj.turns, replies)):
        sampled = list(turn.action_token_ids)
        assert sampled and len(turn.action_logprobs) == len(sampled) and max(turn.action_logprobs) <= 0.0
        assert content(reply) == tiny.decode(sampled) == turn.action
        assert reply.choices[0].finish_reason == ("stop" if sampled[-1] in tiny.stop_ids else "length")
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(stream), len(sampled))
        stream += sampled
        if k < len(hints):  # the template's delta for the hint, after the sampled ids as they are
            delta = tiny.encode_observation([{"role": "user", "content": hints[k]}],
                                            after_stop=reply.choices[0].finish_reason == "stop")
            assert list(turn.observation_token_ids) == delta
            stream += delta
    assert traj.turns[-1].observation_token_ids == ()
    assert [t.reward for t in traj.turns] == [0.0, 0.5, 0.0] and ledger.episode_reward == 1.0


def test_async_openai_concurrent_episodes_share_batches(tiny):
    names = [f"async-{i}" for i in range(16)]
    with serve(tiny, *names, max_wait_s=0.25) as (service, server):
        async def episode(name: str, i: int):
            async with openai_client(server, service, name, asynchronous=True) as client:
                return await client.chat.completions.create(
                    model="policy", messages=[{"role": "user", "content": f"guess my number between 1 and {i + 2} ."}])

        async def everyone():
            return await asyncio.gather(*(episode(name, i) for i, name in enumerate(names)))

        responses = asyncio.run(everyone())
        batches, requests = service.batcher.batches, service.batcher.requests
        ledgers = [service.episodes[name] for name in names]

    assert [r.id for r in responses] == [f"chatcmpl-{name}-0" for name in names]
    for response, ledger in zip(responses, ledgers):
        (turn,) = ledger.segments[0].turns
        assert content(response) == tiny.decode(turn.token_ids)
    assert requests == 16 and 1 <= batches < requests, (batches, requests)


def test_streaming_deltas_are_the_recorded_completion(tiny):
    """Same seed, same prompt: the streamed episodes sample what the plain one sampled, and the
    concatenated deltas are the content the ledger recorded."""
    messages = [QUESTION, {"role": "assistant", "content": "3"}, {"role": "user", "content": "higher than 3"}]
    with serve(tiny, "plain", "sync-stream", "async-stream", max_new_tokens=24, seed_key=None) as (service, server):
        plain = openai_client(server, service, "plain").chat.completions.create(
            model="policy", messages=messages, seed=5)
        chunks = list(openai_client(server, service, "sync-stream").chat.completions.create(
            model="policy", messages=messages, seed=5, stream=True, stream_options={"include_usage": True}))

        async def stream_async():
            async with openai_client(server, service, "async-stream", asynchronous=True) as client:
                return [chunk async for chunk in await client.chat.completions.create(
                    model="policy", messages=messages, seed=5, stream=True)]

        async_chunks = asyncio.run(stream_async())
        recorded = {name: service.episodes[name].calls[0].response["choices"][0]["message"]["content"]
                    for name in ("plain", "sync-stream", "async-stream")}

    text = content(plain)
    assert len(text) > 16 and plain.choices[0].finish_reason == "stop"  # several chunks; seed 5 stops early
    assert recorded == {"plain": text, "sync-stream": text, "async-stream": text}
    for got, episode in ((chunks, "sync-stream"), (async_chunks, "async-stream")):
        assert {c.id for c in got} == {f"chatcmpl-{episode}-0"}
        pieces = [c.choices[0].delta.content for c in got if c.choices and c.choices[0].delta.content]
        assert len(pieces) > 1 and "".join(pieces) == text
        assert [c.choices[0].finish_reason for c in got if c.choices][-1] == plain.choices[0].finish_reason
        assert got[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == plain.usage.model_dump()
    assert all(c.choices and c.usage is None for c in async_chunks)  # no usage unless asked for


@needs_smollm2
def test_openai_tool_calls_extend_the_same_segment(scripted):
    scripted.script = calculator_script
    tools = [CALCULATOR]
    with serve(scripted, "tools", "compact", "stream-tools", "bad-call", max_new_tokens=64) as (service, server):
        client = openai_client(server, service, "tools")
        messages = [QUESTION | {"content": "What is 2 + 2?"}]
        first = client.chat.completions.create(model="policy", messages=messages, tools=tools)
        (call,) = first.choices[0].message.tool_calls
        tool_message = {"role": "tool", "tool_call_id": call.id, "content": "4"}
        messages += [first.choices[0].message.model_dump(exclude_none=True), tool_message]
        second = client.chat.completions.create(model="policy", messages=messages, tools=tools)
        seen_second = scripted.prompts[-1]
        ledger = service.episodes["tools"]
        (traj,) = ledger.trajectories(TASK, 0, 0)

        # Sent back re-serialised (compact JSON, no id, "" for null), as some clients do: still the same reply.
        compact = openai_client(server, service, "compact")
        compact.chat.completions.create(model="policy", messages=messages[:1], tools=tools)
        arguments = json.dumps(json.loads(call.function.arguments), separators=(",", ":"))
        resent = {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "calculator", "arguments": arguments}}]}
        compact.chat.completions.create(model="policy", tools=tools, messages=[
            messages[0], resent, tool_message | {"tool_call_id": "call_compact_0_0"}])
        compact_metrics = service.episodes["compact"].metrics()

        chunks = list(openai_client(server, service, "stream-tools").chat.completions.create(
            model="policy", messages=messages[:1], tools=tools, stream=True))
        scripted.script = lambda prompt: BAD_TOOL_CALL
        bad = openai_client(server, service, "bad-call").chat.completions.create(
            model="policy", messages=messages[:1], tools=tools)

    assert first.choices[0].finish_reason == "tool_calls" and first.choices[0].message.content is None
    assert call.type == "function" and call.function.name == "calculator"
    assert json.loads(call.function.arguments) == {"expression": "2 + 2"}
    assert second.choices[0].finish_reason == "stop" and content(second) == ANSWER
    assert ledger.metrics()["agent/segments"] == 1.0 and ledger.metrics()["agent/prefix_breaks"] == 0.0
    # The stream: prompt with the tools, the scripted ids, the template's delta for the tool result.
    checked = validate_tools(tools)
    assert list(traj.prompt_token_ids) == scripted.encode_prompt(for_template(validate_messages(messages[:1])),
                                                                 tools=checked)
    assert [list(t.action_token_ids) for t in traj.turns] == [scripted.reply_ids(TOOL_CALL), scripted.reply_ids(ANSWER)]
    assert list(traj.turns[0].observation_token_ids) == scripted.encode_observation([tool_message], after_stop=True,
                                                                                    tools=checked)
    assert seen_second.endswith(f"{TOOL_CALL}<|im_end|>\n<|im_start|>user\n<tool_response>\n4\n</tool_response>"
                                "<|im_end|>\n<|im_start|>assistant\n")
    assert compact_metrics == {"agent/calls": 2.0, "agent/segments": 1.0, "agent/prefix_breaks": 0.0,
                               "agent/retried_calls": 0.0}
    # Streamed: the tool call arrives whole in one delta.
    (streamed,) = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert (streamed.function.name, json.loads(streamed.function.arguments)) == ("calculator", {"expression": "2 + 2"})
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    # Not JSON inside <tool_call>: the sampled text comes back whole, as text.
    assert bad.choices[0].finish_reason == "stop" and bad.choices[0].message.tool_calls is None
    assert content(bad) == BAD_TOOL_CALL


def test_history_edits_start_segments_and_retries_are_recorded_once(tiny):
    system = {"role": "system", "content": "reply with one number ."}
    with serve(tiny, "edit", "drop", "retry") as (service, server):
        edit = openai_client(server, service, "edit")
        first = edit.chat.completions.create(model="policy", messages=[QUESTION])
        edited = {"role": "assistant", "content": content(first) + " 4"}
        edit.chat.completions.create(model="policy", messages=[QUESTION, edited, {"role": "user", "content": "lower"}])

        drop = openai_client(server, service, "drop")
        one = drop.chat.completions.create(model="policy", messages=[system, QUESTION])
        turn = [{"role": "assistant", "content": content(one)}, {"role": "user", "content": "higher than 2"}]
        two = drop.chat.completions.create(model="policy", messages=[system, QUESTION, *turn])
        # A sliding window: the first question and answer are dropped.
        window = [system, turn[1], {"role": "assistant", "content": content(two)}, {"role": "user", "content": "lower"}]
        drop.chat.completions.create(model="policy", messages=window)

        retry = openai_client(server, service, "retry")
        answers = [retry.chat.completions.create(model="policy", messages=[QUESTION]) for _ in range(2)]
        ledgers = {name: service.episodes[name] for name in ("edit", "drop", "retry")}

    for name, why in (("edit", "message 1 (assistant) differs from the conversation held: an assistant reply the "
                               "endpoint returned was edited"),
                      ("drop", "message 1 (user) differs from the conversation held: it was changed")):
        ledger = ledgers[name]
        trajs = ledger.trajectories(TASK, 0, 0)
        assert ledger.metrics()["agent/segments"] == 2.0 and ledger.metrics()["agent/prefix_breaks"] == 1.0, name
        assert [t.id for t in trajs] == [f"{name}#0", f"{name}#1"]
        assert [b["reason"] for b in trajs[0].info["breaks"]] == [why]
        assert "breaks" not in trajs[1].info and trajs[1].info["segments"] == 2
    assert [len(t.turns) for t in ledgers["drop"].trajectories(TASK, 0, 0)] == [2, 1]

    assert answers[0].id == answers[1].id == "chatcmpl-retry-0" and content(answers[0]) == content(answers[1])
    assert ledgers["retry"].metrics() == {"agent/calls": 1.0, "agent/segments": 1.0, "agent/prefix_breaks": 0.0,
                                          "agent/retried_calls": 1.0}
    (traj,) = ledgers["retry"].trajectories(TASK, 0, 0)
    assert len(traj.turns) == 1


def test_openai_sdk_raises_its_own_errors(tiny):
    import openai

    with serve(tiny, "open", "finished") as (service, server):
        with pytest.raises(openai.AuthenticationError, match="wrong API key"):
            openai_client(server, service, "open", api_key="not-the-key").chat.completions.create(
                model="policy", messages=[QUESTION])
        with pytest.raises(openai.NotFoundError, match="no episode 'nowhere' on this endpoint"):
            openai_client(server, service, "nowhere").chat.completions.create(model="policy", messages=[QUESTION])
        with pytest.raises(openai.NotFoundError, match="'gpt-4o' is not served here"):
            openai_client(server, service, "open").chat.completions.create(model="gpt-4o", messages=[QUESTION])
        with pytest.raises(openai.BadRequestError, match="n: only 1 choice"):
            openai_client(server, service, "open").chat.completions.create(model="policy", messages=[QUESTION], n=2)
        service.episodes["finished"].finish()  # finished while still held (e.g. a call in flight)
        with pytest.raises(openai.ConflictError, match="is finished"):
            openai_client(server, service, "finished").chat.completions.create(model="policy", messages=[QUESTION])
        assert service.episodes["open"].calls == [] and service.episodes["finished"].calls == []


def test_a_closed_episode_answers_409(tiny):
    import openai

    with serve(tiny, "closed") as (service, server):
        service.close_episode("closed")  # what the runner does when the agent returns
        try:
            openai_client(server, service, "closed").chat.completions.create(model="policy", messages=[QUESTION])
        except openai.APIStatusError as exc:
            assert isinstance(exc, openai.ConflictError), f"{exc.status_code}: {exc.message}"
        else:
            pytest.fail("a call to a closed episode was answered")


# -- LangChain and the OpenAI Agents SDK ------------------------------------------------------

@needs_smollm2
def test_langchain_tool_agent_keeps_one_segment(scripted):
    from langchain.agents import create_agent
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    used = []

    @tool
    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression."""
        used.append(expression)
        return "4"

    scripted.script = calculator_script
    with serve(scripted, "langchain", max_new_tokens=64) as (service, server):
        model = ChatOpenAI(base_url=server.base_url("langchain"), api_key=service.api_key, model="policy",
                           max_retries=0)
        agent = create_agent(model, [calculator])
        result = agent.invoke({"messages": [{"role": "user", "content": "What is 2 + 2?"}]})
        ledger = service.episodes["langchain"]

    kinds = [type(m).__name__ for m in result["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert used == ["2 + 2"] and result["messages"][-1].content == ANSWER
    assert result["messages"][1].tool_calls[0]["args"] == {"expression": "2 + 2"}
    assert ledger.metrics() == {"agent/calls": 2.0, "agent/segments": 1.0, "agent/prefix_breaks": 0.0,
                                "agent/retried_calls": 0.0}
    sent_back = ledger.segments[0].messages[1]  # the tool call as LangChain sent it back
    assert sent_back["role"] == "assistant" and sent_back["tool_calls"][0]["function"]["name"] == "calculator"
    assert ledger.segments[0].messages[2] == {"role": "tool", "content": "4",
                                              "tool_call_id": result["messages"][2].tool_call_id}


@needs_smollm2
def test_openai_agents_sdk_runner_keeps_one_segment(scripted):
    from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    used = []

    @function_tool
    def add(expression: str) -> str:
        """Evaluate an arithmetic expression."""
        used.append(expression)
        return "4"

    scripted.script = lambda prompt: calculator_script(prompt, name="add")
    with serve(scripted, "agents-sdk", max_new_tokens=64) as (service, server):
        async def run():
            async with openai_client(server, service, "agents-sdk", asynchronous=True) as client:
                agent = Agent(name="calc", instructions="Use the tool for arithmetic.", tools=[add],
                              model=OpenAIChatCompletionsModel(model="policy", openai_client=client))
                return await Runner.run(agent, "What is 2 + 2?")

        result = asyncio.run(run())
        ledger = service.episodes["agents-sdk"]

    assert used == ["2 + 2"] and result.final_output == ANSWER
    assert ledger.metrics() == {"agent/calls": 2.0, "agent/segments": 1.0, "agent/prefix_breaks": 0.0,
                                "agent/retried_calls": 0.0}
    assert ledger.segments[0].messages[0] == {"role": "system", "content": "Use the tool for arithmetic."}


# -- training runs driven by real clients -----------------------------------------------------

def _train(tmp_path, overrides: list[str]) -> list[dict]:
    from agent_lightning.config import load_config
    from agent_lightning.loop.trainer import Trainer

    small = ["trainer.batch_size=2", "algorithm.group_size=2", "algorithm.minibatches=1", "trainer.eval_episodes=2",
             "trainer.eval_every=0", "trainer.checkpoint_every=0", "agent.concurrency=4", "trackers=[jsonl]"]
    config = load_config("quickstart-agent", [*small, *overrides], environ={})
    result = Trainer(config, tmp_path / "run").run()
    assert result.steps == config.trainer.steps
    return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def _check_agent_metrics(records: list[dict]) -> None:
    """Every step exactly: with ``max_new_tokens=1`` each call adds one policy token, each episode
    is one segment, no prefix break; the evaluation's calls are counted apart (``eval/agent/*``)."""
    steps = [r for r in records if "train/policy_tokens" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert r["agent/calls"] == r["train/policy_tokens"] > 0 and r["agent/segments"] == r["train/episodes"] == 4, r
        assert r["agent/prefix_breaks"] == 0 and r["train/failed_episodes"] == 0, r
    evals = [r for r in records if "eval/agent/calls" in r]
    assert [r["step"] for r in evals] == [0, 2] and all(r["eval/agent/segments"] == 2 for r in evals)


@pytest.mark.slow
def test_training_run_with_an_openai_sdk_agent(tmp_path):
    _check_agent_metrics(_train(tmp_path, ["trainer.steps=2"]))


@pytest.mark.slow
def test_training_run_with_an_openai_agents_sdk_agent(tmp_path):
    _check_agent_metrics(_train(tmp_path, ["trainer.steps=2", "agent.entrypoint=agents_for_tests:play_with_agents_sdk"]))


@pytest.mark.slow
def test_training_run_with_a_langchain_agent(tmp_path):
    _check_agent_metrics(_train(tmp_path, ["trainer.steps=2", "agent.entrypoint=agents_for_tests:play_with_langchain"]))
