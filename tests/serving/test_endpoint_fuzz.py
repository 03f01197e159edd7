"""Fuzzing the policy endpoint's HTTP surface: 1,000 request bodies, malformed and hostile,
sent as raw bytes with ``httpx`` to a real :class:`PolicyServer` over the tiny Llama.

Every answer must be below 500; every error an OpenAI error object whose ``message`` is one
line; and after the fuzz the server still samples for the fuzzed episode and for another.
The cases are a hand-written list (each naming the status it expects) plus mutations of valid
bodies drawn from ``random.Random(0)``: wrong types in every field, dropped keys, unknown roles
and content parts, NaN / ``1e999`` literals, lone surrogates, invalid UTF-8, truncated JSON.
"""

from __future__ import annotations

import copy
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

EPISODE, OTHER = "fuzz", "other"
MAX_BODY = 4 * 1024 * 1024
WORDS = ("guess", "my", "number", "between", "higher", "lower", "than", "try", "again", "answer", "one", "it")


class Raw(str):
    """A JSON token written verbatim (``NaN``, ``1e999``): not expressible as a Python value."""


def dump(value: Any, ascii_only: bool = True) -> str:
    """JSON text of ``value`` with :class:`Raw` tokens kept verbatim; ``ascii_only`` escapes lone
    surrogates as ``\\ud800`` (else they reach the bytes and make them invalid UTF-8)."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k), ensure_ascii=ascii_only)}:{dump(v, ascii_only)}"
                              for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def encode(value: Any, ascii_only: bool = True) -> bytes:
    return dump(value, ascii_only).encode("utf-8", "surrogatepass")


def nested(depth: int, inner: Any = 1) -> Any:
    for _ in range(depth):
        inner = [inner]
    return inner


@dataclass
class Case:
    """One request: ``route`` ``chat`` / ``reward`` / ``models`` (of ``episode``) or a raw path."""

    name: str
    body: bytes | None = None
    route: str = "chat"
    episode: str = EPISODE
    method: str = "POST"
    headers: dict[str, Any] = field(default_factory=dict)
    expect: int | None = None
    says: str | None = None
    chunked: bool = False


USER = {"role": "user", "content": "guess my number"}
GUESS_TOOL = {"type": "function", "function": {"name": "guess", "description": "a guess",
                                            "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "guess", "arguments": '{"n": 3}'}}


def chat(**fields: Any) -> dict:
    return {"model": "policy", "messages": [USER], **fields}


def body_cases() -> list[Case]:
    """Hand-written: one per kind of fault, with the status it must get."""
    c = [Case("valid", encode(chat()), expect=200)]
    raw = {
        "empty body": b"", "whitespace": b"  \n ", "not json": b"hello", "truncated": encode(chat())[:-3],
        "trailing garbage": encode(chat()) + b"}", "json array": b"[]", "json string": b'"x"', "json null": b"null",
        "json number": b"1", "100k [": b"[" * 100_000, "100k {": b'{"a":' * 100_000,
        "deep 990 nested messages": b'{"messages":' + b"[" * 990 + b"]" * 990 + b"}",
        "invalid utf-8": b'{"messages":[{"role":"user","content":"\xff\xfe"}]}',
        "overlong utf-8": b'{"messages":[{"role":"user","content":"\xc0\xaf"}]}',
        "raw surrogate bytes": b'{"messages":[{"role":"user","content":"\xed\xa0\x80"}]}',
        "utf-16 body": dump(chat()).encode("utf-16"), "bom": b"\xef\xbb\xbf" + encode(chat()),
        "NaN temperature": b'{"messages":[{"role":"user","content":"x"}],"temperature":NaN}',
        "Infinity top_p": b'{"messages":[{"role":"user","content":"x"}],"top_p":Infinity}',
        "1e999 max_tokens": b'{"messages":[{"role":"user","content":"x"}],"max_tokens":1e999}',
        "-1e999 seed": b'{"messages":[{"role":"user","content":"x"}],"seed":-1e999}',
        "huge int n": b'{"messages":[{"role":"user","content":"x"}],"n":' + b"9" * 4000 + b"}",
        "5000-digit max_tokens": b'{"messages":[{"role":"user","content":"x"}],"max_tokens":' + b"9" * 5000 + b"}",
        "duplicate keys": b'{"messages":[],"messages":[{"role":"user","content":"dup"}]}',
        "nul in key": b'{"mess\\u0000ages":[]}',
    }
    c += [Case(k, v, expect=400) for k, v in raw.items() if k not in ("duplicate keys", "huge int n")]
    c += [Case("duplicate keys", raw["duplicate keys"], expect=200), Case("huge int n", raw["huge int n"]),
          Case("4000-digit max_tokens", raw["huge int n"].replace(b'"n"', b'"max_tokens"'), expect=200)]
    invalid = {
        "no messages": {"model": "policy"}, "messages null": chat(messages=None), "messages empty": chat(messages=[]),
        "messages object": chat(messages={"role": "user"}), "messages string": chat(messages="hi"),
        "message not object": chat(messages=["hi"]), "unknown role": chat(messages=[{"role": "robot", "content": "x"}]),
        "role missing": chat(messages=[{"content": "x"}]), "role number": chat(messages=[{"role": 1, "content": "x"}]),
        "content number": chat(messages=[{"role": "user", "content": 3}]),
        "content object": chat(messages=[{"role": "user", "content": {"text": "x"}}]),
        "image part": chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        "audio part": chat(messages=[{"role": "user", "content": [{"type": "input_audio"}]}]),
        "part without type": chat(messages=[{"role": "user", "content": [{"text": "x"}]}]),
        "part text number": chat(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]),
        "part not object": chat(messages=[{"role": "user", "content": ["x"]}]),
        "name number": chat(messages=[{"role": "user", "content": "x", "name": 7}]),
        "tool without id": chat(messages=[USER, {"role": "tool", "content": "3"}]),
        "tool id number": chat(messages=[USER, {"role": "tool", "content": "3", "tool_call_id": 3}]),
        "tool without content": chat(messages=[USER, {"role": "tool", "tool_call_id": "a"}]),
        "user with tool_calls": chat(messages=[{"role": "user", "content": "x", "tool_calls": [CALL]}]),
        "tool_calls object": chat(messages=[USER, {"role": "assistant", "tool_calls": CALL}]),
        "tool_call not object": chat(messages=[USER, {"role": "assistant", "tool_calls": ["guess"]}]),
        "tool_call type": chat(messages=[USER, {"role": "assistant", "tool_calls": [{**CALL, "type": "code"}]}]),
        "tool_call id number": chat(messages=[USER, {"role": "assistant", "tool_calls": [{**CALL, "id": 1}]}]),
        "tool_call no function": chat(messages=[USER, {"role": "assistant", "tool_calls": [{"id": "a"}]}]),
        "tool_call empty name": chat(messages=[USER, {"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": "", "arguments": "{}"}}]}]),
        "tool_call args object": chat(messages=[USER, {"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": {"n": 1}}}]}]),
        "tools object": chat(tools=GUESS_TOOL), "tools strings": chat(tools=["guess"]),
        "tool type": chat(tools=[{**GUESS_TOOL, "type": "code_interpreter"}]),
        "tool no function": chat(tools=[{"type": "function"}]),
        "tool name missing": chat(tools=[{"type": "function", "function": {}}]),
        "tool name blank": chat(tools=[{"type": "function", "function": {"name": "  "}}]),
        "tool parameters list": chat(tools=[{"type": "function", "function": {"name": "f", "parameters": []}}]),
        "tool strict string": chat(tools=[{"type": "function", "function": {"name": "f", "strict": "yes"}}]),
        "tool declared twice": chat(tools=[GUESS_TOOL, GUESS_TOOL]),
        "tool_choice unknown tool": chat(tools=[GUESS_TOOL], tool_choice={"type": "function", "function": {"name": "nope"}}),
        "tool_choice without tools": chat(tool_choice={"type": "function", "function": {"name": "guess"}}),
        "tool_choice required, no tools": chat(tool_choice="required"),
        "tool_choice word": chat(tool_choice="always"), "tool_choice number": chat(tool_choice=1),
        "tool_choice type": chat(tools=[GUESS_TOOL], tool_choice={"type": "tool", "function": {"name": "guess"}}),
        "stream string": chat(stream="true"), "stream 1": chat(stream=1), "n=5": chat(n=5), "n=0": chat(n=0),
        "n string": chat(n="1"), "max_tokens 0": chat(max_tokens=0), "max_tokens -5": chat(max_tokens=-5),
        "max_tokens float": chat(max_tokens=4.0), "max_tokens bool": chat(max_tokens=True),
        "max_completion_tokens string": chat(max_completion_tokens="4"),
        "temperature 2.5": chat(temperature=2.5), "temperature -1": chat(temperature=-1),
        "temperature string": chat(temperature="hot"), "top_p 1.5": chat(top_p=1.5), "top_p bool": chat(top_p=True),
        "stop five": chat(stop=["a", "b", "c", "d", "e"]), "stop empty": chat(stop=""), "stop number": chat(stop=3),
        "stop list of numbers": chat(stop=[1]), "seed float": chat(seed=1.5), "seed bool": chat(seed=False),
        "unknown field": chat(foo=1), "surrogate field name": {"\ud800": 1, "messages": [USER]},
        "newline field name": {"a\nb": 1, "messages": [USER]},
        "newline n": chat(n="a\nb\r\nc\u2028d"), "surrogate n": chat(n="\ud800"),
        "unknown model": chat(model="gpt-4"), "model number": chat(model=4), "surrogate model": chat(model="\udfff"),
        "newline model": chat(model="a\nb"),
        "deep tool parameters": chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {"x": Raw(
            "[" * 600 + "]" * 600)}}}]),
    }
    statuses = {"unknown model": 404, "model number": 404, "surrogate model": 404, "newline model": 404}
    says = {"deep tool parameters": "tools[0].function.parameters: nested too deeply",
            "surrogate field name": "unknown field '\\ud800'", "newline n": "not a b", "unknown role": "messages[0].role"}
    c += [Case(k, encode(v), expect=statuses.get(k, 400), says=says.get(k)) for k, v in invalid.items()]
    valid = {
        "developer role": chat(messages=[{"role": "developer", "content": "be brief"}, USER]),
        "text parts": chat(messages=[{"role": "user", "content": [{"type": "text", "text": "guess"},
                                                                   {"type": "text", "text": "a number"}]}]),
        "assistant tool call round": chat(tools=[GUESS_TOOL], messages=[USER, {"role": "assistant", "content": None,
                                                                            "tool_calls": [CALL]},
                                                                     {"role": "tool", "tool_call_id": "call_1", "content": "higher"}]),
        "malformed arguments string": chat(messages=[USER, {"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": "{not json"}}]}, {"role": "user", "content": "go"}]),
        "tool_choice named": chat(tools=[GUESS_TOOL], tool_choice={"type": "function", "function": {"name": "guess"}}),
        "stream": chat(stream=True, stream_options={"include_usage": True}),
        "huge max_tokens": chat(max_tokens=10**30), "ignored extras": chat(metadata={"x": nested(200)}, logit_bias={}),
        "surrogate content (escaped)": chat(messages=[{"role": "user", "content": "hi \ud800 there"}]),
        "stop strings": chat(stop=["higher", "lower"], seed=-(2**80), temperature=0, top_p=0.5),
    }
    for k, v in valid.items():  # 200, or 400 where the tokenizer refuses the text (a lone surrogate)
        c.append(Case(k, encode(v), expect=None if "surrogate" in k else 200))
    big = "guess " * (1024 * 1024 // 6)
    c += [
        Case("1 MB content (context too long)", encode(chat(messages=[{"role": "user", "content": big}])), expect=400,
             says="context limit"),
        Case("1 MB unknown word", encode(chat(messages=[{"role": "user", "content": "x" * 1024 * 1024}])), expect=200),
        Case("1 MB in an ignored field", encode(chat(metadata={"note": "y" * 1024 * 1024}))),
        Case("just under the limit", encode(chat(metadata={"note": "z" * (MAX_BODY - 200)})), expect=200),
        Case("over the limit", encode(chat(metadata={"note": "z" * MAX_BODY})), expect=413),
        Case("over the limit, chunked", encode(chat(metadata={"note": "z" * MAX_BODY})), expect=413, chunked=True),
        Case("valid, chunked", encode(chat(messages=[{"role": "user", "content": "chunked"}])), expect=200, chunked=True),
    ]
    return c


def route_cases() -> list[Case]:
    good = encode(chat())
    key_cases = {"no header": {}, "wrong key": {"Authorization": "Bearer nope"}, "no scheme": {"Authorization": "KEY"},
                 "bearer only": {"Authorization": "Bearer"}, "basic": {"Authorization": "Basic dXNlcjpwYXNz"},
                 "non-ascii key": {"Authorization": b"Bearer \xff\xfe"}, "lowercase scheme": {"Authorization": "KEY_LOWER"}}
    c = [Case(f"auth: {k}", good, headers={"Authorization": None, **h}, expect=401) for k, h in key_cases.items()]
    c += [Case(f"auth on reward: {k}", b'{"reward": 1}', route="reward", headers={"Authorization": None, **h},
               expect=401) for k, h in key_cases.items()]
    c.append(Case("auth on models", route="models", method="GET", headers={"Authorization": None}, expect=401))
    for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS"):
        c.append(Case(f"{method} chat", good, method=method, expect=405))
        c.append(Case(f"{method} reward", b'{"reward": 1}', route="reward", method=method, expect=405))
    c.append(Case("POST models", good, route="models", expect=405))
    c += [Case(f"unknown episode {e!r}", good, episode=e, expect=404)
          for e in ("nope", "fuzz2", "FUZZ", "%0Aline", "a%E2%80%A8b", "%ED%A0%80", "x" * 300, "%00")]
    c += [Case(f"reward, unknown episode {e!r}", b'{"reward": 1}', route="reward", episode=e, expect=404)
          for e in ("nope", "%0A")]
    c.append(Case("models, unknown episode", route="models", episode="nope", method="GET", expect=404))
    c.append(Case("models", route="models", method="GET", expect=200))
    for path in ("/v1/chat/completions", "/", "/v2/chat/completions", "/rollouts/fuzz/v1/completions",
                 "/rollouts/fuzz/v1/embeddings", "/rollouts//v1/chat/completions", "/rollouts/fuzz/v1/chat/completions/x",
                 "/%0A%0D", "/%ED%A0%80"):
        c.append(Case(f"path {path}", good, route=path, expect=404))
    rewards = {"[]": b"[]", "string": b'"1"', "empty": b"{}", "reward string": b'{"reward": "1"}',
               "reward NaN": b'{"reward": NaN}', "reward Infinity": b'{"reward": -Infinity}',
               "reward 1e999": b'{"reward": 1e999}', "reward bool": b'{"reward": true}', "reward null": b'{"reward": null}',
               "reward list": b'{"reward": [1]}', "extra key": b'{"reward": 1, "x": 2}',
               "call_id number": b'{"reward": 1, "call_id": 5}', "reward huge int": b'{"reward": 1' + b"0" * 400 + b"}",
               "not json": b"reward=1", "invalid utf-8": b'{"reward": 1, "call_id": "\xff"}', "deep": b"[" * 100_000}
    c += [Case(f"reward: {k}", v, route="reward", expect=400) for k, v in rewards.items()]
    c += [Case("reward: unknown call", b'{"reward": 1, "call_id": "nope\\nline"}', route="reward", expect=404),
          Case("reward: surrogate call", b'{"reward": 1, "call_id": "\\ud800"}', route="reward", expect=404),
          Case("reward: episode", b'{"reward": 0.5}', route="reward", expect=200),
          Case("reward: first call", b'{"reward": 1, "call_id": "chatcmpl-fuzz-0"}', route="reward", expect=200)]
    return c


# ------------------------------------------------------------------ random mutations of valid bodies

WEIRD: list[Any] = [
    None, True, False, 0, -1, 1, 5, 2**64, -(2**70), 0.5, -0.0, 3.5, Raw("NaN"), Raw("Infinity"), Raw("-Infinity"),
    Raw("1e999"), Raw("-1e999"), Raw("1e-999"), "", "x", "line\nbreak", "\ud800", "\udfff\ud800", "a\u2028b", "\x00",
    "policy", "user", "assistant", "tool", "function", "auto", "none", "required", "text", [], {}, [1, 2], {"a": 1},
    ["x"], [{}], {"type": "text"}, {"type": "function"}, nested(40), "w" * 5000,
]
TOP_FIELDS = ("model", "messages", "tools", "tool_choice", "temperature", "top_p", "max_tokens", "max_completion_tokens",
              "stream", "stream_options", "stop", "n", "seed", "user", "parallel_tool_calls", "logprobs", "metadata",
              "response_format", "functions", "function_call", "bogus", "")


def weird(rng: random.Random) -> Any:
    return copy.deepcopy(rng.choice(WEIRD))  # a fresh copy: later mutations edit values in place


def base_body(rng: random.Random) -> dict:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
    first = {"role": "user", "content": words}
    kind = rng.randrange(5)
    if kind == 0:
        return chat(messages=[first], max_tokens=rng.randint(1, 4))
    if kind == 1:
        return chat(messages=[{"role": "system", "content": "play"}, {"role": "user", "content": [
            {"type": "text", "text": words}]}], stop=["higher"], seed=rng.randint(0, 99), temperature=0.7, top_p=0.9)
    if kind == 2:
        return chat(tools=[GUESS_TOOL], tool_choice="auto", messages=[
            first, {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": words}])
    if kind == 3:
        return chat(messages=[first], stream=True, stream_options={"include_usage": True})
    return chat(messages=[{"role": "developer", "content": "d"}, {**first, "name": "ann"}], n=1, max_completion_tokens=3)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside ``value`` (keys and indices)."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, prefix + (i,))
    return out


def at(value: Any, path: tuple) -> Any:
    for p in path:
        value = value[p]
    return value


def mutate(body: dict, rng: random.Random) -> tuple[dict, str]:
    op = rng.choice(("set field", "drop", "replace", "role", "part", "tool", "tool_choice", "insert"))
    if op == "set field":
        name = rng.choice(TOP_FIELDS)
        body[name] = weird(rng)
        return body, f"{op} {name}"
    inner = [p for p in paths(body) if p]
    path = rng.choice(inner)
    parent, last = at(body, path[:-1]), path[-1]
    if op == "drop":
        del parent[last]
    elif op == "replace":
        parent[last] = weird(rng)
    elif op == "insert":
        target = at(body, rng.choice([p for p in paths(body) if isinstance(at(body, p), (dict, list))]))
        if isinstance(target, dict):
            target[rng.choice(("role", "content", "type", "name", "id", "x", "tool_calls", "function"))] = weird(rng)
        else:
            target.insert(rng.randint(0, len(target)), weird(rng))
    elif op == "role":
        message = rng.choice(body["messages"]) if isinstance(body.get("messages"), list) and body["messages"] else None
        if isinstance(message, dict):
            message["role"] = rng.choice(("robot", "", "USER", "function", None, 1, "assistant", "tool", "system"))
    elif op == "part":
        message = rng.choice(body["messages"]) if isinstance(body.get("messages"), list) and body["messages"] else None
        if isinstance(message, dict):
            message["content"] = [{"type": rng.choice(("image_url", "input_audio", "file", "refusal", None, 1, "TEXT",
                                                       "text")), "text": weird(rng)}]
    elif op == "tool":
        body["tools"] = rng.choice([[GUESS_TOOL, weird(rng)], [{"type": "function", "function": weird(rng)}],
                                    [{"type": "function", "function": {"name": weird(rng)}}],
                                    [{"type": weird(rng), "function": {"name": "g"}}],
                                    [{"type": "function", "function": {"name": "g", "parameters": weird(rng)}}]])
    else:
        body["tool_choice"] = rng.choice([{"type": "function", "function": {"name": rng.choice(("nope", "guess", ""))}},
                                          {"type": "function", "function": weird(rng)}, weird(rng)])
    return body, f"{op} {'.'.join(map(str, path))}"


def random_cases(count: int, rng: random.Random) -> list[Case]:
    out = []
    for i in range(count):
        body, notes = copy.deepcopy(base_body(rng)), []
        for _ in range(rng.randint(1, 3)):
            body, note = mutate(body, rng)
            notes.append(note)
        data = encode(body, ascii_only=rng.random() < 0.8)
        if rng.random() < 0.1:  # damage the bytes
            cut = rng.randrange(len(data))
            data = rng.choice((data[:cut], data[:cut] + b"\xff" + data[cut:], data[:cut] + b"\x00" + data[cut + 1:]))
            notes.append("bytes damaged")
        route = "reward" if rng.random() < 0.05 else "chat"
        out.append(Case(f"random {i}: {', '.join(notes)}", data, route=route))
    return out


def all_cases() -> list[Case]:
    hand = body_cases() + route_cases()
    return hand + random_cases(1000 - len(hand), random.Random(0))


# ------------------------------------------------------------------ the server

@pytest.fixture(scope="module")
def endpoint():
    import httpx

    from agent_lightning.backends.transformers.backend import TransformersBackend
    from agent_lightning.config import BackendConfig, ModelConfig
    from agent_lightning.serving.server import PolicyServer
    from agent_lightning.serving.service import PolicyService, SamplingDefaults

    backend = TransformersBackend(ModelConfig(preset="tiny", preset_options={
        "architecture": "llama", "hidden_size": 64, "num_layers": 2, "num_heads": 4}),
        BackendConfig(device="cpu", threads=1), seed=0)
    service = PolicyService(backend, SamplingDefaults(temperature=1.0, max_new_tokens=4, max_context_tokens=512),
                            max_batch=16, max_wait_s=0.002)
    server = PolicyServer(service).start()
    service.open_episode(EPISODE)
    service.open_episode(OTHER)
    client = httpx.Client(timeout=60)
    try:
        yield server, client, service.api_key
    finally:
        client.close()
        server.stop()


def send(endpoint: tuple, case: Case) -> Any:
    import httpx

    server, client, key = endpoint
    if case.route in ("chat", "reward", "models"):
        tail = {"chat": "chat/completions", "reward": "reward", "models": "models"}[case.route]
        path = f"/rollouts/{case.episode}/v1/{tail}"
    else:
        path = case.route
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    for name, value in case.headers.items():
        value = {"KEY": key, "KEY_LOWER": f"bearer {key}"}.get(value, value) if isinstance(value, str) else value
        if value is None:
            headers.pop(name)
        else:
            headers[name] = value
    # raw_path: the episode id's percent-escapes (%0A, %ED%A0%80) reach the server as written.
    url = httpx.URL(server.url).copy_with(raw_path=path.encode("ascii"))
    content: Any = case.body
    if case.chunked and content is not None:
        data = content
        content = (data[i:i + 65536] for i in range(0, len(data), 65536))
    return client.request(case.method, url, content=content, headers=headers)


def problem(case: Case, response: Any) -> str | None:
    """What is wrong with the answer to ``case``, or ``None``."""
    status = response.status_code
    if status >= 500:
        return f"status {status}: {response.text[:300]!r}"
    if case.expect is not None and status != case.expect:
        return f"status {status}, expected {case.expect}: {response.text[:300]!r}"
    if status >= 400:
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            return f"status {status} without an OpenAI error object: {response.text[:300]!r}"
        message = error.get("message") if isinstance(error, dict) else None
        if not isinstance(message, str) or not isinstance(error.get("type"), str):
            return f"error object without string message/type: {error!r}"[:400]
        if len(message.splitlines()) != 1:
            return f"error message is not one line: {message!r}"[:400]
        if case.says is not None and case.says not in message:
            return f"error message {message!r} does not say {case.says!r}"[:400]
    elif status == 200 and case.method != "OPTIONS":
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            if not response.text.rstrip().endswith("data: [DONE]"):
                return f"stream does not end with [DONE]: {response.text[-200:]!r}"
        else:
            payload = response.json()
            if case.route == "chat" and payload.get("object") != "chat.completion":
                return f"200 without a chat.completion: {response.text[:300]!r}"
    return None


def test_a_thousand_fuzzed_requests_get_4xx_errors_and_leave_the_server_working(endpoint):
    cases = all_cases()
    assert len(cases) == 1000
    statuses: Counter[int] = Counter()
    failures = []
    for case in cases:
        response = send(endpoint, case)
        statuses[response.status_code] += 1
        wrong = problem(case, response)
        if wrong is not None:
            failures.append(f"{case.name}: {wrong}")
    print(f"statuses over {len(cases)} cases: {dict(sorted(statuses.items()))}")
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures[:30])
    # The fuzz reached every kind of answer: sampling, bad requests, auth, routing, size.
    assert {200, 400, 401, 404, 405, 413} <= set(statuses), statuses
    assert statuses[200] >= 50 and statuses[400] >= 300, statuses

    for episode in (OTHER, EPISODE):
        body = encode(chat(messages=[{"role": "user", "content": f"after the fuzz, {episode}"}]))
        response = send(endpoint, Case(f"after the fuzz: {episode}", body, episode=episode))
        assert response.status_code == 200, response.text
        reply = response.json()
        assert reply["choices"][0]["message"]["role"] == "assistant"
        assert 1 <= reply["usage"]["completion_tokens"] <= 4
