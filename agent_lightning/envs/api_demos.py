"""A compact API listing and scripted worked examples for the api environment's prompt.

Every prompt token costs time when a 135M chat model learns on a CPU: the service's
OpenAPI JSON is 1,124 SmolLM2 tokens, ``brief_spec`` says the same in 154. And small
models follow a format they have *seen*: ``SOLVERS`` hold one scripted solution per task
family, which ``ApiEnv`` plays against a real ``TodoService`` on a demo-only state so the
worked examples in the prompt show exactly the observations an episode returns.

A solver is a generator: it is given the goal text, yields one action per turn and is sent
each observation's text (``HTTP <status> <reason>`` and the JSON body); its last action
is ``done`` or ``answer "N"``. Solvers read only the goal and the observations, as the
model must.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Generator, Mapping

Solver = Callable[[str], Generator[str, str, None]]


def _schema(document: Mapping[str, Any], schema: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    return document["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def _type(schema: Mapping[str, Any]) -> str:
    if "enum" in schema:
        kind = "|".join(schema["enum"])
    elif schema.get("type") == "array":
        kind = f"[{_type(schema.get('items', {}))}]"
    else:
        kind = schema.get("format") or schema.get("type", "any")
    return kind + ("|null" if schema.get("nullable") else "")


def brief_spec(document: Mapping[str, Any]) -> str:
    """The operations of an OpenAPI 3 ``document``, one line each, and one line per object schema
    of the responses, e.g. ``PATCH /todos/{id} {title, done, tags, priority, due} - change fields``."""
    lines, shown = [], []
    for path, item in document["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            query = [p for p in op.get("parameters", []) if p.get("in") == "query"]
            target = path + ("?" + "&".join(f"{p['name']}=" for p in query) if query else "")
            fields = ""
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body is not None:
                body = _schema(document, body)
                fields = " {" + ", ".join(body.get("properties", {})) + "}"
            notes = [f"{p['name']}: {p['schema']['description']}" for p in query
                     if "description" in p.get("schema", {})]
            if body is not None and body.get("required"):
                notes.append("required: " + ", ".join(body["required"]))
            summary = "; ".join([op.get("summary", ""), *notes])
            lines.append(f"{method.upper()} {target}{fields} - {summary}")
            for response in op.get("responses", {}).values():
                schema = response.get("content", {}).get("application/json", {}).get("schema", {})
                ref = schema.get("$ref") or schema.get("items", {}).get("$ref")
                if ref and ref not in shown and ref.rsplit("/", 1)[1] != "Error":
                    shown.append(ref)
    for ref in shown:
        props = _schema(document, {"$ref": ref}).get("properties", {})
        lines.append(f"{ref.rsplit('/', 1)[1]}: {{" + ", ".join(f"{k}: {_type(v)}" for k, v in props.items()) + "}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- solvers

_QUOTED = re.compile(r"'([^']*)'")
_DATE = re.compile(r"\((\d{4}-\d{2}-\d{2})\)")


def _body(text: str) -> Any:
    status, _, body = text.partition("\n")
    if not status.startswith("HTTP 2"):
        raise RuntimeError(f"api demonstration: a scripted request failed: {text[:200]}")
    return json.loads(body)


def _list(query: str) -> Generator[str, str, list[dict[str, Any]]]:
    text = yield "GET /todos" + (f"?{query}" if query else "")
    return _body(text)


def _patch(todo_id: int, fields: dict[str, Any]) -> str:
    return f"PATCH /todos/{todo_id} {json.dumps(fields)}"


def _complete_tag(goal: str) -> Generator[str, str, None]:
    for todo in (yield from _list(f"done=false&tag={_QUOTED.findall(goal)[0]}")):
        yield _patch(todo["id"], {"done": True})
    yield "done"


def _create_then_done(goal: str) -> Generator[str, str, None]:
    title, tag = _QUOTED.findall(goal)[:2]
    created = _body((yield f"POST /todos {json.dumps({'title': title, 'tags': [tag]})}"))
    yield _patch(created["id"], {"done": True})
    yield "done"


def _delete_done(goal: str) -> Generator[str, str, None]:
    for todo in (yield from _list(f"done=true&tag={_QUOTED.findall(goal)[0]}")):
        yield f"DELETE /todos/{todo['id']}"
    yield "done"


def _rename(goal: str) -> Generator[str, str, None]:
    old, new = _QUOTED.findall(goal)[:2]
    todo = next(t for t in (yield from _list("")) if t["title"] == old)
    yield _patch(todo["id"], {"title": new})
    yield "done"


def _raise_priority(goal: str) -> Generator[str, str, None]:
    for todo in (yield from _list(f"done=false&due_before={_DATE.findall(goal)[0]}")):
        if todo["priority"] != "high":
            yield _patch(todo["id"], {"priority": "high"})
    yield "done"


def _count_due(goal: str) -> Generator[str, str, None]:
    todos = yield from _list(f"done=false&due_before={_DATE.findall(goal)[0]}")
    yield f'answer "{len(todos)}"'


def _count_open_tag(goal: str) -> Generator[str, str, None]:
    todos = yield from _list(f"done=false&tag={_QUOTED.findall(goal)[0]}")
    yield f'answer "{len(todos)}"'


def _due_of(goal: str) -> Generator[str, str, None]:
    title = _QUOTED.findall(goal)[0]
    todo = next(t for t in (yield from _list("")) if t["title"] == title)
    yield f'answer "{todo["due"]}"'


SOLVERS: Mapping[str, Solver] = {
    "complete_tag": _complete_tag, "create_then_done": _create_then_done, "delete_done": _delete_done,
    "rename": _rename, "raise_priority": _raise_priority, "count_due": _count_due, "count_open_tag": _count_open_tag,
    "due_of": _due_of,
}
