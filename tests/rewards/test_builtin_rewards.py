"""exact-match, numeric-match, format, test-pass-fraction and composite."""

from __future__ import annotations

import math

import pytest

from agent_lightning.plugins import build_plugin_manager
from agent_lightning.registry import Registry, Source
from agent_lightning.rewards import composite as composite_mod
from agent_lightning.rewards import matching, tests_passed
from agent_lightning.rewards.composite import composite
from agent_lightning.rewards.matching import exact_match, extract_number, format_reward, numeric_match
from agent_lightning.rewards.tests_passed import pass_fraction
from agent_lightning.types import RewardResult, Task, Trajectory, Turn

MODULES = {"matching": matching, "tests_passed": tests_passed, "composite": composite_mod}


def traj(*actions: str, reference=None, infos=None) -> Trajectory:
    infos = infos or [{}] * len(actions)
    task = Task(id="t1", prompt=({"role": "user", "content": "q"},), reference=reference or {})
    turns = tuple(Turn(action=a, action_token_ids=(1,), action_logprobs=(0.0,), info=i) for a, i in zip(actions, infos))
    return Trajectory(id="t1/0", task=task, group=0, prompt_token_ids=(5,), turns=turns)


def test_exact_match_normalises_and_accepts_alternatives():
    reward = exact_match()
    assert reward(traj("thinking...", "<answer> Paris. </answer>", reference={"answer": "paris"})) == 1.0
    assert reward(traj("<answer>Lyon</answer>", reference={"answer": ["Paris", "Lyon"]})) == 1.0
    assert reward(traj("<answer>Pariss</answer>", reference={"answer": "Paris"})) == 0.0
    assert reward(traj("<answer>x</answer> then <answer>Paris</answer>", reference={"answer": "Paris"})) == 1.0
    assert reward(traj("Paris", reference={"answer": "Paris"})) == 1.0  # no tag: the whole action
    strict = exact_match(case_sensitive=True, strip_punctuation=False)
    assert strict(traj("<answer>paris</answer>", reference={"answer": "Paris"})) == 0.0
    with pytest.raises(KeyError, match="task 't1' has no reference\\['answer'\\]"):
        reward(traj("<answer>1</answer>", reference={"solution": 1}))


@pytest.mark.parametrize("text,expected", [
    ("<answer>1,234.5</answer>", 1234.5), ("<answer>$-3</answer>", -3.0), ("<answer>about 3/4</answer>", 0.75),
    ("<answer>2e3 m</answer>", 2000.0), ("<answer>none</answer>", None),
])
def test_extract_number(text, expected):
    assert extract_number(matching.extract_answer(text)) == expected


def test_numeric_match_respects_tolerances():
    ref = {"answer": 100.0}
    assert numeric_match(rel_tol=1e-3)(traj("<answer>100.05</answer>", reference=ref)) == 1.0
    assert numeric_match(rel_tol=1e-3)(traj("<answer>100.2</answer>", reference=ref)) == 0.0
    assert numeric_match(rel_tol=0, abs_tol=0.5)(traj("<answer>99.6</answer>", reference=ref)) == 1.0
    assert numeric_match(rel_tol=0, abs_tol=0.5)(traj("<answer>99.4</answer>", reference=ref)) == 0.0
    assert numeric_match()(traj("<answer>one hundred</answer>", reference=ref)) == 0.0
    assert numeric_match()(traj("<answer>12</answer>", reference={"answer": "12 apples"})) == 1.0
    assert numeric_match()(traj("<answer>nan</answer>", reference={"answer": float("nan")})) == 0.0
    with pytest.raises(ValueError, match="rel_tol"):
        numeric_match(rel_tol=-1)


def test_format_reward_last_and_all_turns():
    t = traj('<tool_call>{"name": "x"}</tool_call>', "chat", "<answer>4</answer>")
    assert format_reward()(t) == 1.0
    assert format_reward(turns="all")(t) == pytest.approx(1 / 3)
    either = format_reward(pattern=r"<answer>.*?</answer>|<tool_call>.*?</tool_call>", turns="all")
    assert either(t) == pytest.approx(2 / 3)
    assert format_reward(require_full_match=True)(traj("so: <answer>4</answer>")) == 0.0
    assert format_reward()(traj()) == 0.0
    with pytest.raises(ValueError, match="reward.turns"):
        format_reward(turns="some")


def test_pass_fraction_from_info_last_and_best():
    infos = [{"tests_passed": 3, "tests_total": 4}, {"format_errors": 1}, {"tests_passed": 1, "tests_total": 4}]
    t = traj("a", "b", "c", infos=infos)
    assert pass_fraction()(t) == 0.25
    assert pass_fraction(which="best")(t) == 0.75
    assert pass_fraction()(traj("no tests")) == 0.0


def test_pass_fraction_rerun_in_the_sandbox():
    ref = {"entry_point": "double", "tests": [{"args": [1], "expected": 2}, {"args": [2], "expected": 4},
                                              {"args": [0], "expected": 0}, {"args": [-3], "expected": -6}]}
    rerun = pass_fraction(source="rerun")
    assert rerun(traj("```python\ndef double(x):\n    return 2 * x\n```", reference=ref)) == 1.0
    assert rerun(traj("```python\ndef double(x):\n    return x + 1 if x < 2 else 2 * x\n```", reference=ref)) == 0.5
    assert rerun(traj("no code", reference=ref)) == 0.0
    with pytest.raises(ValueError, match="reward.source"):
        pass_fraction(source="guess")


def test_composite_weights_named_components():
    reward = composite({"correct": {"reward": numeric_match(), "weight": 1.0},
                        "tidy": {"reward": format_reward(), "weight": 0.25},
                        "nested": {"reward": lambda tr: RewardResult({"a": 0.5, "b": 0.25}), "weight": 2.0}})
    result = reward(traj("<answer>7</answer>", reference={"answer": 7}))
    assert isinstance(result, RewardResult)
    assert dict(result.components) == {"correct": 1.0, "tidy": 0.25, "nested": 1.5}
    assert result.total == pytest.approx(2.75)
    wrong = reward(traj("7", reference={"answer": 8}))
    assert dict(wrong.components) == {"correct": 0.0, "tidy": 0.0, "nested": 1.5}


def test_composite_builds_components_by_name_through_a_registry():
    registry = Registry("reward")
    source = Source("test", "local", "-")
    registry.register("numeric-match", numeric_match, source)
    registry.register("format", format_reward, source)
    reward = composite({"correct": {"name": "numeric-match", "weight": 2, "options": {"abs_tol": 0.5}},
                        "tidy": {"name": "format", "weight": -1, "options": {"pattern": "<answer>"}}}, registry=registry)
    result = reward(traj("<answer>6.7</answer>", reference={"answer": 7}))
    assert dict(result.components) == {"correct": 2.0, "tidy": -1.0} and result.total == 1.0
    with pytest.raises(Exception, match="unknown reward 'exact'"):
        composite({"x": {"name": "exact"}}, registry=registry)
    with pytest.raises(Exception, match="unknown key 'reward.bogus'"):
        composite({"x": {"name": "format", "options": {"bogus": 1}}}, registry=registry)


@pytest.mark.parametrize("components,fragment", [
    ({}, "non-empty"), ({"a": 3}, "reward.components.a must be a mapping"),
    ({"a": {"name": "format", "weight": "1"}}, "weight must be a finite number"),
    ({"a": {"name": "format", "weight": math.inf}}, "weight must be a finite number"),
    ({"a": {"name": "format", "wieght": 1}}, "unknown key"), ({"a": {"weight": 1}}, "name must name"),
    ({"a": {"name": "composite"}}, "cannot contain another composite"),
])
def test_composite_config_errors_name_the_key(components, fragment):
    with pytest.raises(ValueError, match=fragment):
        composite(components, registry=Registry("reward"))


def test_composite_component_returning_nan_raises_naming_it():
    reward = composite({"bad": {"reward": lambda tr: float("nan")}})
    with pytest.raises(ValueError, match="component 'bad'"):
        reward(traj("x"))


def test_rewards_register_through_the_plugin_hooks():
    builtin_names = [f"agent_lightning.rewards.{m}" for m in MODULES]
    manager = build_plugin_manager(autoload=False, strict=True, blocked=builtin_names,
                                   extra_plugins=[(f"test-{n}", m) for n, m in MODULES.items()])
    rewards = manager.rewards
    for name in ("exact-match", "numeric-match", "format", "test-pass-fraction", "composite"):
        assert name in rewards and rewards.get(name).description
    built = rewards.create("composite", components={"ok": {"name": "exact-match", "weight": 1}}, registry=rewards)
    assert built(traj("<answer>x</answer>", reference={"answer": "X"})).total == 1.0
