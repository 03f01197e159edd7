"""Tools and tool calls at the policy endpoint: which tool-call format a model family samples
(read off its chat template), turning a sampled reply into OpenAI ``tool_calls``, and checking
the request's ``tools`` / ``tool_choice`` fields.

Parsing never constrains decoding and never loses sampled text: a reply that is not exactly a
well-formed tool call of the family's format comes back whole as plain ``content``.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

FORMATS = ("hermes", "llama3-json", "mistral", "none")
"""Tool-call formats that :func:`parse_tool_calls` reads:

* ``"hermes"``: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks, anywhere in
  the reply (Hermes 2 Pro / 3, Qwen2.5, Qwen3, SmolLM3);
* ``"llama3-json"``: the whole reply is ``{"name": ..., "parameters": {...}}`` (Llama 3.1 / 3.2),
  optionally after ``<|python_tag|>``, several calls separated by ``;``;
* ``"mistral"``: ``[TOOL_CALLS]`` then a JSON list of ``{"name": ..., "arguments": {...}}``;
* ``"none"``: the family has no tool-call format; every reply is text.
"""

TOOL_CHOICES = ("none", "auto", "required")

_HERMES_OPEN, _HERMES_CLOSE = "<tool_call>", "</tool_call>"
_PYTHON_TAG = "<|python_tag|>"
_MISTRAL_TAG = "[TOOL_CALLS]"
_MENTIONS_TOOLS = re.compile(r"\btools\b")


@dataclass(frozen=True)
class ParsedReply:
    """A sampled reply read as an OpenAI assistant message.

    ``content``: the text outside the tool calls (stripped; ``None`` when there is none), or the
    whole sampled text, unchanged, when the reply holds no tool call. ``tool_calls``: OpenAI
    tool-call dicts ``{"id", "type": "function", "function": {"name", "arguments": <JSON str>}}``
    in sampled order. ``text``: the sampled text it was read from (not part of equality), which
    :func:`apply_tool_choice` falls back to.
    """

    content: str | None
    tool_calls: tuple[dict, ...] = ()
    text: str | None = field(default=None, compare=False, repr=False)


def detect_format(chat_template: str | Mapping[str, str] | None) -> str:
    """The tool-call format (one of :data:`FORMATS`) a model family samples, judged from the text
    of its chat template. The first rule that matches wins:

    1. the template mentions ``<tool_call>`` -> ``"hermes"`` (Hermes, Qwen2.5, Qwen3, SmolLM3);
    2. it mentions ``<|python_tag|>``, or both ``"parameters"`` and ``<|start_header_id|>``
       -> ``"llama3-json"`` (Llama 3.1 / 3.2 / 3.3);
    3. it mentions ``[TOOL_CALLS]`` -> ``"mistral"``;
    4. it renders ``tools`` at all (the word ``tools`` appears) -> ``"hermes"``, the format most
       tool-tuned open models were trained on;
    5. otherwise (``None`` and ``""`` included) -> ``"none"``.

    A mapping of named templates (some tokenizers carry ``{"default": ..., "tool_use": ...}``) is
    judged by all of its templates together. Raises ``TypeError`` for anything else.
    """
    if chat_template is None:
        return "none"
    if isinstance(chat_template, Mapping):
        text = "\n".join(v for v in chat_template.values() if isinstance(v, str))
    elif isinstance(chat_template, str):
        text = chat_template
    else:
        raise TypeError("chat_template: expected a string, a mapping of named templates or None, "
                        f"not {type(chat_template).__name__}")
    if _HERMES_OPEN in text:
        return "hermes"
    if _PYTHON_TAG in text or ('"parameters"' in text and "<|start_header_id|>" in text):
        return "llama3-json"
    if _MISTRAL_TAG in text:
        return "mistral"
    if _MENTIONS_TOOLS.search(text):
        return "hermes"
    return "none"


class _NotACall(ValueError):
    """The reply is not a well-formed tool call of the format: it stays text."""


def _reject_constant(name: str) -> Any:
    # NaN / Infinity are not JSON; a client could not read them back.
    raise _NotACall(f"non-JSON constant {name}")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _decode_at(text: str, pos: int) -> tuple[Any, int]:
    """One JSON value starting at ``text[pos]`` (after whitespace): ``(value, end)``."""
    while pos < len(text) and text[pos].isspace():
        pos += 1
    try:
        return _DECODER.raw_decode(text, pos)
    except RecursionError as err:  # nested deeper than the interpreter's stack
        raise _NotACall("JSON nested too deep") from err
    except ValueError as err:  # JSONDecodeError, or an integer too long to convert
        raise _NotACall(str(err)) from err


def _decode_whole(text: str) -> Any:
    value, end = _decode_at(text, 0)
    if text[end:].strip():
        raise _NotACall("text after the JSON value")
    return value


def _call(obj: Any, call_id: str) -> dict:
    """The OpenAI tool call for a decoded ``{"name": str, "arguments"|"parameters": {...}}``."""
    if not isinstance(obj, dict):
        raise _NotACall("a tool call is a JSON object")
    name = obj.get("name")
    args = obj.get("arguments", obj.get("parameters"))
    if not isinstance(name, str) or not name.strip() or not isinstance(args, dict):
        raise _NotACall("a tool call needs a string 'name' and an 'arguments' object")
    try:
        arguments = json.dumps(args, ensure_ascii=False)
        # A lone surrogate (from a "\\ud800" escape) cannot be sent as UTF-8: keep the text.
        name.encode("utf-8"), arguments.encode("utf-8")
    except (RecursionError, UnicodeEncodeError, ValueError) as err:
        raise _NotACall(str(err)) from err
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _parse_hermes(text: str, id_prefix: str) -> ParsedReply:
    # Each block's JSON is decoded in place, so a "</tool_call>" inside a JSON string is data.
    outside, calls, pos = [], [], 0
    while (start := text.find(_HERMES_OPEN, pos)) >= 0:
        outside.append(text[pos:start])
        obj, end = _decode_at(text, start + len(_HERMES_OPEN))
        while end < len(text) and text[end].isspace():
            end += 1
        if not text.startswith(_HERMES_CLOSE, end):
            raise _NotACall("<tool_call> not closed right after its JSON")
        calls.append(_call(obj, f"{id_prefix}_{len(calls)}"))
        pos = end + len(_HERMES_CLOSE)
    outside.append(text[pos:])
    if not calls:
        raise _NotACall("no <tool_call> block")
    rest = "".join(outside)
    if _HERMES_CLOSE in rest:
        raise _NotACall("stray </tool_call>")
    return ParsedReply(rest.strip() or None, tuple(calls), text)


def _parse_llama3_json(text: str, id_prefix: str) -> ParsedReply:
    body = text.strip()
    if body.startswith(_PYTHON_TAG):
        body = body[len(_PYTHON_TAG):].lstrip()
    if not body.startswith("{"):
        raise _NotACall("not a JSON object")
    calls, pos = [], 0
    while True:
        obj, pos = _decode_at(body, pos)
        calls.append(_call(obj, f"{id_prefix}_{len(calls)}"))
        while pos < len(body) and body[pos].isspace():
            pos += 1
        if pos == len(body):
            break
        if body[pos] != ";":
            raise _NotACall("text after the tool call")
        pos += 1
        if not body[pos:].strip():  # a trailing ";" ends the list
            break
    return ParsedReply(None, tuple(calls), text)


def _parse_mistral(text: str, id_prefix: str) -> ParsedReply:
    start = text.find(_MISTRAL_TAG)
    if start < 0:
        raise _NotACall("no [TOOL_CALLS]")
    items = _decode_whole(text[start + len(_MISTRAL_TAG):])
    if not isinstance(items, list) or not items:
        raise _NotACall("[TOOL_CALLS] needs a non-empty JSON list")
    calls = tuple(_call(item, f"{id_prefix}_{i}") for i, item in enumerate(items))
    return ParsedReply(text[:start].strip() or None, calls, text)


_PARSERS = {"hermes": _parse_hermes, "llama3-json": _parse_llama3_json, "mistral": _parse_mistral}


def parse_tool_calls(text: str, fmt: str, *, id_prefix: str = "call") -> ParsedReply:
    """Read a sampled reply ``text`` as tool calls in format ``fmt`` (one of :data:`FORMATS`).

    Tool calls get ids ``f"{id_prefix}_{i}"`` (``i`` from 0, in sampled order) and their
    arguments re-serialised as a JSON string (``ensure_ascii=False``). Anything that is not
    exactly well-formed in ``fmt`` -- invalid JSON, a call without a string ``name`` and an
    ``arguments`` object, an unclosed ``<tool_call>``, NaN, JSON nested past the interpreter's
    stack, a lone surrogate -- makes the whole reply text: ``ParsedReply(content=text)``. No
    sampled text is dropped. Never raises for any ``text``; raises ``ValueError`` only for an
    unknown ``fmt`` (a configuration error).
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt: unknown tool-call format {fmt!r}; expected one of {', '.join(FORMATS)}")
    parser = _PARSERS.get(fmt)
    if parser is None or not isinstance(text, str):
        return ParsedReply(text, (), text)
    try:
        return parser(text, id_prefix)
    except _NotACall:
        return ParsedReply(text, (), text)


def apply_tool_choice(parsed: ParsedReply, tool_choice: Any) -> ParsedReply:
    """Honour ``tool_choice`` after sampling (decoding is not constrained): with ``"none"`` a
    reply's tool calls come back as the original sampled text; any other choice leaves the reply
    unchanged (a model that ignored ``"required"`` or a named function still answers in text).
    """
    if tool_choice != "none" or not parsed.tool_calls:
        return parsed
    if parsed.text is None:
        raise ValueError("apply_tool_choice: parsed reply carries no sampled text; build it with parse_tool_calls")
    return ParsedReply(parsed.text, (), parsed.text)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def validate_tools(tools: Any) -> list[dict]:
    """Check a request's ``tools``: a list of ``{"type": "function", "function": {"name": str,
    "description"?: str, "parameters"?: dict, "strict"?: bool}}``. Returns a normalised deep copy
    (unknown keys dropped); ``None`` gives ``[]``. Raises ``ValueError`` with a one-line message
    naming the offending field path, e.g. ``tools[1].function.name: must be a non-empty string``.
    """
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ValueError(f"tools: must be a list of tool objects, not {_kind(tools)}")
    out, seen = [], set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise ValueError(f"{where}: must be an object, not {_kind(tool)}")
        if tool.get("type") != "function":
            raise ValueError(f"{where}.type: must be 'function', not {tool.get('type')!r}")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise ValueError(f"{where}.function: must be an object, not {_kind(fn)}")
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}.function.name: must be a non-empty string")
        if name in seen:
            raise ValueError(f"{where}.function.name: {name!r} is declared twice")
        seen.add(name)
        clean: dict[str, Any] = {"name": name}
        for key, kind in (("description", str), ("parameters", dict), ("strict", bool)):
            if fn.get(key) is None:
                continue
            if not isinstance(fn[key], kind):
                expected = {"str": "a string", "dict": "an object", "bool": "a boolean"}[kind.__name__]
                raise ValueError(f"{where}.function.{key}: must be {expected}, not {_kind(fn[key])}")
            try:
                clean[key] = copy.deepcopy(fn[key])
            except RecursionError:  # JSON the parser took, nested deeper than deepcopy's stack
                raise ValueError(f"{where}.function.{key}: nested too deeply") from None
        out.append({"type": "function", "function": clean})
    return out


def validate_tool_choice(tool_choice: Any, tools: list[dict]) -> Any:
    """Check a request's ``tool_choice`` against its validated ``tools``: ``"none"``, ``"auto"``,
    ``"required"`` or ``{"type": "function", "function": {"name": <a declared tool>}}``.
    ``None`` (absent) gives OpenAI's default: ``"auto"`` with tools, ``"none"`` without. Returns
    the normalised value; raises ``ValueError`` naming the offending field path.
    """
    names = [t["function"]["name"] for t in tools]
    if tool_choice is None:
        return "auto" if tools else "none"
    if isinstance(tool_choice, str):
        if tool_choice not in TOOL_CHOICES:
            raise ValueError(f"tool_choice: must be 'none', 'auto', 'required' or a function object, not {tool_choice!r}")
        if tool_choice == "required" and not tools:
            raise ValueError("tool_choice: 'required' needs at least one tool in 'tools'")
        return tool_choice
    if not isinstance(tool_choice, dict):
        raise ValueError(f"tool_choice: must be a string or an object, not {_kind(tool_choice)}")
    if tool_choice.get("type") != "function":
        raise ValueError(f"tool_choice.type: must be 'function', not {tool_choice.get('type')!r}")
    fn = tool_choice.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ValueError("tool_choice.function.name: must be a string")
    if fn["name"] not in names:
        declared = ", ".join(names) if names else "none"
        raise ValueError(f"tool_choice.function.name: {fn['name']!r} is not a declared tool (declared: {declared})")
    return {"type": "function", "function": {"name": fn["name"]}}
