"""OpenAI chat ``messages`` at the policy endpoint: checking and normalising what a client sends,
converting it to what Hugging Face chat templates expect, and recognising an assistant message
that a client sends back as one we returned.
"""

from __future__ import annotations

import copy
import json
from typing import Any

ROLES = ("system", "developer", "user", "assistant", "tool")

PART_SEPARATOR = "\n"
"""Between the text parts of one message's ``content`` list when they are joined (as vLLM does)."""


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _content(content: Any, where: str) -> str | None:
    """A message's ``content`` as one string (``None`` stays ``None``)."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"{where}: must be a string, null or a list of content parts, not {_kind(content)}")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise ValueError(f"{where}[{j}]: must be an object, not {_kind(part)}")
        if part.get("type") != "text":
            raise ValueError(f"{where}[{j}].type: only 'text' parts are supported, not {part.get('type')!r}")
        if not isinstance(part.get("text"), str):
            raise ValueError(f"{where}[{j}].text: must be a string, not {_kind(part.get('text'))}")
        texts.append(part["text"])
    return PART_SEPARATOR.join(texts)


def _tool_calls(calls: Any, where: str) -> list[dict]:
    if not isinstance(calls, list):
        raise ValueError(f"{where}: must be a list of tool calls, not {_kind(calls)}")
    out = []
    for j, call in enumerate(calls):
        at = f"{where}[{j}]"
        if not isinstance(call, dict):
            raise ValueError(f"{at}: must be an object, not {_kind(call)}")
        if call.get("type", "function") != "function":
            raise ValueError(f"{at}.type: must be 'function', not {call.get('type')!r}")
        if call.get("id") is not None and not isinstance(call["id"], str):
            raise ValueError(f"{at}.id: must be a string, not {_kind(call['id'])}")
        fn = call.get("function")
        if not isinstance(fn, dict):
            raise ValueError(f"{at}.function: must be an object, not {_kind(fn)}")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ValueError(f"{at}.function.name: must be a non-empty string")
        if not isinstance(fn.get("arguments"), str):
            raise ValueError(f"{at}.function.arguments: must be a JSON string, not {_kind(fn.get('arguments'))}")
        clean: dict[str, Any] = {"id": call["id"]} if call.get("id") is not None else {}
        clean.update({"type": "function", "function": {"name": fn["name"], "arguments": fn["arguments"]}})
        out.append(clean)
    return out


def _message(message: Any, i: int) -> dict:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise ValueError(f"{where}: must be an object, not {_kind(message)}")
    role = message.get("role")
    if role not in ROLES:
        raise ValueError(f"{where}.role: must be one of {', '.join(ROLES)}; not {role!r}")
    content = _content(message.get("content"), f"{where}.content")
    calls = message.get("tool_calls")
    if calls is not None and role != "assistant":
        raise ValueError(f"{where}.tool_calls: only assistant messages carry tool calls, not {role} messages")
    calls = _tool_calls(calls, f"{where}.tool_calls") if calls is not None else []
    if role == "tool" and content is None:
        raise ValueError(f"{where}.content: a tool message needs content (the tool's result)")
    out: dict[str, Any] = {"role": "system" if role == "developer" else role,
                           "content": content if content is not None or calls else ""}
    if message.get("name") is not None:
        if not isinstance(message["name"], str):
            raise ValueError(f"{where}.name: must be a string, not {_kind(message['name'])}")
        out["name"] = message["name"]
    if calls:
        out["tool_calls"] = calls
    if role == "tool":
        if not isinstance(message.get("tool_call_id"), str):
            raise ValueError(f"{where}.tool_call_id: a tool message needs a string tool_call_id")
        out["tool_call_id"] = message["tool_call_id"]
    return out


def validate_messages(messages: Any) -> list[dict]:
    """Check an OpenAI ``messages`` list and return a normalised deep copy.

    Each message: ``role`` one of :data:`ROLES`; ``content`` a string, ``None`` or a list of
    ``{"type": "text", "text": str}`` parts (joined with :data:`PART_SEPARATOR`); an assistant's
    ``tool_calls`` shaped as OpenAI's (``id`` optional, ``function.arguments`` a JSON *string*);
    a tool message's ``tool_call_id`` a string. Normalised: ``"developer"`` becomes ``"system"``;
    ``content`` is ``None`` only on an assistant message with tool calls (else ``""`` at least);
    empty ``tool_calls`` are dropped, as are keys outside role / content / name / tool_calls /
    tool_call_id (``refusal``, ``annotations``, ``audio``, ...). Raises ``ValueError`` with a
    one-line message naming the path, e.g.
    ``messages[2].content[0].type: only 'text' parts are supported, not 'image_url'``.
    """
    if not isinstance(messages, list):
        raise ValueError(f"messages: must be a non-empty list of message objects, not {_kind(messages)}")
    if not messages:
        raise ValueError("messages: must be a non-empty list of message objects, not an empty list")
    return [_message(m, i) for i, m in enumerate(messages)]


def _json_object(arguments: Any) -> Any:
    """``arguments`` parsed when it is a JSON object; otherwise ``arguments`` unchanged."""
    if not isinstance(arguments, str):
        return arguments
    try:
        parsed = json.loads(arguments)
    except (ValueError, RecursionError):
        return arguments
    return parsed if isinstance(parsed, dict) else arguments


def for_template(messages: list[dict]) -> list[dict]:
    """Validated messages as Hugging Face chat templates expect them: copies whose assistant
    ``tool_calls[*].function.arguments`` are parsed from the JSON string into a dict (kept as the
    string when not a JSON object), and whose ``None`` content is ``""``. Templates such as
    Qwen2.5's and Llama 3.1's apply ``tojson`` to the arguments, so a string would be encoded
    twice. Messages without tool calls carry no ``tool_calls`` key (Llama 3.1's template tests
    ``'tool_calls' in message``).
    """
    out = []
    for message in messages:
        m = copy.deepcopy(message)
        if m.get("content") is None:
            m["content"] = ""
        for call in m.get("tool_calls") or ():
            call["function"]["arguments"] = _json_object(call["function"]["arguments"])
        if "tool_calls" in m and not m["tool_calls"]:
            del m["tool_calls"]
        out.append(m)
    return out


def _text(content: Any) -> Any:
    if content is None:
        return ""
    if isinstance(content, list):
        try:
            return _content(content, "content")
        except ValueError:
            return content
    return content


def _same_json(x: Any, y: Any) -> bool:
    """Equality in JSON's data model: numbers by value (``1`` equals ``1.0``), but ``true`` is
    not ``1``; objects regardless of key order."""
    if isinstance(x, bool) or isinstance(y, bool):
        return isinstance(x, bool) and isinstance(y, bool) and x == y
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):
        return x == y
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same_json(x[k], y[k]) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_same_json(a, b) for a, b in zip(x, y))
    return type(x) is type(y) and x == y


def _same_arguments(a: Any, b: Any) -> bool:
    if a == b:
        return True
    try:
        return _same_json(json.loads(a), json.loads(b))
    except (TypeError, ValueError, RecursionError):
        return False


def _same_call(a: Any, b: Any) -> bool:
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    fa, fb = a.get("function"), b.get("function")
    if not isinstance(fa, dict) or not isinstance(fb, dict) or fa.get("name") != fb.get("name"):
        return False
    if a.get("id") and b.get("id") and a["id"] != b["id"]:
        return False
    return _same_arguments(fa.get("arguments"), fb.get("arguments"))


def same_message(a: dict, b: dict) -> bool:
    """Whether a message a client sent back (``a`` or ``b``) equals the assistant message we
    returned (the other): same role; same content (``None`` and ``""`` are equal, otherwise
    exact string equality); the same tool calls in order, compared by function name and by
    *parsed* JSON arguments; tool call ids compared only when both sides carry one.

    Arguments are compared parsed because clients re-serialise them: LangChain parses each
    call's arguments into a dict and writes it back with ``json.dumps`` (``{"a":1}`` comes back
    as ``{"a": 1}``), and some clients drop the ids. Never raises; a malformed message is
    simply not the same.
    """
    if not isinstance(a, dict) or not isinstance(b, dict) or a.get("role") != b.get("role"):
        return False
    if _text(a.get("content")) != _text(b.get("content")):
        return False
    calls_a, calls_b = a.get("tool_calls") or [], b.get("tool_calls") or []
    if not isinstance(calls_a, list) or not isinstance(calls_b, list) or len(calls_a) != len(calls_b):
        return False
    return all(_same_call(x, y) for x, y in zip(calls_a, calls_b))
