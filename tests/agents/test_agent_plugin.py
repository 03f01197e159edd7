"""Agents are a plugin kind: a third party registers one through ``register_agents``."""

from __future__ import annotations

import json

from agent_lightning.config import load_config
from agent_lightning.hookspecs import hookimpl
from agent_lightning.loop.trainer import Trainer
from agent_lightning.plugins import build_plugin_manager


class FixedGuess:
    """Always guesses ``guess`` through the endpoint (an agent with options)."""

    def __init__(self, guess: int = 3):
        self.guess = guess

    def __call__(self, task, llm):
        import urllib.request

        body = {"model": llm.model, "messages": [{"role": "user", "content": "guess"}]}
        request = urllib.request.Request(f"{llm.base_url}/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Authorization": f"Bearer {llm.api_key}", "Content-Type": "application/json"})
        urllib.request.urlopen(request).read()
        return 1.0 if task["reference"]["secret"] == self.guess else 0.0


class Plugin:
    @hookimpl
    def register_agents(self, register):
        register("fixed-guess", FixedGuess)


def test_a_registered_agent_is_chosen_by_name_with_its_options(tmp_path):
    manager = build_plugin_manager(autoload=False, strict=True, extra_plugins=[("fixed-guess-plugin", Plugin())])
    assert {"fixed-guess", "entrypoint", "command"} <= set(manager.agents.names())
    config = load_config("quickstart-agent", ["agent.entrypoint=null", "agent.name=fixed-guess", "agent.options={guess: 2}",
                                              "agent.workers=0",  # registered in this process only
                                              "trainer.steps=1", "trainer.batch_size=6", "algorithm.group_size=1",
                                              "trainer.eval_episodes=6", "trackers=[jsonl]", "trainer.checkpoint_every=0"])
    Trainer(config, tmp_path / "run", plugin_manager=manager).run()
    record = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert record["eval/mean_reward"] == 1 / 6 and record["eval/agent/calls"] == 6  # only secret 2 of 1..6 is found
