"""The env-info reward: numbers from the environment's step info, summed, capped, scaled."""

from __future__ import annotations

import pytest

from agent_lightning.rewards.env_rewards import env_info_reward
from agent_lightning.types import Task, Trajectory, Turn

TASK = Task(id="t", prompt=({"role": "user", "content": "x"},))


def _traj(*infos):
    turns = tuple(Turn(action="a", action_token_ids=(1,), action_logprobs=(0.0,), observation_token_ids=(), info=info)
                  for info in infos)
    return Trajectory(id="e", task=TASK, group=0, prompt_token_ids=(1,), turns=turns)


def test_sums_the_chosen_turns_then_caps_and_scales():
    traj = _traj({"valid_calls": 2}, {}, {"valid_calls": 1})
    assert env_info_reward("valid_calls")(traj) == 3.0
    assert env_info_reward("valid_calls", turns="first")(traj) == 2.0
    assert env_info_reward("valid_calls", turns="last")(traj) == 1.0
    assert env_info_reward("valid_calls", cap=1, scale=0.5)(traj) == 0.5
    assert env_info_reward("valid_calls")(_traj()) == 0.0


def test_bad_values_and_options_name_the_culprit():
    with pytest.raises(ValueError, match=r"info\['success'\] is bool"):
        env_info_reward("success")(_traj({"success": True}))
    with pytest.raises(ValueError, match="reward.turns must be 'all', 'first' or 'last'"):
        env_info_reward("valid_calls", turns="middle")


def test_tool_use_reports_valid_calls():
    from agent_lightning.envs.tool_use import ToolUseEnv

    env = ToolUseEnv(families=["arithmetic"], num_train=2, num_eval=1)
    env.reset(env.tasks("train")[0])
    result = env.step('<tool_call>{"name": "calculator", "arguments": {"expression": "2+3"}}</tool_call>'
                      '<tool_call>{"name": "calculator", "arguments": {"expr": "2"}}</tool_call>')
    assert (result.info["valid_calls"], result.info["tool_errors"], result.info["tool_calls"]) == (1, 1, 2)
