"""The web environment's options for small models: ``kinds`` and ``demonstrations``."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import pytest

from agent_lightning.envs import web_demos
from agent_lightning.envs.data.web_goals import KINDS, goal_split, goals
from agent_lightning.envs.web import SYSTEM_PROMPT, WebEnv, _task

# sha256 of every task (id, prompt, reference, split) as listed before the options existed
_DIGESTS = {"train": (104, "9244f5bd8b9fb36bda855fb99806647bd8ca57476170e89c33465fff05d945e1"),
            "eval": (30, "64fdb5ef478fe41e27b2d3bda4ae24b3159162b8b8efdcecfee395cc4623d6dd")}


def _digest(tasks) -> tuple[int, str]:
    blob = json.dumps([[t.id, t.prompt, t.reference, t.split] for t in tasks], sort_keys=True)
    return len(tasks), hashlib.sha256(blob.encode()).hexdigest()


def _kind(task_id: str) -> str:
    return next(g["kind"] for g in goals() if g["id"] == task_id)


@pytest.mark.parametrize("options", [{}, {"kinds": None, "demonstrations": 0}, {"kinds": list(KINDS)}])
def test_defaults_list_exactly_todays_tasks(options):
    env = WebEnv(**options)
    for split, expected in _DIGESTS.items():
        assert _digest(env.tasks(split)) == expected
    assert env.port is None  # listing tasks starts no server
    assert set(KINDS) == {g["kind"] for g in goals()}


def test_kinds_keep_only_those_goals_in_both_splits():
    env = WebEnv(kinds=["top-rated", "color", "color"])
    assert env.kinds == ("top-rated", "color")
    for split in ("train", "eval"):
        got = [t.id for t in env.tasks(split)]
        assert got == [g["id"] for g in goals() if goal_split(g["id"]) == split and g["kind"] in ("top-rated", "color")]
    assert Counter(_kind(t.id) for t in env.tasks("eval")) == {"color": 10, "top-rated": 2}
    assert [t.id for t in WebEnv(kinds="buy").tasks("eval")] == [t.id for t in WebEnv(kinds=["buy"]).tasks("eval")]


@pytest.mark.parametrize("options,words", [
    ({"kinds": ["colour"]}, ["environment.kinds", "'colour'", "cheapest", "lightest"]),
    ({"kinds": []}, ["environment.kinds"]),
    ({"demonstrations": -1}, ["environment.demonstrations", "-1"]),
])
def test_bad_options_raise_naming_the_option(options, words):
    with pytest.raises(ValueError) as err:
        WebEnv(**options)
    assert all(w in str(err.value) for w in words)


def test_more_demonstrations_than_a_kind_has_training_goals_raise():
    env = WebEnv(kinds=["top-rated"], demonstrations=5)  # top-rated has 4 training goals
    with pytest.raises(ValueError, match=r"environment\.demonstrations.*'top-rated'.*only 4"):
        env.tasks("train")


def _episodes(prompt) -> list[list[dict]]:
    """The worked examples in a prompt: runs of messages, each opening with a "Goal:" user turn."""
    body = list(prompt[1:-1])
    starts = [i for i, m in enumerate(body) if m["role"] == "user" and m["content"].startswith("Goal: ")]
    return [body[a:b] for a, b in zip(starts, starts[1:] + [len(body)])]


def test_demonstrations_sit_between_the_system_prompt_and_the_task():
    env = WebEnv(demonstrations=5)
    try:
        task = env.tasks("eval")[0]
        prompt = task.prompt
        assert prompt[0] == {"role": "system", "content": SYSTEM_PROMPT}
        roles = [m["role"] for m in prompt[1:]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
        assert prompt[-1]["content"] == f"Goal: {next(g['goal'] for g in goals() if g['id'] == task.id)}"
        episodes = _episodes(prompt)
        assert len(episodes) == 5
        ids = sorted(env.demonstration_turns()[1])
        assert sorted(_kind(i) for i in ids) == sorted(KINDS)  # cycling: one per kind
        for turns in episodes:
            assert re.match(r"Goal: .+\n\nURL: /\n# Lightning Outfitters\n", turns[0]["content"])
            assert re.match(r'answer ".+"$', turns[-1]["content"])
            assert all(m["role"] == "user" and m["content"].startswith(("URL: /", "Typed into"))
                       for m in turns[2:-1:2])
        first = env.reset(task).messages
        assert first[:-1] == prompt[:-1]  # examples are shown as they are
        assert first[-1]["content"].startswith(prompt[-1]["content"] + "\n\nURL: /\n# Lightning Outfitters")
        assert env.tasks("train")[0].prompt[1:-1] == prompt[1:-1]
        assert env.demonstration_turns() is env.demonstration_turns()  # built once
    finally:
        env.close()


def test_each_demonstration_replays_to_success_on_a_fresh_server():
    env = WebEnv(demonstrations=6)  # all kinds, and a second "cheapest"
    episodes = _episodes(env.tasks("train")[0].prompt)
    by_goal = {g["goal"]: g for g in goals()}
    player = WebEnv(max_turns=100)
    try:
        for turns in episodes:
            goal = by_goal[turns[0]["content"].split("\n")[0][len("Goal: "):]]
            assert goal["id"] in env.demonstration_turns()[1] and goal_split(goal["id"]) == "train"
            assert player.reset(_task(goal, "train", ())).messages[-1]["content"] == turns[0]["content"]
            for i in range(1, len(turns), 2):
                result = player.step(turns[i]["content"])
                if i + 1 < len(turns):
                    assert not result.done and result.observation.messages[0] == turns[i + 1]
            assert result.done and result.reward == 1.0 and result.info["success"] is True
    finally:
        player.close()


def test_demonstration_goals_are_never_tasks():
    plain, env = WebEnv(kinds=["color", "buy"]), WebEnv(kinds=["color", "buy"], demonstrations=3)
    shown = env.demonstration_turns()[1]
    assert len(shown) == 3 and Counter(_kind(i) for i in shown) == {"color": 2, "buy": 1}
    train, evals = [t.id for t in env.tasks("train")], [t.id for t in env.tasks("eval")]
    assert not shown & (set(train) | set(evals))
    assert train == [t.id for t in plain.tasks("train") if t.id not in shown]
    assert len(train) == len(plain.tasks("train")) - 3
    assert evals == [t.id for t in plain.tasks("eval")]  # examples come from training goals


def test_every_goals_planned_route_succeeds_and_has_the_documented_length():
    player = WebEnv(max_turns=100)
    lengths: dict[str, set[int]] = {}
    try:
        for goal in goals():
            steps = web_demos.plan(goal)
            turns = web_demos.play(player, _task(goal, "train", ()), steps)  # raises unless reward 1
            assert len(turns) == 2 * len(steps)
            lengths.setdefault(goal["kind"], set()).add(len(steps))
    finally:
        player.close()
    assert lengths["color"] == {3, 4} and lengths["buy"] == {5, 6} and lengths["top-rated"] == {3}
    assert lengths["lightest"] == {18} and min(lengths["cheapest"]) == 5


def test_a_wrong_plan_is_refused():
    goal = next(g for g in goals() if g["kind"] == "color")
    player = WebEnv(max_turns=100)
    try:
        wrong = web_demos.plan(goal)[:-1] + [("answer", "purple")]
        with pytest.raises(RuntimeError, match="reward 0.0"):
            web_demos.play(player, _task(goal, "train", ()), wrong)
        with pytest.raises(RuntimeError, match="no element 'Nowhere'"):
            web_demos.play(player, _task(goal, "train", ()), [("click", "Nowhere")])
    finally:
        player.close()


def test_color_episode_with_one_demonstration_end_to_end():
    env = WebEnv(kinds=["color"], demonstrations=1)
    try:
        evals = env.tasks("eval")
        assert len(evals) == 10 and len(env.tasks("train")) == 37
        task = evals[3]
        name = re.match(r"What color is the (.+)\? Answer", task.prompt[-1]["content"][len("Goal: "):]).group(1)
        messages = env.reset(task).messages
        assert len(messages) == 1 + 6 + 1 and messages[-1]["content"].startswith(f"Goal: What color is the {name}?")
        page = messages[-1]["content"]
        field = re.search(r'\[(\d+)\] \(text field "q"', page).group(1)
        button = re.search(r"\[(\d+)\] \(button: Search\)", page).group(1)
        assert env.step(f'type {field} "{name}"').reward == 0.0
        page = env.step(f"click {button}").observation.messages[0]["content"]
        link = re.search(rf"\[(\d+)\] {name} - ", page).group(1)
        page = env.step(f"click {link}").observation.messages[0]["content"]
        color = re.search(r"^Color: (\w+)$", page, re.M).group(1)
        result = env.step(f'answer "{color}"')
        assert result.done and result.reward == 1.0 and result.info["success"] is True
        env.reset(task)
        wrong = env.step('answer "purple"' if color != "purple" else 'answer "red"')
        assert wrong.done and wrong.reward == 0.0
    finally:
        env.close()
