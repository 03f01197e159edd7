"""API interaction: reach goals by calling a real JSON to-do service over HTTP on 127.0.0.1.

Each environment instance starts its own service (``api_service.TodoService``, ephemeral
port) on first ``reset`` and stops it in ``close``. The first observation holds the goal
and the service's OpenAPI 3 document. Actions (one per turn; the first line that parses
is used):

* ``METHOD /path [JSON body]`` — ``GET``, ``POST``, ``PUT``, ``PATCH`` or ``DELETE``; the
  body may continue on the following lines. Sent as a real HTTP request; the observation
  is ``HTTP <status> <reason>`` and the JSON body, errors included (400 for bad JSON or
  validation, 404, 405...).
* ``answer "text"`` — finish with an answer (questions); ``done`` — finish (changes).

An action that parses as neither gets an ``error:`` observation and counts in
``info["invalid_actions"]``; it never ends the episode early or raises.

Goals (``tasks``; train and held-out eval splits generated from distinct seeds): mark
every open todo with a tag as done; create a todo and then mark it done (``done`` cannot
be set on create); delete done todos with a tag; rename a todo; raise the priority of open
todos due before a day; count open todos due before a day; count open todos with a tag;
and, opt-in (``families: [due_of]``; not in the default task sets), the due date of the todo
with a given title (answered ``YYYY-MM-DD``).
Success is read from the service's state when the episode ends (every todo not targeted
must be unchanged) and, for questions, from the answer. Reward: 1.0 on success, else 0.

Prompt options (defaults give the tasks above unchanged), for small models where every
prompt token costs time:

* ``families`` — tasks cycle only through these families (``None``: ``DEFAULT_FAMILIES``); the seed of task
  ``i`` of a split does not depend on them, and the id still names the family.
* ``spec`` — ``"openapi"`` (the JSON document after the goal) or ``"brief"`` (one line per
  operation and one for a Todo's fields, derived from the document by
  ``api_demos.brief_spec``, once at the end of the system message).
* ``demonstrations`` — that many worked episodes (one scripted solution per family, in
  order, cycling) as chat turns between the system prompt and the task; their
  observations come from running the actions against a real service on a demo-only state.

Judging option: ``count_needs_listing`` — a counting question (``count_due``,
``count_open_tag``) is a success only when the episode also fetched exactly the todos it
counts: a ``GET`` answered ``200`` with a listing of those todos and no other (the filtered
request the question calls for). A guessed number that happens to be right then earns
nothing. ``info["listing_fits"]`` (1 or 0, at the end of such an episode) reports it.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any, Sequence
from urllib.parse import quote

from agent_lightning.hookspecs import hookimpl
from agent_lightning.types import Message, Observation, StepResult, Task, check_names, check_split

TODAY = ("Monday", "2026-03-02")
WEEKDAYS = {"Tuesday": "2026-03-03", "Wednesday": "2026-03-04", "Thursday": "2026-03-05", "Friday": "2026-03-06"}
_DUES = ("2026-02-26", "2026-02-27", "2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04", "2026-03-05",
         "2026-03-06", "2026-03-09", "2026-03-12", None, None)
_TITLES = ("write report", "call plumber", "buy milk", "book flights", "review pull request", "pay rent",
           "renew passport", "water plants", "send invoice", "plan sprint", "fix bike", "clean garage",
           "email Anna", "update CV", "prepare slides", "order printer ink", "backup laptop", "file taxes",
           "walk the dog", "read contract", "schedule dentist", "refill prescription", "cancel gym", "repair fence")
TAGS = ("work", "home", "errands", "health", "finance")
DEFAULT_FAMILIES = ("complete_tag", "create_then_done", "delete_done", "rename", "raise_priority", "count_due",
                    "count_open_tag")
"""The families of the default task sets (``families: null``); they stay as they are so that
a default run keeps today's tasks."""
FAMILIES = (*DEFAULT_FAMILIES, "due_of")
"""Every known family: the defaults, then the opt-in ones (``due_of``: read one field of the listing)."""

SYSTEM_PROMPT = (
    "You reach goals by calling a JSON HTTP API (its OpenAPI document follows the goal). "
    "Reply with exactly one action per turn:\n"
    "METHOD /path [JSON body]   e.g. GET /todos?done=false  or  PATCH /todos/3 {\"done\": true}\n"
    "answer \"text\"              finish with an answer (for questions)\n"
    "done                       finish (for goals that change the todos)\n"
    "Each request is answered with its HTTP status and JSON body.")
SPECS = ("openapi", "brief")
# "brief" puts its listing once, at the end of the system message (the user turn is the goal alone): a 135M
# model given the listing right above its reply copied a listing line ("DELETE /todos/{id} - ...") as its
# action on every task, demonstration or not; with the listing in the system message it copies the example.
# A worked example may take at most this many actions (the finishing one included): it costs prompt tokens.
MAX_DEMO_ACTIONS = 4

_REQUEST = re.compile(r"^(GET|POST|PUT|PATCH|DELETE)\s+(\S+)\s*(.*)$", re.I)
_ANSWER = re.compile(r"^answer\s*:?\s*(?:\"(.*)\"|'(.*)'|(.*))$", re.I)
_DONE = re.compile(r"^done[.!]?$", re.I)
_INTEGER = re.compile(r"-?\d+")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TAGGED = re.compile(r"tagged '([^']+)'")


def parse_action(action: str) -> tuple[Any, ...] | None:
    """``("request", METHOD, path, body)``, ``("answer", text)`` or ``None``."""
    lines = action.splitlines()[:50]
    for i, raw in enumerate(lines):
        line = raw.strip().strip("`").strip()
        m = _REQUEST.match(line)
        if m:
            body = "\n".join([m.group(3)] + [x for x in lines[i + 1:]]).strip().strip("`").strip()
            return ("request", m.group(1).upper(), m.group(2)[:500], body[:20000])
        m = _ANSWER.match(line)
        if m:
            text = next(g for g in (m.group(1), m.group(2), m.group(3)) if g is not None)
            return ("answer", text.strip()[:500])
        if _DONE.match(line):
            return ("answer", "")
    return None


# ----------------------------------------------------------------------------- tasks


def _todos(rng: random.Random) -> list[dict[str, Any]]:
    titles = rng.sample(_TITLES, rng.randint(7, 10))
    return [{"id": i + 1, "title": t, "done": rng.random() < 0.3, "tags": sorted(rng.sample(TAGS, rng.randint(1, 2))),
             "priority": rng.choice(("low", "normal", "normal", "high")), "due": rng.choice(_DUES)}
            for i, t in enumerate(titles)]


def _open_tagged(todo: dict[str, Any], tag: str) -> bool:
    return not todo["done"] and tag in todo["tags"]


def _open_due_before(todo: dict[str, Any], date: str) -> bool:
    return not todo["done"] and todo["due"] is not None and todo["due"] < date


def _make_task(family: str, rng: random.Random) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """``(goal, initial todos, check)``; ``check`` holds the expected final state or answer."""
    while True:  # redraw until the goal is not trivially met by doing nothing
        todos = _todos(rng)
        expected = json.loads(json.dumps(todos))
        check: dict[str, Any] = {"created": [], "answer": None}
        tag = rng.choice(TAGS)
        day, date = rng.choice(sorted(WEEKDAYS.items()))
        if family == "complete_tag":
            targets = [t for t in expected if not t["done"] and tag in t["tags"]]
            goal = f"Mark every open todo tagged '{tag}' as done."
            for t in targets:
                t["done"] = True
        elif family == "create_then_done":
            title = rng.choice([t for t in _TITLES if t not in {x["title"] for x in todos}])
            targets = [None]
            goal = f"Create a todo titled '{title}' tagged '{tag}', then mark it as done."
            check["created"] = [{"title": title, "tag": tag, "done": True}]
        elif family == "delete_done":
            targets = [t for t in expected if t["done"] and tag in t["tags"]]
            goal = f"Delete every todo tagged '{tag}' that is already done."
            expected = [t for t in expected if t not in targets]
        elif family == "rename":
            targets = [rng.choice(expected)]
            new = rng.choice([t for t in _TITLES if t not in {x["title"] for x in todos}])
            goal = f"Rename the todo '{targets[0]['title']}' to '{new}'."
            targets[0]["title"] = new
        elif family == "raise_priority":
            targets = [t for t in expected if _open_due_before(t, date) and t["priority"] != "high"]
            goal = f"Set the priority of every open todo due before {day} ({date}) to high."
            for t in targets:
                t["priority"] = "high"
        elif family == "count_due":
            n = sum(1 for t in todos if _open_due_before(t, date))
            targets = [n] if n else []
            goal = f"How many open todos are due before {day} ({date})? Answer with the number."
            check["answer"] = n
        elif family == "count_open_tag":
            n = sum(1 for t in todos if _open_tagged(t, tag))
            targets = [n] if n else []
            goal = f"How many open todos are tagged '{tag}'? Answer with the number."
            check["answer"] = n
        elif family == "due_of":
            # A lookup: list the todos, find the one titled so, read its due date. The date cannot be
            # guessed (about ten dates occur), so a reward for it pays only reading the listing.
            dated = [t for t in todos if t["due"] is not None]
            targets = [rng.choice(dated)] if dated else []
            goal = (f"When is the todo '{targets[0]['title']}' due? Answer with its due date (YYYY-MM-DD)."
                    if targets else "")
            check["answer"] = targets[0]["due"] if targets else None
        else:
            raise ValueError(f"api: unknown task family '{family}' (known: {', '.join(FAMILIES)})")
        if targets:
            check["expected"] = expected
            return goal, todos, check


def spec_messages(spec: str = "openapi") -> tuple[Message, str]:
    """The system message and the user message's API part for ``spec`` ("openapi": the document after the
    goal; "brief": the listing at the end of the system message, and no API part)."""
    from agent_lightning.envs.api_demos import brief_spec
    from agent_lightning.envs.api_service import openapi_document

    document = openapi_document()
    if spec == "brief":
        intro = SYSTEM_PROMPT.replace("(its OpenAPI document follows the goal)", "(its operations are listed below)")
        return {"role": "system", "content": f"{intro}\n\nAPI:\n{brief_spec(document)}"}, ""
    return {"role": "system", "content": SYSTEM_PROMPT}, f"OpenAPI document:\n{json.dumps(document, separators=(',', ':'))}"


def build_task(task_id: str, split: str, family: str, seed: str, api: str,
               context: Sequence[Message]) -> Task:
    """The task of ``family`` drawn from ``seed``; its prompt is ``context`` then the user message."""
    goal, todos, check = _make_task(family, random.Random(seed))
    user = f"Today is {TODAY[0]} {TODAY[1]}.\nGoal: {goal}" + (f"\n\n{api}" if api else "")
    return Task(id=task_id, split=split, prompt=(*context, {"role": "user", "content": user}),
                reference={"family": family, "goal": goal, "todos": todos, **check})


def make_tasks(split: str, count: int, families: Sequence[str] = DEFAULT_FAMILIES, spec: str = "openapi",
               demonstrations: Sequence[Message] = ()) -> list[Task]:
    """``count`` tasks of ``split``, cycling through ``families``; deterministic (task ``i`` is
    seeded by split and ``i``). ``demonstrations`` go between the system and the user message."""
    system, api = spec_messages(spec)
    tasks = []
    for i in range(count):
        family = families[i % len(families)]
        tasks.append(build_task(f"api-{split}-{i:03d}-{family}", split, family, f"agent-lightning-api-{split}-{i}",
                                api, (system, *demonstrations)))
    return tasks


def counted_todos(reference: Any) -> set[int] | None:
    """The ids of the todos a counting question counts (``count_due``, ``count_open_tag``), from
    its goal and initial todos (with the predicates ``_make_task`` counts with); ``None`` for every
    other family."""
    family, goal, todos = reference["family"], reference["goal"], reference["todos"]
    if family == "count_open_tag":
        tag = _TAGGED.search(goal).group(1)
        return {t["id"] for t in todos if _open_tagged(t, tag)}
    if family == "count_due":
        date = _ISO_DATE.search(goal).group(0)
        return {t["id"] for t in todos if _open_due_before(t, date)}
    return None


def listed_ids(body: bytes) -> frozenset[int] | None:
    """The ids of a ``GET /todos`` listing (a JSON array of todos), or ``None`` for any other body."""
    try:
        items = json.loads(body)
    except ValueError:
        return None
    if not isinstance(items, list) or not all(isinstance(t, dict) and isinstance(t.get("id"), int) for t in items):
        return None
    return frozenset(t["id"] for t in items)


def judge(reference: Any, state: list[dict[str, Any]], answer: str | None) -> bool:
    """Whether the final service ``state`` (and ``answer``) meet the task's goal."""
    expected_answer = reference.get("answer")
    if isinstance(expected_answer, str):  # a date (due_of): the last date in the answer
        dates = _ISO_DATE.findall(answer or "")
        if not dates or dates[-1] != expected_answer:
            return False
    elif expected_answer is not None:  # a count
        numbers = _INTEGER.findall(answer or "")
        if not numbers or int(numbers[-1]) != expected_answer:
            return False
    by_id = {t["id"]: t for t in state}
    expected_ids = {t["id"] for t in reference["expected"]}
    if {i for i in by_id if i in {t["id"] for t in reference["todos"]}} != expected_ids:
        return False  # an existing todo was deleted that should stay (or one survived deletion)
    if any(by_id[t["id"]] != t for t in reference["expected"]):
        return False
    new = [t for t in state if t["id"] not in {x["id"] for x in reference["todos"]}]
    if len(new) != len(reference["created"]):
        return False
    return all(t["title"].strip().lower() == c["title"].lower() and c["tag"] in t["tags"] and t["done"] == c["done"]
               for t, c in zip(new, reference["created"]))


# ----------------------------------------------------------------------------- environment


class ApiEnv:
    """Reach goals by calling a real JSON to-do API (OpenAPI-described) over HTTP (multi-turn)."""

    description = "call a real local JSON to-do API (OpenAPI-described) over HTTP to reach goals (multi-turn)"

    def __init__(self, max_turns: int = 10, num_train: int = 70, num_eval: int = 28,
                 request_timeout_s: float = 5.0, max_body_chars: int = 2000,
                 families: Sequence[str] | None = None, spec: str = "openapi", demonstrations: int = 0,
                 count_needs_listing: bool = False):
        if max_turns < 1:
            raise ValueError(f"environment.max_turns must be >= 1, got {max_turns}")
        if num_train < 1 or num_eval < 1:
            raise ValueError(f"environment.num_train/num_eval must be >= 1, got {num_train}/{num_eval}")
        if spec not in SPECS:
            raise ValueError(f"environment.spec must be one of {', '.join(map(repr, SPECS))}, got {spec!r}")
        if demonstrations < 0:
            raise ValueError(f"environment.demonstrations must be >= 0, got {demonstrations}")
        self.max_turns = max_turns
        self.num_tasks = {"train": num_train, "eval": num_eval}
        self.request_timeout_s = request_timeout_s
        self.max_body_chars = max_body_chars
        self.families = check_names("families", families, FAMILIES) if families is not None else DEFAULT_FAMILIES
        self.spec = spec
        self.demonstrations = demonstrations
        self.count_needs_listing = count_needs_listing
        self._listings: list[frozenset[int]] = []  # the ids of every 200 listing this episode fetched
        self._demos: list[tuple[Task, tuple[Message, ...]]] | None = None
        self._server: Any = None
        self._task: Task | None = None
        self._turn = 0

    @property
    def port(self) -> int | None:
        return self._server.port if self._server else None

    def tasks(self, split: str) -> list[Task]:
        check_split("api", split)
        demos = [m for _, messages in self.demonstration_episodes() for m in messages]
        return make_tasks(split, self.num_tasks[split], self.families, self.spec, demos)

    def demonstration_episodes(self) -> list[tuple[Task, tuple[Message, ...]]]:
        """The worked examples: ``(demo task, its turns)`` per example, built once per instance.

        Example ``n`` solves family ``families[n % len(families)]`` with ``api_demos.SOLVERS``
        on a state drawn from a demo-only seed (the first with at most ``MAX_DEMO_ACTIONS``
        actions); the turns are the task's user message, then each action (assistant) and the
        observation (user) a real service returned for it, ending with the finishing action.
        """
        if self._demos is None:
            from agent_lightning.envs.api_demos import SOLVERS

            system, api = spec_messages(self.spec)
            player = ApiEnv(max_turns=MAX_DEMO_ACTIONS, request_timeout_s=self.request_timeout_s,
                            max_body_chars=self.max_body_chars)
            demos = []
            try:
                for n in range(self.demonstrations):
                    family = self.families[n % len(self.families)]
                    for attempt in range(100):
                        task = build_task(f"api-demo-{n:03d}-{family}", "train", family,
                                          f"agent-lightning-api-demo-{family}-{n // len(self.families)}-{attempt}",
                                          api, (system,))
                        turns = _play(player, task, SOLVERS[family](task.reference["goal"]))
                        if turns is not None:
                            demos.append((task, turns))
                            break
                    else:
                        raise RuntimeError(f"environment.demonstrations: no short worked example for '{family}'")
            finally:
                player.close()
            self._demos = demos
        return self._demos

    def reset(self, task: Task) -> Observation:
        if self._server is None:
            from agent_lightning.envs.api_service import TodoService

            self._server = TodoService()
        self._server.reset_state(task.reference["todos"])
        self._task, self._turn, self._listings = task, 0, []
        return Observation(tuple(task.prompt))

    def step(self, action: str) -> StepResult:
        if self._task is None:
            raise RuntimeError("api: step() called before reset()")
        self._turn += 1
        info: dict[str, Any] = {"success": False, "invalid_actions": 0, "http_requests": 0, "http_errors": 0}
        parsed = parse_action(action if isinstance(action, str) else str(action))
        if parsed is not None and parsed[0] == "answer":
            return self._finish(parsed[1], info)
        if parsed is None:
            info["invalid_actions"] = 1
            text = ("error: no action found. Write one request such as 'GET /todos', 'PATCH /todos/1 {\"done\": true}', "
                    "or finish with 'answer \"...\"' or 'done'.")
        elif not parsed[2].startswith("/"):
            info["invalid_actions"] = 1
            text = f"error: the path must start with '/', got {parsed[2][:60]!r}"
        else:
            text = self._request(parsed[1], parsed[2], parsed[3], info)
        if self._turn >= self.max_turns:
            return self._finish(None, info)
        return StepResult(Observation.user(text), info=info)

    def _finish(self, answer: str | None, info: dict[str, Any]) -> StepResult:
        success = judge(self._task.reference, self._server.snapshot(), answer)
        counted = counted_todos(self._task.reference) if self.count_needs_listing else None
        if counted is not None:
            fits = counted in self._listings
            info["listing_fits"] = int(fits)
            success = success and fits
        info["success"] = success
        return StepResult(None, reward=1.0 if success else 0.0, done=True, info=info)

    def _request(self, method: str, path: str, body: str, info: dict[str, Any]) -> str:
        import http.client

        payload = body.encode("utf-8", "replace") if body and method in ("POST", "PUT", "PATCH") else None
        if method in ("POST", "PUT", "PATCH") and payload is None:
            payload = b""
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn = http.client.HTTPConnection("127.0.0.1", self._server.port, timeout=self.request_timeout_s)
        info["http_requests"] = 1
        try:
            # errors="replace": a lone surrogate in the path cannot be UTF-8 encoded and must not raise
            target = quote(path, safe="/?&=%:,+-_.~@!$'()*;", errors="replace")
            conn.request(method, target, body=payload, headers=headers)
            response = conn.getresponse()
            status, reason, data = response.status, response.reason, response.read()
        except (OSError, http.client.HTTPException) as exc:
            info["http_errors"] = 1
            return f"error: request failed: {type(exc).__name__}: {exc}"
        finally:
            conn.close()
        info["http_errors"] = int(status >= 400)
        if self.count_needs_listing and method == "GET" and status == 200 and (ids := listed_ids(data)) is not None:
            self._listings.append(ids)
        text = data.decode("utf-8", "replace")
        if len(text) > self.max_body_chars:
            text = f"{text[:self.max_body_chars]}... ({len(text) - self.max_body_chars} more characters)"
        return f"HTTP {status} {reason}" + (f"\n{text}" if text else "")

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        self._task = None


def _play(env: ApiEnv, task: Task, solver: Any) -> tuple[Message, ...] | None:
    """``task``'s user message and the turns of ``solver`` played in ``env``; ``None`` when it
    needs more than ``env.max_turns`` actions. Raises when the scripted episode fails."""
    env.reset(task)
    turns: list[Message] = [task.prompt[-1]]
    action = next(solver)
    while True:
        result = env.step(action)
        turns.append({"role": "assistant", "content": action})
        if result.done:
            break
        turns.append(result.observation.messages[0])
        action = solver.send(result.observation.messages[0]["content"])
    if parse_action(action)[0] != "answer":
        return None  # ran out of turns before the finishing action
    if not result.info["success"]:
        raise RuntimeError(f"environment.demonstrations: the worked example {task.id} fails its goal")
    return tuple(turns)


@hookimpl
def register_environments(register):
    register("api", ApiEnv)
