"""The web environment's options for small models: ``kinds``, ``demonstrations`` and ``type_submits``."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import pytest

from agent_lightning.envs import web_demos
from agent_lightning.envs.data.web_goals import KINDS, goal_split, goals
from agent_lightning.envs.web import (
    SYSTEM_PROMPT,
    SYSTEM_PROMPT_TYPE_SUBMITS,
    WebEnv,
    _task,
)

# sha256 of every task (id, prompt, reference, split) as listed before the options existed
_DIGESTS = {"train": (104, "9244f5bd8b9fb36bda855fb99806647bd8ca57476170e89c33465fff05d945e1"),
            "eval": (30, "64fdb5ef478fe41e27b2d3bda4ae24b3159162b8b8efdcecfee395cc4623d6dd")}


def _digest(tasks) -> tuple[int, str]:
    blob = json.dumps([[t.id, t.prompt, t.reference, t.split] for t in tasks], sort_keys=True)
    return len(tasks), hashlib.sha256(blob.encode()).hexdigest()


def _kind(task_id: str) -> str:
    return next(g["kind"] for g in goals() if g["id"] == task_id)


@pytest.mark.parametrize("options", [{}, {"kinds": None, "demonstrations": 0}, {"kinds": list(KINDS)},
                                     {"type_submits": False}])
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
    ({"type_submits": "false"}, ["environment.type_submits", "'false'"]),
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


def _page(result) -> str:
    return result.observation.messages[0]["content"]


def test_type_submits_searches_in_one_action_and_adds_a_typed_quantity_to_the_cart():
    goal = next(g for g in goals() if g["id"] == "buy-5-bac04")  # Voyager Backpack, 5 units
    env = WebEnv(kinds=["buy"], type_submits=True)
    try:
        task = _task(goal, "train", (), SYSTEM_PROMPT_TYPE_SUBMITS)
        env.reset(task)
        first = env.step('type 9 "Voyager Backpack"')
        assert first.info["http_requests"] == 1 and first.info["invalid_actions"] == 0
        page = _page(first)
        assert page.startswith("URL: /search?q=Voyager+Backpack\n# Search results for 'voyager backpack'")
        assert "Typed into" not in page and "- [1] Voyager Backpack - $" in page
        page = _page(env.step("click 1"))
        assert page.startswith("URL: /product/bac04\n# Voyager Backpack")
        field = re.search(r'\[(\d+)\] \(text field "qty"', page).group(1)
        added = env.step(f'type {field} "5"')  # POSTs the add-to-cart form, as Enter would
        assert added.info["http_requests"] >= 1 and "Cart (5 items)" in _page(added)
        assert env.cart() == {"bac04": 5}
        done = env.step('answer "done"')
        assert done.done and done.reward == 1.0
        # still an error to type into a link, with or without submitting
        env.reset(task)
        wrong = env.step('type 1 "x"')
        assert wrong.info["invalid_actions"] == 1 and "is a link, not a text field" in _page(wrong)
    finally:
        env.close()
    plain = WebEnv(kinds=["buy"])
    try:
        plain.reset(_task(goal, "train", ()))
        typed = plain.step('type 9 "Voyager Backpack"')
        assert typed.info["http_requests"] == 0 and _page(typed).startswith("Typed into [9].\nURL: /\n")
    finally:
        plain.close()


def test_type_submits_tells_the_model_and_its_demonstrations_search_in_one_action():
    env = WebEnv(kinds=["color"], demonstrations=2, type_submits=True)
    try:
        tasks = env.tasks("train") + env.tasks("eval")
        assert all(t.prompt[0] == {"role": "system", "content": SYSTEM_PROMPT_TYPE_SUBMITS} for t in tasks)
        assert "and submit it (like pressing Enter)" in SYSTEM_PROMPT_TYPE_SUBMITS
        assert "(then click a button to submit)" not in SYSTEM_PROMPT_TYPE_SUBMITS
        episodes = _episodes(tasks[0].prompt)
        assert len(episodes) == 2 and len(tasks) == 36 + 10
        for turns in episodes:  # every colour route is the same 3 actions: search, open the hit, answer
            name = re.match(r"Goal: What color is the (.+)\? Answer", turns[0]["content"]).group(1)
            actions = [m["content"] for m in turns[1::2]]
            assert actions[:2] == [f'type 9 "{name}"', "click 1"] and re.fullmatch(r'answer "\w+"', actions[2])
            color = re.search(r"^Color: (\w+)$", turns[-2]["content"], re.M).group(1)
            assert actions[2] == f'answer "{color}"'
        assert env.demonstration_turns()[1].isdisjoint(t.id for t in tasks)
    finally:
        env.close()


def test_every_goals_route_with_type_submits_succeeds_with_one_action_less_per_search():
    player = WebEnv(max_turns=100, type_submits=True)
    try:
        for goal in goals():
            plain, steps = web_demos.plan(goal), web_demos.plan(goal, type_submits=True)
            turns = web_demos.play(player, _task(goal, "train", ()), steps)  # raises unless reward 1
            assert len(turns) == 2 * len(steps)
            assert not any(a[0] == "type" and b[:1] == ("click",) and b[1].startswith("(button: ")
                           for a, b in zip(steps, steps[1:]))
            if goal["kind"] == "color":
                assert len(steps) == 3 and steps[0][0] == "type"
            else:  # each type + button click became one type
                assert len(steps) == len(plain) - sum(a[0] == "type" for a in plain)
    finally:
        player.close()
