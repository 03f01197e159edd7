"""Agents used by the agent-run tests (importable by name: the trainer loads entrypoints)."""

from __future__ import annotations

import asyncio
import time


def _client(llm):
    from openai import OpenAI

    return OpenAI(base_url=llm.base_url, api_key=llm.api_key, max_retries=0)


def echo_answer(task, llm):
    """One call; returns the task's question back as the answer (for a matching reward)."""
    _client(llm).chat.completions.create(model=llm.model, messages=[{"role": "user", "content": "guess"}])
    return task["question"]


def rewards_each_call(task, llm):
    """Two calls; the first gets reward 1 through the endpoint, the second 0; returns nothing."""
    client = _client(llm)
    messages = [{"role": "user", "content": "guess my number"}]
    first = client.chat.completions.create(model=llm.model, messages=messages)
    messages += [{"role": "assistant", "content": first.choices[0].message.content}, {"role": "user", "content": "again"}]
    second = client.chat.completions.create(model=llm.model, messages=messages)
    llm.reward(1.0, call_id=first.id)
    llm.reward(0.0, call_id=second.id)
    return None


def flaky(task, llm):
    """Fails on odd task numbers, sleeps past the timeout on numbers divisible by 3, else plays."""
    number = int(task["id"].split("-")[1])  # guess-number task ids: <split>-<secret>-<repeat>
    _client(llm).chat.completions.create(model=llm.model, messages=[{"role": "user", "content": "guess"}])
    if number % 3 == 0:
        time.sleep(5)
        return 1.0
    if number % 2:
        raise RuntimeError("agent crashed on purpose")
    return 1.0


async def async_agent(task, llm):
    """An async agent with the async client."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=llm.base_url, api_key=llm.api_key, max_retries=0)
    reply = await client.chat.completions.create(model=llm.model, messages=[{"role": "user", "content": "guess"}])
    await asyncio.sleep(0)
    return {"reward": 0.5, "success": True, "answer": reply.choices[0].message.content}


def summarising(task, llm):
    """Three calls; before the third it replaces the history with a summary (a prefix break)."""
    client = _client(llm)
    messages = [{"role": "user", "content": "guess my number"}]
    for turn in range(3):
        reply = client.chat.completions.create(model=llm.model, messages=messages)
        messages += [{"role": "assistant", "content": reply.choices[0].message.content},
                     {"role": "user", "content": "higher"}]
        if turn == 1:
            messages = [messages[0], {"role": "user", "content": "lower than 3"}]
    return 1.0


def pid_agent(task, llm):
    """One call; returns its process id as the answer and reward 1."""
    import os

    _client(llm).chat.completions.create(model=llm.model, messages=[{"role": "user", "content": "guess"}])
    return {"reward": 1.0, "answer": str(os.getpid())}


def dies_on_two(task, llm):
    """Kills its own process (SIGKILL) on secret 2 after one call; a wrong reward type on 4;
    raises on 5; else reward 1."""
    import os
    import signal

    number = int(task["id"].split("-")[1])
    _client(llm).chat.completions.create(model=llm.model, messages=[{"role": "user", "content": "guess"}])
    if number == 2:
        time.sleep(0.5)  # the others have started
        os.kill(os.getpid(), signal.SIGKILL)
    if number == 4:
        return {"reward": "high"}
    if number == 5:
        raise ValueError("five is not allowed")
    return 1.0
