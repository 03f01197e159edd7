"""Tools for the tool-use environment: JSON-schema declared, arguments validated.

Built-in tools: ``calculator`` (arithmetic through a whitelisting AST evaluator — never
``eval``), ``search`` (keyword search over a small local document collection) and a
key-value store (``kv_get``, ``kv_set``, ``kv_keys``). Every failure a model can cause
raises ``ToolError`` with a machine-readable ``code``; the environment turns it into a
structured error observation.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence


class ToolError(Exception):
    """A tool call the environment refuses or a tool that failed; ``code`` names the kind.

    Codes: ``malformed_json``, ``bad_call``, ``unknown_tool``, ``invalid_arguments``,
    ``oversized``, ``too_many_calls``, ``tool_failed``.
    """

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


# ----------------------------------------------------------------------------- schemas

_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    # an int is always finite (math.isfinite raises OverflowError on one beyond the float range)
    "number": lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool)
                         and (isinstance(v, int) or math.isfinite(v))),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate(value: Any, schema: Mapping[str, Any], path: str = "arguments") -> None:
    """Checks ``value`` against a JSON-schema subset; raises ``ToolError("invalid_arguments")``.

    Supported keywords: ``type`` (one or a list), ``properties``, ``required``,
    ``additionalProperties`` (bool), ``enum``, ``minLength``/``maxLength``,
    ``minimum``/``maximum``, ``items``, ``maxItems``.
    """
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_JSON_TYPES[t](value) for t in names):
            raise ToolError("invalid_arguments", f"{path}: expected {' or '.join(names)}, got {_json_type(value)}")
    if "enum" in schema and value not in schema["enum"]:
        raise ToolError("invalid_arguments", f"{path}: must be one of {schema['enum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise ToolError("invalid_arguments", f"{path}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise ToolError("invalid_arguments", f"{path}: longer than {schema['maxLength']} characters")
    if _JSON_TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            raise ToolError("invalid_arguments", f"{path}: must be >= {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise ToolError("invalid_arguments", f"{path}: must be <= {schema['maximum']}")
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise ToolError("invalid_arguments", f"{path}: more than {schema['maxItems']} items")
        for i, item in enumerate(value):
            if "items" in schema:
                validate(item, schema["items"], f"{path}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", ()):
            if key not in value:
                raise ToolError("invalid_arguments", f"{path}: missing required field '{key}'")
        for key, item in value.items():
            if key in props:
                validate(item, props[key], f"{path}.{key}")
            elif schema.get("additionalProperties", True) is False:
                allowed = ", ".join(sorted(props)) or "none"
                raise ToolError("invalid_arguments", f"{path}: unexpected field '{str(key)[:40]}' (allowed: {allowed})")


def _json_type(value: Any) -> str:
    for name, check in _JSON_TYPES.items():
        if name != "number" and check(value):
            return name
    return "number" if isinstance(value, (int, float)) else type(value).__name__


@dataclass(frozen=True)
class Tool:
    """A callable the model may invoke by name.

    Attributes:
        name: The name the model uses.
        description: One sentence for the model.
        parameters: JSON schema of the ``arguments`` object.
        run: ``run(arguments, state) -> JSON-able result``; may raise ``ToolError``.
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    run: Callable[[dict, "ToolState"], Any]

    def schema(self) -> dict[str, Any]:
        """The OpenAI/Hermes function declaration: ``{"type": "function", "function": {...}}``."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": dict(self.parameters)}}


@dataclass
class ToolState:
    """Per-episode mutable state shared by the tools (the key-value store)."""

    store: dict[str, str] = field(default_factory=dict)
    documents: Sequence[Mapping[str, str]] = ()
    max_keys: int = 64


# ----------------------------------------------------------------------------- calculator

_BIN_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY_OPS: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs, "round": round, "min": min, "max": max, "sqrt": math.sqrt, "floor": math.floor,
    "ceil": math.ceil, "log": math.log, "log10": math.log10, "exp": math.exp,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}
_MAX_MAGNITUDE = 1e15 * 1e15  # 1e30: beyond any answer here; stops 9**9**9-style blowups
_MAX_NODES = 100


def evaluate_expression(expression: str) -> int | float:
    """Evaluates arithmetic on numbers: ``+ - * / // % **``, parentheses, ``abs round min max
    sqrt floor ceil log log10 exp``, ``pi`` and ``e``. Anything else is refused.

    Raises:
        ToolError: ``invalid_arguments`` for syntax the evaluator refuses, ``tool_failed``
            for math errors (division by zero, overflow, domain errors).
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ToolError("invalid_arguments", f"expression: not valid arithmetic ({type(exc).__name__})") from None
    if sum(1 for _ in ast.walk(tree)) > _MAX_NODES:
        raise ToolError("invalid_arguments", f"expression: more than {_MAX_NODES} syntax nodes")
    try:
        value = _eval(tree.body)
    except ToolError:
        raise
    except (ZeroDivisionError, OverflowError, ValueError, TypeError, RecursionError) as exc:
        raise ToolError("tool_failed", f"calculator: {type(exc).__name__}: {exc}") from None
    return _check_magnitude(value)


def _check_magnitude(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ToolError("tool_failed", "calculator: result is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("tool_failed", "calculator: result is not finite")
    if abs(value) > _MAX_MAGNITUDE:
        raise ToolError("tool_failed", "calculator: result too large")
    return value


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ToolError("invalid_arguments", f"expression: only numbers are allowed, not {node.value!r:.40}")
        return _check_magnitude(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or (abs(left) > 1e6 and abs(right) > 2)):
            raise ToolError("tool_failed", "calculator: exponent too large")
        return _check_magnitude(_BIN_OPS[type(node.op)](left, right))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        raise ToolError("invalid_arguments", "expression: '^' is not a power here; use '**'")
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
        return _UNARY_OPS[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
            and not node.keywords and 0 < len(node.args) <= 4):
        return _check_magnitude(_FUNCTIONS[node.func.id](*[_eval(a) for a in node.args]))
    allowed = "numbers, + - * / // % **, parentheses, " + ", ".join(sorted(_FUNCTIONS)) + ", pi, e"
    raise ToolError("invalid_arguments", f"expression: {type(node).__name__} is not allowed (allowed: {allowed})")


def _calculator(args: dict, state: ToolState) -> dict[str, Any]:
    value = evaluate_expression(args["expression"])
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    elif isinstance(value, float):
        value = float(f"{value:.12g}")
    return {"result": value}


# ----------------------------------------------------------------------------- search

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("a an the of in on at to is are was were for and or what which who how many much does do by with".split())


def _terms(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


def _search(args: dict, state: ToolState) -> dict[str, Any]:
    query = set(_terms(args["query"]))
    if not query:
        raise ToolError("invalid_arguments", "arguments.query: no searchable words")
    scored = []
    for doc in state.documents:
        title, text = set(_terms(doc["title"])), _terms(doc["text"])
        score = 3 * len(query & title) + len(query & set(text))
        if score:
            scored.append((-score, doc["id"], doc))
    scored.sort(key=lambda item: (item[0], item[1]))
    top = [{"id": d["id"], "title": d["title"], "text": d["text"]} for _, _, d in scored[: args.get("top_k", 2)]]
    return {"results": top}


# ----------------------------------------------------------------------------- key-value store


def _kv_get(args: dict, state: ToolState) -> dict[str, Any]:
    key = args["key"]
    if key not in state.store:
        raise ToolError("tool_failed", f"kv_get: no key '{key}' (use kv_keys to list keys)")
    return {"key": key, "value": state.store[key]}


def _kv_set(args: dict, state: ToolState) -> dict[str, Any]:
    key, value = args["key"], args["value"]
    if key not in state.store and len(state.store) >= state.max_keys:
        raise ToolError("tool_failed", f"kv_set: the store is full ({state.max_keys} keys)")
    state.store[key] = value if isinstance(value, str) else _format_number(value)
    return {"ok": True, "key": key}


def _kv_keys(args: dict, state: ToolState) -> dict[str, Any]:
    prefix = args.get("prefix", "")
    return {"keys": sorted(k for k in state.store if k.startswith(prefix))}


def _format_number(value: int | float) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


_KEY = {"type": "string", "minLength": 1, "maxLength": 64}

BUILTIN_TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool("calculator", "Evaluate an arithmetic expression, e.g. '(12.5 + 3) * 4' or 'sqrt(2) / 3'.",
             {"type": "object", "properties": {"expression": {"type": "string", "minLength": 1, "maxLength": 200}},
              "required": ["expression"], "additionalProperties": False}, _calculator),
        Tool("search", "Search the document collection; returns the best matching documents.",
             {"type": "object", "properties": {"query": {"type": "string", "minLength": 1, "maxLength": 200},
                                               "top_k": {"type": "integer", "minimum": 1, "maximum": 5}},
              "required": ["query"], "additionalProperties": False}, _search),
        Tool("kv_get", "Read the value stored under a key.",
             {"type": "object", "properties": {"key": _KEY}, "required": ["key"], "additionalProperties": False},
             _kv_get),
        Tool("kv_set", "Store a value (string or number) under a key.",
             {"type": "object", "properties": {"key": _KEY, "value": {"type": ["string", "number"], "maxLength": 200}},
              "required": ["key", "value"], "additionalProperties": False}, _kv_set),
        Tool("kv_keys", "List the keys in the store, optionally only those starting with a prefix.",
             {"type": "object", "properties": {"prefix": {"type": "string", "maxLength": 64}},
              "additionalProperties": False}, _kv_keys),
    )
}
