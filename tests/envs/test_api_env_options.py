"""Prompt options of the api environment: a family subset, a brief API listing, worked examples."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from agent_lightning.envs.api import DEFAULT_FAMILIES, FAMILIES, ApiEnv, judge
from agent_lightning.envs.api_service import openapi_document

# sha256 of the default tasks' (id, split, reference), pinned before the options existed.
DEFAULT_FINGERPRINTS = {
    "train": (70, "9266e1cf6f010b14c01f10abc22415c08f86c47be0d7b0c6e061496ab6330c83"),
    "eval": (28, "0de217137ee017eb351d8ba26965f90b525b04ebb0c8bb953a4632a82a354a38"),
}
# sha256 of the system prompt as it was before the options existed (the default must not move).
TODAY_SYSTEM_SHA256 = "208f96591a6e0a202570e3e7756c826de8c1d66fa6e26f4173ab9c3b3e8f5f85"


def _tokenish(text: str) -> int:
    return len(re.findall(r"\w+|[^\w\s]", text))


def _fingerprint(tasks) -> str:
    blob = json.dumps([[t.id, t.split, t.reference] for t in tasks], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@pytest.mark.parametrize("options", [{}, {"families": None, "spec": "openapi", "demonstrations": 0}])
def test_defaults_give_todays_tasks(options):
    env = ApiEnv(**options)
    document = json.dumps(openapi_document(), separators=(",", ":"))
    for split, (count, fingerprint) in DEFAULT_FINGERPRINTS.items():
        tasks = env.tasks(split)
        assert len(tasks) == count and _fingerprint(tasks) == fingerprint
        assert [t.id for t in tasks[:8]] == [f"api-{split}-{i:03d}-{f}" for i, f in enumerate(DEFAULT_FAMILIES + DEFAULT_FAMILIES[:1])]
        for task in tasks:
            assert hashlib.sha256(task.prompt[0]["content"].encode()).hexdigest() == TODAY_SYSTEM_SHA256
            assert task.prompt == (
                {"role": "system", "content": task.prompt[0]["content"]},
                {"role": "user", "content": f"Today is Monday 2026-03-02.\nGoal: {task.reference['goal']}\n\n"
                                            f"OpenAPI document:\n{document}"})


def test_a_family_subset_keeps_each_index_seed_and_names_the_family():
    env = ApiEnv(families=["rename", "count_due"], num_train=6, num_eval=4)
    train = env.tasks("train")
    assert [t.id for t in train] == ["api-train-000-rename", "api-train-001-count_due", "api-train-002-rename",
                                     "api-train-003-count_due", "api-train-004-rename", "api-train-005-count_due"]
    assert [t.reference["family"] for t in env.tasks("eval")] == ["rename", "count_due"] * 2
    assert env.tasks("train") == train  # deterministic
    # Task i is seeded by split and i alone: where the default cycle puts the same family at i, it is the same task.
    default = ApiEnv().tasks("train")
    assert DEFAULT_FAMILIES[3] == "rename" and ApiEnv(families=["rename"], num_train=4).tasks("train")[3] == default[3]
    assert {json.dumps(t.reference["todos"]) for t in train}.isdisjoint(
        json.dumps(t.reference["todos"]) for t in env.tasks("eval"))  # the splits are drawn from distinct seeds


def test_the_opt_in_due_of_family_is_known_but_not_in_the_default_tasks():
    assert set(FAMILIES) - set(DEFAULT_FAMILIES) == {"due_of"}
    assert "due_of" not in {t.reference["family"] for t in ApiEnv().tasks("train")}
    tasks = ApiEnv(families=["due_of"], num_eval=12).tasks("eval")
    for task in tasks:
        title = re.findall(r"'([^']*)'", task.reference["goal"])[0]
        [todo] = [t for t in task.reference["todos"] if t["title"] == title]
        assert task.reference["answer"] == todo["due"] and re.fullmatch(r"\d{4}-\d{2}-\d{2}", todo["due"])
        assert task.reference["expected"] == task.reference["todos"]  # a question: nothing may change
    assert len({t.reference["answer"] for t in tasks}) >= 4  # the dates vary: a constant guess pays little


def test_a_due_of_answer_must_be_the_todos_date():
    task = ApiEnv(families=["due_of"], num_eval=1).tasks("eval")[0]
    reference, todos, due = task.reference, task.reference["todos"], task.reference["answer"]
    other = next(t["due"] for t in todos if t["due"] not in (None, due))
    assert judge(reference, todos, f'"{due}"') and judge(reference, todos, f"It is due {due}.")
    assert not judge(reference, todos, other) and not judge(reference, todos, None)
    assert not judge(reference, todos, due.replace("-", "/"))  # YYYY-MM-DD, as the goal asks
    assert not judge(reference, todos, f"{due} or {other}")  # the last date is the answer
    changed = [dict(t, done=not t["done"]) if t["due"] == due else t for t in todos]
    assert not judge(reference, changed, due)  # a question's state must stay as it was


def test_a_single_family_may_be_given_as_a_string():
    assert {t.reference["family"] for t in ApiEnv(families="count_open_tag", num_eval=3).tasks("eval")} == {
        "count_open_tag"}


@pytest.mark.parametrize("options, message", [
    ({"families": ["rename", "teleport"]}, r"environment.families: unknown \['teleport'\] \(known: complete_tag, "),
    ({"families": []}, r"environment.families: empty"),
    ({"spec": "yaml"}, r"environment.spec must be one of 'openapi', 'brief', got 'yaml'"),
    ({"demonstrations": -1}, r"environment.demonstrations must be >= 0, got -1"),
])
def test_bad_options_name_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        ApiEnv(**options)


def test_the_brief_spec_lists_every_operation_in_a_fraction_of_the_tokens():
    document = openapi_document()
    brief_task = ApiEnv(spec="brief", num_eval=1).tasks("eval")[0]
    full_task = ApiEnv(num_eval=1).tasks("eval")[0]
    system = brief_task.prompt[0]["content"]
    brief = system.split("\n\nAPI:\n", 1)[1]  # once, in the system message; the user turn is the goal alone
    assert brief_task.prompt[-1]["content"].splitlines()[-1].startswith("Goal: ")
    assert "API" not in brief_task.prompt[-1]["content"] and "OpenAPI document:" in full_task.prompt[-1]["content"]
    lines = brief.splitlines()
    for path, item in document["paths"].items():
        for method, op in item.items():
            if method != "parameters":
                line = next((x for x in lines if re.match(rf"{method.upper()} {re.escape(path)}[?\s]", x)), None)
                assert line is not None, f"{method.upper()} {path} missing from the brief spec"
                assert op["summary"] in line
    assert lines[0].startswith("GET /todos?done=&tag=&priority=&due_before= - list todos (filters combine with AND)")
    assert "PATCH /todos/{id} {title, done, tags, priority, due} - change fields of a todo" in lines
    assert any(x.startswith("POST /todos {title, tags, priority, due} - ") and "required: title" in x for x in lines)
    assert lines[-1] == ("Todo: {id: integer, title: string, done: boolean, tags: [string], "
                         "priority: low|normal|high, due: date|null}")
    assert "OpenAPI" not in system and "its operations are listed below" in system
    brief_chars = sum(len(m["content"]) for m in brief_task.prompt)
    full_chars = sum(len(m["content"]) for m in full_task.prompt)
    brief_tokens = sum(_tokenish(m["content"]) for m in brief_task.prompt)
    full_tokens = sum(_tokenish(m["content"]) for m in full_task.prompt)
    print(f"\nprompt: brief {brief_chars} chars / ~{brief_tokens} tokens; "
          f"openapi {full_chars} chars / ~{full_tokens} tokens")
    assert brief_tokens * 3 < full_tokens and brief_chars * 3 < full_chars


def test_worked_examples_are_chat_turns_between_the_system_prompt_and_the_task():
    env = ApiEnv(families=["rename", "count_open_tag"], spec="brief", demonstrations=3, num_train=2, num_eval=2)
    plain = ApiEnv(families=["rename", "count_open_tag"], spec="brief", num_train=2, num_eval=2)
    for split in ("train", "eval"):
        for task, bare in zip(env.tasks(split), plain.tasks(split)):
            prompt = task.prompt
            assert prompt[0] == bare.prompt[0] and prompt[0]["role"] == "system"
            assert prompt[-1] == bare.prompt[-1] and task.id == bare.id and task.reference == bare.reference
            roles = [m["role"] for m in prompt[1:-1]]
            assert roles[0] == "user" and all(a != b for a, b in zip(roles, roles[1:])), roles
    prompt = env.tasks("eval")[0].prompt
    starts = [i for i, m in enumerate(prompt) if m["role"] == "user" and m["content"].startswith("Today is ")]
    assert len(starts) == 4  # three examples, then the task
    examples = [prompt[a:b] for a, b in zip(starts, starts[1:])]
    for example, family in zip(examples, ["rename", "count_open_tag", "rename"]):
        goal = example[0]["content"].splitlines()[1]
        assert goal.startswith("Goal: Rename" if family == "rename" else "Goal: How many open todos are tagged")
        assert example[0]["content"] == f"Today is Monday 2026-03-02.\n{goal}"
        assert example[-1]["role"] == "assistant"
        finish = "done" if family == "rename" else r'answer "\d+"'
        assert re.fullmatch(finish, example[-1]["content"]), example[-1]
        assert all(m["content"].startswith("HTTP 2") for m in example[2:-1:2])
    assert examples[0][1]["content"] == "GET /todos" and examples[0][3]["content"].startswith("PATCH /todos/")
    assert examples[1][1]["content"].startswith("GET /todos?done=false&tag=")
    assert examples[0][0] != examples[2][0]  # a family's second pass is a different example
    assert env.demonstration_episodes() is env.demonstration_episodes()  # built once per instance


@pytest.mark.parametrize("family", FAMILIES)
def test_each_familys_worked_example_replays_to_success(family):
    env = ApiEnv(families=[family], spec="brief", demonstrations=1)
    [(task, turns)] = env.demonstration_episodes()
    assert task.reference["family"] == family and turns[0] == task.prompt[-1]
    assert not judge(task.reference, task.reference["todos"], None)  # doing nothing does not meet the goal
    player = ApiEnv(max_turns=10)
    try:
        player.reset(task)
        for i in range(1, len(turns), 2):
            result = player.step(turns[i]["content"])
            if i + 1 < len(turns):
                # the example shows exactly what the real service answers
                assert not result.done and result.observation.messages[0] == turns[i + 1]
        assert result.done and result.reward == 1.0 and result.info["success"]
    finally:
        player.close()
    # the example's state comes from a demo-only seed: no task of either split shares it
    for split in ("train", "eval"):
        assert all(t.reference["todos"] != task.reference["todos"] for t in ApiEnv(families=[family]).tasks(split))


def _rename_actions(env, task):
    obs = env.reset(task)
    old, new = re.findall(r"'([^']*)'", task.reference["goal"])
    listing = env.step("GET /todos").observation.messages[0]["content"]
    assert listing.startswith("HTTP 200 OK\n")
    todo = next(t for t in json.loads(listing.partition("\n")[2]) if t["title"] == old)
    return obs, todo, new


def test_an_episode_with_a_worked_example_succeeds_through_the_real_service():
    env = ApiEnv(families=["rename"], demonstrations=1)
    try:
        task = env.tasks("eval")[0]
        obs, todo, new = _rename_actions(env, task)
        assert obs.messages == task.prompt and len(obs.messages) == 8 and obs.messages[2]["content"] == "GET /todos"
        patched = env.step(f"PATCH /todos/{todo['id']} {json.dumps({'title': new})}")
        assert patched.observation.messages[0]["content"].startswith("HTTP 200 OK") and not patched.done
        result = env.step("done")
        assert result.done and result.reward == 1.0 and result.info["success"]
        # and the wrong todo renamed fails: the reward is read from the service state
        obs, todo, new = _rename_actions(env, task)
        env.step(f"PATCH /todos/{todo['id'] % len(task.reference['todos']) + 1} {json.dumps({'title': new})}")
        assert env.step("done").reward == 0.0
    finally:
        env.close()


def test_counted_todos_are_the_ones_the_answer_counts():
    from agent_lightning.envs.api import counted_todos

    tasks = ApiEnv(families=["count_due", "count_open_tag", "rename"], num_eval=30).tasks("eval")
    for task in tasks:
        counted = counted_todos(task.reference)
        if task.reference["family"] == "rename":
            assert counted is None
        else:
            assert len(counted) == task.reference["answer"] > 0
            assert counted <= {t["id"] for t in task.reference["todos"] if not t["done"]}


@pytest.mark.parametrize("family, request_for", [
    ("count_open_tag", lambda goal: "GET /todos?done=false&tag=" + re.search(r"tagged '(\w+)'", goal).group(1)),
    ("count_due", lambda goal: "GET /todos?done=false&due_before=" + re.search(r"\((\S+)\)", goal).group(1)),
])
def test_count_needs_listing_pays_a_right_count_only_after_fetching_exactly_the_counted_todos(family, request_for):
    """Through the real service: the right count after the filtered listing succeeds; the same
    count after the whole listing, after a listing without the filter, or with no request fails
    (each a right number that reading the listing did not give); without the option all pass."""
    strict, lenient = ApiEnv(families=[family], count_needs_listing=True), ApiEnv(families=[family])
    try:
        task = strict.tasks("eval")[0]
        count, goal = task.reference["answer"], task.reference["goal"]
        fitting = request_for(goal)
        unfiltered = fitting.split("?")[0] + "?" + fitting.split("&")[1]  # the tag or date filter alone
        for env in (strict, lenient):
            cases = {(fitting,): True, ("GET /todos",): False, (unfiltered,): False, (): False,
                     ("GET /todos", fitting, "GET /todos?done=true"): True}
            for requests, fits in cases.items():
                env.reset(task)
                for request in requests:
                    assert env.step(request).observation.messages[0]["content"].startswith("HTTP 200 OK")
                result = env.step(f'answer "{count}"')
                if env is strict:
                    assert result.info["listing_fits"] == int(fits), requests
                    assert result.info["success"] is fits and result.reward == float(fits), requests
                else:
                    assert "listing_fits" not in result.info and result.info["success"], requests
            env.reset(task)
            env.step(fitting)
            assert not env.step(f'answer "{count + 1}"').info["success"]  # the listing alone is not the answer
    finally:
        strict.close()
        lenient.close()
