"""Agents that the tests' training runs import by name (a helper module, not a test).

The trainer loads ``agent.entrypoint`` with ``importlib``; pytest puts this folder on
``sys.path`` (``tests/`` is not a package), so the entrypoint is
``agents_for_tests:play_with_langchain``.
"""

from __future__ import annotations

from typing import Any


def play_with_langchain(task: dict, llm: Any, max_number: int = 6, max_turns: int = 3) -> dict:
    """The guess-number game played through LangChain's ``ChatOpenAI``: each call sends the
    whole conversation, the model's replies as the ``AIMessage`` objects LangChain returned."""
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    from agent_lightning.envs.guess_number import GuessNumberEnv
    from agent_lightning.types import Task

    game = GuessNumberEnv(max_number=max_number, max_turns=max_turns)
    game.reset(Task(id=task["id"], prompt=(), reference=task["reference"]))
    chat = ChatOpenAI(base_url=llm.base_url, api_key=llm.api_key, model=llm.model, max_retries=0)
    messages: list[Any] = [(m["role"], m["content"]) for m in task["prompt"]]
    for _ in range(max_turns):
        reply = chat.invoke(messages)
        result = game.step(reply.content or "")
        if result.done:
            return {"reward": result.reward, "success": bool(result.info.get("success"))}
        messages += [reply, *(HumanMessage(m["content"]) for m in result.observation.messages)]
    return {"reward": 0.0, "success": False}


def play_with_agents_sdk(task: dict, llm: Any, max_number: int = 6, max_turns: int = 3) -> dict:
    """The guess-number game played by an OpenAI Agents SDK ``Agent`` (``Runner.run`` once per
    turn with the conversation so far as its input items)."""
    import asyncio

    from agents import Agent, ModelBehaviorError, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
    from openai import AsyncOpenAI

    from agent_lightning.envs.guess_number import GuessNumberEnv
    from agent_lightning.types import Task

    set_tracing_disabled(True)
    game = GuessNumberEnv(max_number=max_number, max_turns=max_turns)
    game.reset(Task(id=task["id"], prompt=(), reference=task["reference"]))

    async def play() -> dict:
        client = AsyncOpenAI(base_url=llm.base_url, api_key=llm.api_key, max_retries=0)
        agent = Agent(name="guesser", model=OpenAIChatCompletionsModel(model=llm.model, openai_client=client))
        items: list[Any] = [{"role": m["role"], "content": m["content"]} for m in task["prompt"]]
        for _ in range(max_turns):
            try:
                result = await Runner.run(agent, items)
            except ModelBehaviorError:  # the SDK refuses an empty reply (a tiny model samples some)
                return {"reward": 0.0, "success": False}
            step = game.step(str(result.final_output or ""))
            if step.done:
                return {"reward": step.reward, "success": bool(step.info.get("success"))}
            items = result.to_input_list() + [{"role": m["role"], "content": m["content"]} for m in step.observation.messages]
        return {"reward": 0.0, "success": False}

    return asyncio.run(play())
