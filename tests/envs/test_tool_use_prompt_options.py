"""Prompt options of the tool-use environment: a tool subset, brief descriptions, worked examples."""

import json

import pytest

from agent_lightning.envs.tool_use import ToolUseEnv


def _system(env):
    return env.tasks("eval")[0].prompt[0]["content"]


def test_tool_subset_lists_only_those_tools_and_rejects_other_calls():
    env = ToolUseEnv(families=["lookup"], tools=["search"], num_eval=4)
    system = _system(env)
    assert '"name": "search"' in system and "calculator" not in system and "kv_get" not in system
    env.reset(env.tasks("eval")[0])
    result = env.step('<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call>')
    payload = json.loads(result.observation.messages[0]["content"])
    assert payload["error"] == "unknown_tool" and result.info["tool_errors"] == 1


def test_brief_descriptions_are_one_line_per_tool_and_shorter():
    full = _system(ToolUseEnv(tools=["search", "calculator"], num_eval=4))
    brief = _system(ToolUseEnv(tools=["search", "calculator"], tool_descriptions="brief", num_eval=4))
    assert "search(query: string, top_k: integer (optional)) - " in brief
    assert "calculator(expression: string) - " in brief
    assert "<tools>" not in brief and len(brief) < len(full) * 2 / 3


def test_demonstrations_are_real_tool_exchanges_before_the_question():
    env = ToolUseEnv(families=["lookup", "arithmetic"], tools=["search", "calculator"], demonstrations=2,
                     observation_role="user", num_eval=4)
    task = env.tasks("eval")[0]
    roles = [m["role"] for m in task.prompt]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant", "user", "assistant",
                     "user"]
    assert task.prompt[-1]["content"] == env.tasks("eval")[0].prompt[-1]["content"]
    # The example's tool result is what the real tool returns for the example's call.
    search_result = json.loads(task.prompt[3]["content"])
    assert search_result["name"] == "search" and search_result["result"]["results"][0]["id"] == "demo-1"
    calc_result = json.loads(task.prompt[7]["content"])
    assert calc_result == {"name": "calculator", "result": {"result": 380}}
    assert task.prompt[8]["content"] == "<answer>380</answer>"
    # The examples' answers are right: replaying the example calls through the environment solves nothing
    # of the task, but the example documents never leak into the task documents.
    env.reset(task)
    obs = env.step('<tool_call>{"name": "search", "arguments": {"query": "Elbaria rivers"}}</tool_call>')
    assert "demo-1" not in obs.observation.messages[0]["content"]


def test_a_family_second_pass_uses_its_second_example():
    env = ToolUseEnv(families=["lookup"], tools=["search"], demonstrations=2, observation_role="user", num_eval=4)
    prompt = env.tasks("eval")[0].prompt
    questions = [m["content"] for m in prompt[1:-1] if m["role"] == "user" and not m["content"].startswith("{")]
    assert questions == ["How many rivers does the country Elbaria have?", "In which year was Brightvale Tools founded?"]
    second = json.loads(prompt[7]["content"])
    assert second["result"]["results"][0]["id"] == "demo-2" and prompt[8]["content"] == "<answer>1931</answer>"


@pytest.mark.parametrize("options, message", [
    ({"tools": ["search", "browser"]}, "environment.tools: unknown ['browser']"),
    ({"tool_descriptions": "yaml"}, "environment.tool_descriptions must be 'json' or 'brief'"),
    ({"demonstrations": -1}, "environment.demonstrations must be >= 0"),
    ({"families": ["arithmetic"], "tools": ["search"], "demonstrations": 1},
     "environment.demonstrations: no worked example fits"),
])
def test_bad_prompt_options_name_the_option(options, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ToolUseEnv(**options).tasks("train")
