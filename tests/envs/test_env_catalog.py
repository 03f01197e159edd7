"""``describe_environments`` and ``play_interactive`` (the library side of ``alightning envs``/``try``)."""

from __future__ import annotations

import json

import pytest

from agent_lightning.cli import env_catalog
from agent_lightning.cli.env_catalog import describe_environments, pick_task, play_interactive
from agent_lightning.envs import code, tool_use, web
from agent_lightning.hookspecs import hookimpl
from agent_lightning.plugins import build_plugin_manager

MINE = {"tool_use": tool_use, "code": code, "web": web}


class _Broken:
    """A plugin whose environment cannot list its tasks."""

    class Env:
        description = "always broken"

        def tasks(self, split):
            raise OSError("data file missing")

        def close(self):
            pass

    @hookimpl
    def register_environments(self, register):
        register("broken", self.Env)


def _manager():
    return build_plugin_manager(autoload=False, strict=True, blocked=[f"agent_lightning.envs.{m}" for m in MINE],
                                extra_plugins=[(f"test-{n}", m) for n, m in MINE.items()] + [("broken", _Broken())])


def test_describe_lists_descriptions_and_counts_and_survives_a_broken_env():
    rows = {row.name: row for row in describe_environments(_manager())}
    assert rows["tool-use"][1:4] == (tool_use.ToolUseEnv.description, 400, 100)
    assert rows["code"][1:4] == (code.CodeEnv.description, 26, 10)
    assert rows["web"][1:4] == (web.WebEnv.description, len(web.WebEnv().tasks("train")), 30)
    assert rows["broken"].train is None and "data file missing" in rows["broken"].error
    assert all(r.error is None for n, r in rows.items() if n != "broken")


def _script(*lines):
    feed = iter(lines)

    def input_fn(prompt):
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    return input_fn


def test_play_interactive_tool_use_episode_to_success():
    env = tool_use.ToolUseEnv()
    task = next(t for t in env.tasks("eval") if "kv-store" in t.id)
    key, answer = task.reference["store_key"], task.reference["answer"]
    printed = []
    summary = play_interactive(env, task, print_fn=printed.append, input_fn=_script(
        "hello?",
        json.dumps({"name": "kv_set", "arguments": {"key": key, "value": answer}}),
        "<answer>done</answer>"))
    assert summary == env_catalog.EpisodeSummary(turns=3, total_reward=1.0, success=True, finished=True)
    text = "\n".join(printed)
    assert task.prompt[-1]["content"] in text and '"format_errors": 1' in text and "success" in text


def test_play_interactive_multiline_code_and_quit():
    env = code.CodeEnv(max_attempts=2)
    task = pick_task(env, split="train", task_id="code-gcd")
    printed = []
    summary = play_interactive(env, task, print_fn=printed.append, input_fn=_script(
        "<<<", "```python", "def gcd(a, b):", "    return a", "```", ">>>", "/quit"))
    assert summary.turns == 1 and not summary.finished
    assert any("tests passed" in p for p in printed) and printed[-1] == "stopped."


def test_play_interactive_end_of_input_stops_cleanly():
    env = web.WebEnv()
    try:
        summary = play_interactive(env, pick_task(env, seed=0), print_fn=lambda s: None, input_fn=_script("click 2"))
    finally:
        env.close()
    assert summary == env_catalog.EpisodeSummary(1, 0.0, False, False)


def test_pick_task_errors_name_the_task():
    env = tool_use.ToolUseEnv()
    assert pick_task(env, seed=3) == pick_task(env, seed=3)
    with pytest.raises(ValueError, match="no task 'nope' in split 'eval'"):
        pick_task(env, task_id="nope")


def test_smollm2_tool_use_preset_builds_its_environment_and_reward():
    from agent_lightning.config import load_config
    from agent_lightning.rewards import composite, env_rewards, matching
    from agent_lightning.types import Trajectory, Turn

    config = load_config("smollm2-tool-use")
    assert config.model.gguf_file.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and config.model.lora.r == 16
    mods = {"tool_use": tool_use, "matching": matching, "composite": composite, "env_rewards": env_rewards}
    blocked = [f"agent_lightning.envs.{m}" for m in MINE] + [f"agent_lightning.rewards.{m}" for m in mods]
    manager = build_plugin_manager(autoload=False, strict=True, blocked=blocked,
                                   extra_plugins=[(f"test-{n}", m) for n, m in mods.items()])
    env = manager.environments.create(config.environment.name, **config.environment.options)
    assert {t.id.split("-")[1] for t in env.tasks("eval")} == {"lookup"} and len(env.tasks("eval")) == 24
    assert len(env.tasks("train")) == 40  # the family's other distinct questions
    reward = manager.rewards.create(config.reward.name, registry=manager.rewards, **config.reward.options)
    task = env.tasks("eval")[0]
    call = Turn(action="<tool_call>...</tool_call>", action_token_ids=(1,), action_logprobs=(0.0,),
                info={"valid_calls": 1})
    answer = Turn(action="<answer>1</answer>", action_token_ids=(1,), action_logprobs=(0.0,), reward=1.0)
    result = reward(Trajectory(id="x/0", task=task, group=0, prompt_token_ids=(1,), turns=(call, answer), success=True))
    assert dict(result.components) == {"solved": 1.0, "valid_call": 0.2}
    result = reward(Trajectory(id="x/1", task=task, group=0, prompt_token_ids=(1,), turns=(answer,)))
    assert dict(result.components) == {"solved": 0.0, "valid_call": 0.0}
