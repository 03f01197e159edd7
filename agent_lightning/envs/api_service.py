"""The api environment's service: a small JSON to-do API served over real HTTP.

``TodoService`` runs a ``ThreadingHTTPServer`` on 127.0.0.1 with an ephemeral port in a
daemon thread. The API (also described by ``openapi_document()``, which the agent sees):

* ``GET /openapi.json`` — the OpenAPI 3 document;
* ``GET /todos`` — list, filtered by ``done=true|false``, ``tag=T``, ``priority=P`` and
  ``due_before=YYYY-MM-DD`` (strictly before);
* ``POST /todos`` — create from ``{"title", "tags"?, "priority"?, "due"?}`` (new todos are
  always open: ``done`` cannot be set on create) -> ``201`` with the todo;
* ``GET /todos/{id}``, ``PATCH /todos/{id}`` (any of ``title``, ``done``, ``tags``,
  ``priority``, ``due``), ``DELETE /todos/{id}`` (-> ``204``).

Errors are JSON ``{"error": "..."}`` with real statuses: 400 for invalid JSON, a body that
is not an object, unknown fields, wrong types or bad query values; 404 for unknown paths
and ids; 405 (with ``Allow``) for a method a path does not support; 413 for a body over
64 KiB. The environment seeds and reads the state in-process (``reset_state``/``snapshot``),
never through an endpoint the agent could call.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PRIORITIES = ("low", "normal", "high")
MAX_BODY_BYTES = 64 * 1024
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_FIELDS = {"title": str, "done": bool, "tags": list, "priority": str, "due": str}
_CREATE_FIELDS = ("title", "tags", "priority", "due")


class ApiError(Exception):
    """An error response: HTTP status and message (sent as ``{"error": message}``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.0 description of the service (compact: it is part of the prompt)."""
    todo = {"type": "object", "properties": {
        "id": {"type": "integer"}, "title": {"type": "string"}, "done": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "priority": {"type": "string", "enum": list(PRIORITIES)},
        "due": {"type": "string", "format": "date", "nullable": True}}}
    new = {"type": "object", "required": ["title"], "additionalProperties": False,
           "properties": {k: todo["properties"][k] for k in _CREATE_FIELDS}}
    patch = {"type": "object", "additionalProperties": False,
             "properties": {k: todo["properties"][k] for k in _FIELDS}}
    ref = {"$ref": "#/components/schemas/Todo"}
    error = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    one = {"description": "the todo", "content": {"application/json": {"schema": ref}}}
    id_param = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}

    def query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": schema}

    def body(schema: dict[str, Any]) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": schema}}}

    return {
        "openapi": "3.0.3",
        "info": {"title": "Todo API", "version": "1.0"},
        "paths": {
            "/todos": {
                "get": {"summary": "list todos (filters combine with AND)", "parameters": [
                    query("done", {"type": "boolean"}), query("tag", {"type": "string"}),
                    query("priority", {"type": "string", "enum": list(PRIORITIES)}),
                    query("due_before", {"type": "string", "format": "date", "description": "due strictly before"})],
                    "responses": {"200": {"description": "todos", "content": {"application/json": {
                        "schema": {"type": "array", "items": ref}}}}, "400": error}},
                "post": {"summary": "create a todo (always open)", "requestBody": body(new),
                         "responses": {"201": one, "400": error}},
            },
            "/todos/{id}": {
                "parameters": [id_param],
                "get": {"summary": "one todo", "responses": {"200": one, "404": error}},
                "patch": {"summary": "change fields of a todo", "requestBody": body(patch),
                          "responses": {"200": one, "400": error, "404": error}},
                "delete": {"summary": "delete a todo", "responses": {"204": {"description": "deleted"}, "404": error}},
            },
        },
        "components": {"schemas": {"Todo": todo, "NewTodo": new, "TodoPatch": patch,
                                   "Error": {"type": "object", "properties": {"error": {"type": "string"}}}}},
    }


def _validate(data: Any, allowed: tuple[str, ...], *, create: bool) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(data).__name__}")
    if create and "done" in data:
        raise ApiError(400, "field 'done' cannot be set on create (new todos are open; PATCH it afterwards)")
    for key, value in data.items():
        if key not in allowed:
            raise ApiError(400, f"unknown field '{key}' (allowed: {', '.join(allowed)})")
        kind = _FIELDS[key]
        if key == "due" and value is None:
            continue
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ApiError(400, f"field '{key}' must be a {kind.__name__}, got {json.dumps(value)[:40]}")
    if create and not isinstance(data.get("title"), str):
        raise ApiError(400, "field 'title' is required")
    if "title" in data and not 1 <= len(data["title"].strip()) <= 200:
        raise ApiError(400, "field 'title' must have 1 to 200 characters")
    if "tags" in data and not all(isinstance(t, str) and 0 < len(t) <= 40 for t in data["tags"]):
        raise ApiError(400, "field 'tags' must be a list of non-empty strings")
    if "priority" in data and data["priority"] not in PRIORITIES:
        raise ApiError(400, f"field 'priority' must be one of {', '.join(PRIORITIES)}")
    if data.get("due") is not None and not _DATE.match(data["due"]):
        raise ApiError(400, "field 'due' must be a date YYYY-MM-DD or null")
    return data


class _Store:
    """The service state; every access holds the lock (the server is threaded)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.todos: dict[int, dict[str, Any]] = {}
        self.next_id = 1

    def list(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        unknown = sorted(set(query) - {"done", "tag", "priority", "due_before"})
        if unknown:
            raise ApiError(400, f"unknown query parameter '{unknown[0]}' (allowed: done, tag, priority, due_before)")
        q = {k: v[-1] for k, v in query.items()}
        if "done" in q and q["done"] not in ("true", "false"):
            raise ApiError(400, "query parameter 'done' must be true or false")
        if "priority" in q and q["priority"] not in PRIORITIES:
            raise ApiError(400, f"query parameter 'priority' must be one of {', '.join(PRIORITIES)}")
        if "due_before" in q and not _DATE.match(q["due_before"]):
            raise ApiError(400, "query parameter 'due_before' must be a date YYYY-MM-DD")
        out = []
        for todo in self.todos.values():
            if "done" in q and todo["done"] != (q["done"] == "true"):
                continue
            if "tag" in q and q["tag"] not in todo["tags"]:
                continue
            if "priority" in q and todo["priority"] != q["priority"]:
                continue
            if "due_before" in q and not (todo["due"] is not None and todo["due"] < q["due_before"]):
                continue
            out.append(todo)
        return out

    def get(self, todo_id: int) -> dict[str, Any]:
        if todo_id not in self.todos:
            raise ApiError(404, f"todo {todo_id} not found")
        return self.todos[todo_id]

    def create(self, data: Any) -> dict[str, Any]:
        data = _validate(data, _CREATE_FIELDS, create=True)
        todo = {"id": self.next_id, "title": data["title"].strip(), "done": False, "tags": list(data.get("tags", [])),
                "priority": data.get("priority", "normal"), "due": data.get("due")}
        self.todos[self.next_id] = todo
        self.next_id += 1
        return todo

    def patch(self, todo_id: int, data: Any) -> dict[str, Any]:
        todo = self.get(todo_id)
        data = _validate(data, tuple(_FIELDS), create=False)
        todo.update({k: (v.strip() if k == "title" else list(v) if k == "tags" else v) for k, v in data.items()})
        return todo

    def delete(self, todo_id: int) -> None:
        self.get(todo_id)
        del self.todos[todo_id]


_ITEM = re.compile(r"^/todos/([^/]+)$")


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: tests and rollouts
        pass

    def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload, sort_keys=True).encode()
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise ApiError(400, "invalid Content-Length") from None
        if length > MAX_BODY_BYTES:
            raise ApiError(413, f"request body over {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(length) if length > 0 else b""
        if not raw.strip():
            raise ApiError(400, "request body must be a JSON object (it is empty)")
        try:
            return json.loads(raw.decode("utf-8"))
        # ValueError also covers ints over 4300 digits, RecursionError deep nesting: both dropped the connection
        except (ValueError, RecursionError) as exc:
            raise ApiError(400, f"invalid JSON: {exc}") from None

    def _route(self, method: str) -> tuple[int, Any]:
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        store = self.server.store
        if path == "/openapi.json":
            if method != "GET":
                raise ApiError(405, f"method {method} not allowed on {path}", {"Allow": "GET"})
            return 200, openapi_document()
        if path == "/todos":
            if method == "GET":
                with store.lock:
                    return 200, copy.deepcopy(store.list(parse_qs(parts.query, keep_blank_values=True)))
            if method == "POST":
                body = self._body()
                with store.lock:
                    return 201, copy.deepcopy(store.create(body))
            raise ApiError(405, f"method {method} not allowed on /todos", {"Allow": "GET, POST"})
        match = _ITEM.match(path)
        if match is None:
            raise ApiError(404, f"no such path {path}")
        if not match.group(1).isdigit():
            raise ApiError(404, f"todo '{match.group(1)[:40]}' not found (ids are integers)")
        todo_id = int(match.group(1))
        if method == "GET":
            with store.lock:
                return 200, copy.deepcopy(store.get(todo_id))
        if method == "PATCH":
            body = self._body()
            with store.lock:
                return 200, copy.deepcopy(store.patch(todo_id, body))
        if method == "DELETE":
            with store.lock:
                store.delete(todo_id)
            return 204, None
        raise ApiError(405, f"method {method} not allowed on /todos/{{id}}", {"Allow": "GET, PATCH, DELETE"})

    def _handle(self, method: str) -> None:
        try:
            status, payload = self._route(method)
            self._send(status, payload)
        except ApiError as exc:
            self.close_connection = True  # an unread body must not leak into the next request
            self._send(exc.status, {"error": exc.message}, exc.headers)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.store = _Store()


class TodoService:
    """The to-do API on 127.0.0.1:<ephemeral port>; ``stop()`` closes the listening socket."""

    def __init__(self) -> None:
        self._server = _Server()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"api-todos-{self.port}", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def reset_state(self, todos: list[dict[str, Any]]) -> None:
        """Replace the state by ``todos`` (ids kept); new ids continue after the largest."""
        store = self._server.store
        with store.lock:
            store.todos = {int(t["id"]): copy.deepcopy(dict(t)) for t in todos}
            store.next_id = max(store.todos, default=0) + 1

    def snapshot(self) -> list[dict[str, Any]]:
        """A deep copy of every todo, in id order."""
        store = self._server.store
        with store.lock:
            return [copy.deepcopy(store.todos[k]) for k in sorted(store.todos)]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
