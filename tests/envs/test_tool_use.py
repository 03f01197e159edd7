"""Episode logic of the tool-use environment and its tools."""

from __future__ import annotations

import json
import math
import random

import pytest

from agent_lightning.envs.data import tool_use_tasks
from agent_lightning.envs.tool_use import ToolUseEnv
from agent_lightning.envs.tools import BUILTIN_TOOLS, ToolError, ToolState, evaluate_expression, validate
from agent_lightning.types import Observation, StepResult


def call(name, **arguments) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def contents(result: StepResult) -> list[dict]:
    return [json.loads(m["content"]) for m in result.observation.messages]


def first_task(env: ToolUseEnv, family: str, split: str = "eval"):
    return next(t for t in env.tasks(split) if t.id.startswith(f"{split}-{family}-"))


# ----------------------------------------------------------------------------- calculator


@pytest.mark.parametrize("seed", range(5))
def test_calculator_matches_python_arithmetic_on_random_expressions(seed):
    rng = random.Random(seed)
    for _ in range(200):
        a, b, c = rng.randint(-999, 999), rng.randint(1, 999), rng.uniform(-50, 50)
        op1, op2 = rng.choice("+-*/"), rng.choice(["+", "-", "*", "//", "%"])
        text = f"({a} {op1} {b}) {op2} {b + 1} - {c!r}"
        expected = {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op1]
        expected = {"+": expected + (b + 1), "-": expected - (b + 1), "*": expected * (b + 1),
                    "//": expected // (b + 1), "%": expected % (b + 1)}[op2] - c
        assert math.isclose(evaluate_expression(text), expected, rel_tol=1e-12, abs_tol=1e-9), text


@pytest.mark.parametrize("text", [
    "__import__('os').system('id')", "open('/etc/passwd')", "x", "[1, 2]", "'a' * 3", "(1).__class__",
    "lambda: 1", "1 if 1 else 2", "True + 1", "sqrt(x=4)", "2 ^ 3", "f'{1}'", "1; 2", "",
])
def test_calculator_refuses_everything_but_arithmetic(text):
    with pytest.raises(ToolError) as info:
        evaluate_expression(text)
    assert info.value.code == "invalid_arguments"


@pytest.mark.parametrize("text", ["1/0", "9**9**9", "10**400", "sqrt(-1)", "log(0)", "(-8) ** 0.5", "1e308 * 1e308"])
def test_calculator_math_errors_are_tool_failures(text):
    with pytest.raises(ToolError) as info:
        evaluate_expression(text)
    assert info.value.code == "tool_failed"


def test_schema_validation_names_the_field():
    schema = BUILTIN_TOOLS["search"].parameters
    validate({"query": "x", "top_k": 3}, schema)
    for bad, fragment in [({}, "missing required field 'query'"), ({"query": 3}, "arguments.query: expected string"),
                          ({"query": "x", "top_k": 9}, "<= 5"), ({"query": "x", "top_k": True}, "expected integer"),
                          ({"query": "x", "extra": 1}, "unexpected field 'extra'"), ([], "expected object"),
                          ({"query": "x" * 201}, "longer than 200")]:
        with pytest.raises(ToolError, match=fragment.replace("[", r"\[")):
            validate(bad, schema)


def test_search_finds_the_document_that_holds_the_fact():
    state = ToolState(documents=tool_use_tasks.documents())
    for doc in tool_use_tasks.documents():
        name = doc["facts"]["name"]
        hits = BUILTIN_TOOLS["search"].run({"query": name, "top_k": 1}, state)["results"]
        assert hits[0]["id"] == doc["id"], name
        assert "facts" not in hits[0]


def test_kv_store_tools_round_trip_and_cap():
    state = ToolState(max_keys=2)
    BUILTIN_TOOLS["kv_set"].run({"key": "a", "value": 3.0}, state)
    BUILTIN_TOOLS["kv_set"].run({"key": "b", "value": "x"}, state)
    assert BUILTIN_TOOLS["kv_get"].run({"key": "a"}, state)["value"] == "3"
    assert BUILTIN_TOOLS["kv_keys"].run({}, state)["keys"] == ["a", "b"]
    with pytest.raises(ToolError, match="full"):
        BUILTIN_TOOLS["kv_set"].run({"key": "c", "value": "y"}, state)
    with pytest.raises(ToolError, match="no key"):
        BUILTIN_TOOLS["kv_get"].run({"key": "zz"}, state)


# ----------------------------------------------------------------------------- tasks


def test_splits_are_disjoint_deterministic_and_answers_are_right():
    env = ToolUseEnv()
    train, evals = env.tasks("train"), env.tasks("eval")
    assert len(train) == 400 and len(evals) == 100
    assert not {t.prompt[-1]["content"] for t in train} & {t.prompt[-1]["content"] for t in evals}
    assert len({t.id for t in train + evals}) == 500
    again = ToolUseEnv().tasks("eval")
    assert [t.prompt for t in again] == [t.prompt for t in evals]
    assert {t.id.split("-", 1)[1].rsplit("-", 1)[0] for t in evals} == set(tool_use_tasks.FAMILIES)
    for task in evals:  # recompute lookup answers from the documents' text, not from the facts
        if task.id.rsplit("-", 1)[0] == "eval-lookup":
            question = task.prompt[-1]["content"]
            doc = next(d for d in tool_use_tasks.documents() if d["facts"]["name"] in question)
            assert str(task.reference["answer"]) in doc["text"]
    with pytest.raises(ValueError, match="splits"):
        env.tasks("test")


def test_unknown_family_and_option_errors_name_the_key():
    with pytest.raises(ValueError, match="environment.families"):
        ToolUseEnv(families=["arithmetic", "poetry"])
    with pytest.raises(ValueError, match="environment.observation_role"):
        ToolUseEnv(observation_role="system")


# ----------------------------------------------------------------------------- episodes


def test_lookup_math_episode_solved_with_search_then_calculator():
    env = ToolUseEnv()
    task = first_task(env, "lookup-math")
    obs = env.reset(task)
    assert isinstance(obs, Observation) and obs.messages[0]["role"] == "system"
    assert "<tools>" in obs.messages[0]["content"] and "calculator" in obs.messages[0]["content"]
    question = task.prompt[-1]["content"]
    result = env.step(call("search", query=question, top_k=5))
    assert not result.done and result.info == {"tool_calls": 1, "tool_errors": 0, "valid_calls": 1, "format_errors": 0}
    texts = " ".join(r["text"] for r in contents(result)[0]["result"]["results"])
    assert texts
    answer = task.reference["answer"]
    result = env.step(call("calculator", expression=f"{answer} + 0"))
    value = contents(result)[0]["result"]["result"]
    result = env.step(f"The answer is <answer>{value}</answer>")
    assert result.done and result.reward == 1.0 and result.info["success"] is True


def test_wrong_answer_fails_and_turn_budget_ends_the_episode():
    env = ToolUseEnv(max_turns=3)
    task = first_task(env, "arithmetic")
    env.reset(task)
    wrong = env.step(f"<answer>{task.reference['answer'] + 1000}</answer>")
    assert wrong.done and wrong.reward == 0.0 and wrong.info["success"] is False
    env.reset(task)
    for i in range(3):
        result = env.step("let me think")
        assert result.info["format_errors"] == 1
        assert result.done == (i == 2)
    assert result.info["success"] is False and result.observation is None


def test_kv_store_goal_is_judged_from_the_store_state():
    env = ToolUseEnv()
    task = first_task(env, "kv-store")
    key, answer = task.reference["store_key"], task.reference["answer"]
    env.reset(task)
    assert env.step("<answer>done</answer>").info["success"] is False  # nothing stored yet
    env.reset(task)
    env.step(call("kv_set", key=key, value=answer))
    assert env.step("<answer>done</answer>").info["success"] is True
    env.reset(task)  # the store is fresh on every reset
    assert env.step("<answer>done</answer>").info["success"] is False


def test_kv_prices_episode_reads_the_preloaded_store():
    env = ToolUseEnv()
    task = first_task(env, "kv-prices")
    env.reset(task)
    keys = contents(env.step(call("kv_keys", prefix="price:")))[0]["result"]["keys"]
    assert keys == sorted(task.reference["store"])
    got = contents(env.step(call("kv_get", key=keys[0])))[0]["result"]["value"]
    assert got == task.reference["store"][keys[0]]
    assert env.step(f"<answer>{task.reference['answer']:.2f}</answer>").info["success"] is True


def test_errors_are_structured_observations_and_counted():
    env = ToolUseEnv(error_penalty=0.5, observation_role="user")
    env.reset(first_task(env, "arithmetic"))
    action = (call("calculator", expression="2+2") + call("calculator", expression=3) + call("frobnicate")
              + "<tool_call>{not json}</tool_call>" + '<tool_call>{"name": "search", "arguments": "[1]"}</tool_call>')
    result = env.step(action)
    payloads = contents(result)
    assert [p.get("error") for p in payloads] == [None, "invalid_arguments", "unknown_tool", "malformed_json",
                                                  "invalid_arguments"]
    assert payloads[0] == {"name": "calculator", "result": {"result": 4}}
    assert result.info == {"tool_calls": 5, "tool_errors": 4, "valid_calls": 1, "format_errors": 0}
    assert result.reward == -2.0
    assert all(m["role"] == "user" for m in result.observation.messages)


def test_call_limits_oversize_and_alternate_formats():
    env = ToolUseEnv(max_calls_per_turn=2, max_call_chars=100)
    env.reset(first_task(env, "arithmetic"))
    many = env.step(call("calculator", expression="1") * 3)
    assert [p.get("error") for p in contents(many)] == [None, None, "too_many_calls"]
    big = env.step(call("calculator", expression="1+" * 60 + "1"))
    assert contents(big)[0]["error"] == "oversized"
    bare = env.step('```json\n{"name": "calculator", "parameters": {"expression": "6*7"}}\n```')
    assert contents(bare)[0]["result"] == {"result": 42}
    listed = env.step('<tool_call>[{"name": "calculator", "arguments": {"expression": "1"}}]</tool_call>')
    assert contents(listed)[0]["result"] == {"result": 1}


def test_step_before_reset_is_a_clear_error_and_close_is_idempotent():
    env = ToolUseEnv()
    with pytest.raises(RuntimeError, match="before reset"):
        env.step("<answer>1</answer>")
    env.close()
    env.close()
