"""The quickstart game played by a plain-Python agent through the ``openai`` SDK.

The agent knows the rules (``GuessNumberEnv`` judges each guess and words the hint); the
LLM only guesses. It sends the whole conversation on every call, as chat agents do: the
endpoint recognises each call as the previous one plus the reply plus the new hint, so the
tokens trained on are exactly the sampled ones.

    agent: {entrypoint: "agent_lightning.examples.guess_number_agent:solve"}
"""

from __future__ import annotations

from agent_lightning.examples.clients import shared_openai


def solve(task: dict, llm, max_number: int = 6, max_turns: int = 3) -> dict:
    """Play one game; returns the reward (1 for finding the number) and success."""
    from agent_lightning.envs.guess_number import GuessNumberEnv
    from agent_lightning.types import Task

    game = GuessNumberEnv(max_number=max_number, max_turns=max_turns)
    game.reset(Task(id=task["id"], prompt=(), reference=task["reference"]))
    client = shared_openai(llm)
    messages = [dict(m) for m in task["prompt"]]
    for _ in range(max_turns):
        reply = client.chat.completions.create(model=llm.model, messages=messages)
        guess = reply.choices[0].message.content or ""
        result = game.step(guess)
        if result.done:
            return {"reward": result.reward, "success": bool(result.info.get("success"))}
        messages += [{"role": "assistant", "content": guess}, *result.observation.messages]
    return {"reward": 0.0, "success": False}
