"""The api environment: real HTTP, real error responses, success read from the service state.

Run as a script to measure a random policy against the scripted oracle on the held-out
tasks: ``python tests/ecosystem/test_api_env.py``.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import socket
import sys

import pytest

from agent_lightning.envs.api import DEFAULT_FAMILIES, FAMILIES, ApiEnv, parse_action

RANDOM_SEEDS = (0, 1, 2)


def _body(result):
    text = result.observation.messages[0]["content"]
    status_line, _, body = text.partition("\n")
    return status_line, (json.loads(body) if body else None)


@pytest.fixture
def env():
    environment = ApiEnv()
    yield environment
    environment.close()


@pytest.fixture
def long_env():
    environment = ApiEnv(max_turns=20)
    yield environment
    environment.close()


def _task(env, family, split="eval", index=0):
    return [t for t in env.tasks(split) if t.reference["family"] == family][index]


# ----------------------------------------------------------------------------- policies


def oracle(task):
    """Scripted policy: reads only the goal text and the observations. A generator: send it
    each observation's text, it yields the next action."""
    goal = task.reference["goal"]
    quoted = re.findall(r"'([^']*)'", goal)
    date = re.search(r"\((\d{4}-\d{2}-\d{2})\)", goal)
    family = task.reference["family"]

    def listing(query):
        text = yield f"GET /todos?{query}"
        return json.loads(text.partition("\n")[2])

    if family == "complete_tag":
        for todo in (yield from listing(f"done=false&tag={quoted[0]}")):
            yield f"PATCH /todos/{todo['id']} {{\"done\": true}}"
    elif family == "create_then_done":
        text = yield "POST /todos " + json.dumps({"title": quoted[0], "tags": [quoted[1]]})
        created = json.loads(text.partition("\n")[2])
        yield f"PATCH /todos/{created['id']}\n{{\"done\": true}}"
    elif family == "delete_done":
        for todo in (yield from listing(f"done=true&tag={quoted[0]}")):
            yield f"DELETE /todos/{todo['id']}"
    elif family == "rename":
        todo = next(t for t in (yield from listing("")) if t["title"] == quoted[0])
        yield f"PATCH /todos/{todo['id']} " + json.dumps({"title": quoted[1]})
    elif family == "raise_priority":
        for todo in (yield from listing(f"done=false&due_before={date.group(1)}")):
            yield f"PATCH /todos/{todo['id']} {{\"priority\": \"high\"}}"
    elif family == "count_due":
        yield f'answer "{len((yield from listing(f"done=false&due_before={date.group(1)}")))}"'
    elif family == "count_open_tag":
        yield f"answer \"{len((yield from listing(f'done=false&tag={quoted[0]}')))}\""
    elif family == "due_of":
        todo = next(t for t in (yield from listing("")) if t["title"] == quoted[0])
        yield f'answer "{todo["due"]}"'
    yield "done"


def random_policy(seed):
    """Random actions from a small grammar of requests and answers (ignores observations)."""
    rng = random.Random(seed)
    paths = ["/todos", "/todos?done=false", "/todos?tag=work", "/openapi.json", "/nope"] + [f"/todos/{i}" for i in range(1, 12)]
    bodies = ["", "{}", '{"done": true}', '{"priority": "high"}', '{"title": "buy milk"}', '{"tags": ["work"]}', "{bad"]
    while True:
        roll = rng.random()
        if roll < 0.1:
            yield f'answer "{rng.randint(0, 5)}"'
        elif roll < 0.15:
            yield "done"
        else:
            yield f"{rng.choice(['GET', 'POST', 'PATCH', 'DELETE', 'PUT'])} {rng.choice(paths)} {rng.choice(bodies)}".strip()


def play(env, task, policy):
    """Run ``policy`` (a generator) for one episode; the final ``StepResult``."""
    env.reset(task)
    action = next(policy)
    while True:
        result = env.step(action)
        if result.done:
            return result
        action = policy.send(result.observation.messages[0]["content"])


def success_rate(env, tasks, make_policy):
    return sum(play(env, t, make_policy(t)).info["success"] for t in tasks) / len(tasks)


# ----------------------------------------------------------------------------- tests


def test_tasks_are_deterministic_and_cover_every_family(env):
    train, held_out = env.tasks("train"), env.tasks("eval")
    assert len(train) >= 20 and len(held_out) >= 20
    assert {t.reference["family"] for t in held_out} == set(DEFAULT_FAMILIES)
    assert [t.reference for t in ApiEnv().tasks("eval")] == [t.reference for t in held_out]
    assert not {t.id for t in train} & {t.id for t in held_out}
    assert not {t.reference["goal"] + json.dumps(t.reference["todos"]) for t in train} & \
        {t.reference["goal"] + json.dumps(t.reference["todos"]) for t in held_out}


def test_first_observation_holds_the_goal_and_the_openapi_document(env):
    task = _task(env, "rename")
    text = env.reset(task).messages[-1]["content"]
    assert task.reference["goal"] in text
    document = json.loads(text.split("OpenAPI document:\n", 1)[1])
    assert document["openapi"].startswith("3.") and set(document["paths"]) == {"/todos", "/todos/{id}"}


def test_requests_go_over_http_with_real_status_codes_and_error_bodies(long_env):
    env = long_env
    task = _task(env, "complete_tag")
    env.reset(task)
    status, todos = _body(env.step("GET /todos"))
    assert status == "HTTP 200 OK" and todos == task.reference["todos"]
    status, error = _body(env.step("POST /todos {bad json"))
    assert status == "HTTP 400 Bad Request" and error["error"].startswith("invalid JSON")
    status, error = _body(env.step('POST /todos {"title": "x", "done": true}'))
    assert status == "HTTP 400 Bad Request" and "'done' cannot be set on create" in error["error"]
    status, error = _body(env.step('PATCH /todos/1 {"colour": "red"}'))
    assert status == "HTTP 400 Bad Request" and "unknown field 'colour'" in error["error"]
    status, error = _body(env.step('PATCH /todos/1 ["done"]'))
    assert status == "HTTP 400 Bad Request" and "JSON object" in error["error"]
    status, error = _body(env.step("GET /todos?done=maybe"))
    assert status == "HTTP 400 Bad Request" and "'done'" in error["error"]
    result = env.step("DELETE /todos/999")
    assert _body(result)[0] == "HTTP 404 Not Found" and result.info["http_errors"] == 1
    assert _body(env.step("PUT /todos/1 {}"))[0] == "HTTP 405 Method Not Allowed"
    status, created = _body(env.step('POST /todos {"title": "new one", "tags": ["home"]}'))
    assert status == "HTTP 201 Created" and created["id"] == len(task.reference["todos"]) + 1 and created["done"] is False
    assert env.step(f"DELETE /todos/{created['id']}").observation.messages[0]["content"] == "HTTP 204 No Content"


def test_405_carries_an_allow_header(env):
    env.reset(_task(env, "rename"))
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=5)
    conn.request("DELETE", "/todos")
    response = conn.getresponse()
    assert response.status == 405 and response.getheader("Allow") == "GET, POST"
    assert json.loads(response.read())["error"]
    conn.close()


def test_unparseable_actions_are_counted_never_raised(env):
    env.reset(_task(env, "rename"))
    for action in ["", "hello there", "GET todos", "\x00\x01", "FETCH /todos"]:
        result = env.step(action)
        assert not result.done and result.info["invalid_actions"] == 1 and result.info["http_requests"] == 0
        assert result.observation.messages[0]["content"].startswith("error:")


def test_parse_action_grammar():
    assert parse_action("```\nPATCH /todos/3 {\"done\": true}\n```") == ("request", "PATCH", "/todos/3", '{"done": true}')
    assert parse_action("I will list them.\nget /todos?tag=work") == ("request", "GET", "/todos?tag=work", "")
    assert parse_action('answer: "7"') == ("answer", "7")
    assert parse_action("Done.") == ("answer", "")
    assert parse_action("nothing here") is None


def test_success_is_read_from_the_service_state(env):
    task = _task(env, "complete_tag")
    targets = [t["id"] for t in task.reference["todos"] if not t["done"] and task.reference["goal"].split("'")[1] in t["tags"]]
    bystander = next(t["id"] for t in task.reference["todos"] if t["id"] not in targets)

    env.reset(task)
    assert env.step("done").info["success"] is False  # nothing changed yet

    env.reset(task)  # a fresh state: earlier episodes leave nothing behind
    for i in targets:
        env.step(f'PATCH /todos/{i} {{"done": true}}')
    result = env.step("done")
    assert result.info["success"] is True and result.reward == 1.0

    env.reset(task)
    for i in targets:
        env.step(f'PATCH /todos/{i} {{"done": true}}')
    env.step(f'PATCH /todos/{bystander} {{"title": "something else"}}')  # collateral change
    result = env.step("done")
    assert result.info["success"] is False and result.reward == 0.0


def test_questions_need_the_right_number(env):
    task = _task(env, "count_due")
    env.reset(task)
    assert env.step(f'answer "{task.reference["answer"] + 1}"').info["success"] is False
    env.reset(task)
    assert env.step(f'answer "{task.reference["answer"]}"').info["success"] is True


def test_the_episode_ends_after_max_turns():
    env = ApiEnv(max_turns=3)
    try:
        env.reset(env.tasks("train")[0])
        assert [env.step("GET /todos").done for _ in range(3)] == [False, False, True]
    finally:
        env.close()


@pytest.mark.parametrize("families", [None, FAMILIES])
def test_scripted_oracle_solves_every_held_out_task(families):
    env = ApiEnv(families=families)
    try:
        tasks = env.tasks("eval")
        assert {t.reference["family"] for t in tasks} == set(families or DEFAULT_FAMILIES)
        failed = [t.id for t in tasks if not play(env, t, oracle(t)).info["success"]]
    finally:
        env.close()
    assert failed == []


def test_random_policy_solves_few_held_out_tasks(env):
    tasks = env.tasks("eval")
    rates = [success_rate(env, tasks, lambda t, s=seed: random_policy(f"{s}-{t.id}")) for seed in RANDOM_SEEDS]
    assert max(rates) <= 0.2, rates


def test_the_server_stops_on_close():
    env = ApiEnv()
    env.reset(env.tasks("train")[0])
    port = env.port
    socket.create_connection(("127.0.0.1", port), timeout=5).close()  # it is listening
    env.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    env.close()  # idempotent


def _measure() -> dict:
    env = ApiEnv()
    try:
        tasks = env.tasks("eval")
        rows = {"scripted oracle": success_rate(env, tasks, oracle)}
        for seed in RANDOM_SEEDS:
            rows[f"random (seed {seed})"] = success_rate(env, tasks, lambda t, s=seed: random_policy(f"{s}-{t.id}"))
        return {"held_out_tasks": len(tasks), "max_turns": env.max_turns, "success_rate": rows}
    finally:
        env.close()


if __name__ == "__main__":
    result = _measure()
    print(f"api environment, {result['held_out_tasks']} held-out tasks, max_turns={result['max_turns']}")
    print(f"{'policy':<20} {'success':>8}")
    for name, rate in result["success_rate"].items():
        print(f"{name:<20} {rate:>8.3f}")
    json.dump(result, sys.stdout)
    print()
