"""Tool calls and OpenAI message shapes at the policy endpoint: the tool-call format read off a
chat template, parsing sampled replies (well-formed, malformed and hostile), the request's
``tools`` / ``tool_choice`` / ``messages`` fields, and recognising a message a client (the
``openai`` SDK, LangChain) sends back as one we returned.
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_lightning.serving.messages import for_template, same_message, validate_messages
from agent_lightning.serving.tool_calls import (
    FORMATS,
    ParsedReply,
    apply_tool_choice,
    detect_format,
    parse_tool_calls,
    validate_tool_choice,
    validate_tools,
)


def call(name: str, arguments: dict, i: int = 0, prefix: str = "call") -> dict:
    return {"id": f"{prefix}_{i}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def hermes(name: str, arguments: dict) -> str:
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


# -- detect_format ------------------------------------------------------------------------------

@pytest.mark.parametrize(("template", "fmt"), [
    (None, "none"),
    ("", "none"),
    ("{{ messages[0].content }}<tool_call>", "hermes"),
    ("{{- '<|python_tag|>' + tool_call.name }}", "llama3-json"),
    ('<|start_header_id|>{{ \'"parameters": \' }}', "llama3-json"),
    ('{{ \'"parameters": \' }}', "none"),  # without Llama's headers it is not Llama's format
    ("{{- '[TOOL_CALLS][' }}", "mistral"),
    ("{% if tools %}{{ tools | tojson }}{% endif %}", "hermes"),
    ("{% for message in messages %}{{ message.tool_calls }}{% endfor %}", "none"),
    ("{% for m in messages %}{{ m.content }}{% endfor %}", "none"),
    ("<tool_call>[TOOL_CALLS]<|python_tag|>", "hermes"),  # the first rule wins
    ({"default": "{{ messages }}", "tool_use": "{{ '<tool_call>' }}"}, "hermes"),
])
def test_detect_format(template, fmt):
    assert detect_format(template) == fmt


def test_detect_format_rejects_a_non_template():
    with pytest.raises(TypeError, match="chat_template: .* not int"):
        detect_format(3)


# -- parse_tool_calls: well-formed replies ------------------------------------------------------

def test_hermes_calls_with_content_around_them():
    text = "Let me compute.\n" + hermes("add", {"a": 1, "b": 2}) + "\n" + hermes("mul", {"a": 3, "b": 4}) + "\n"
    assert parse_tool_calls(text, "hermes") == ParsedReply("Let me compute.", (call("add", {"a": 1, "b": 2}, 0), call("mul", {"a": 3, "b": 4}, 1)))
    assert parse_tool_calls(text, "hermes").text == text


def test_hermes_only_calls_gives_no_content_and_takes_parameters_and_id_prefix():
    text = '<tool_call>{"name": "weather", "parameters": {"city": "Zürich"}}</tool_call>'
    parsed = parse_tool_calls(text, "hermes", id_prefix="chatcmpl-7")
    assert parsed.content is None
    assert parsed.tool_calls == ({"id": "chatcmpl-7_0", "type": "function",
                                  "function": {"name": "weather", "arguments": '{"city": "Zürich"}'}},)


def test_reply_without_calls_is_its_text_unchanged():
    for fmt in FORMATS:
        assert parse_tool_calls("  The answer is 5.\n", fmt) == ParsedReply("  The answer is 5.\n", ())
        assert parse_tool_calls("", fmt) == ParsedReply("", ())


def test_llama3_json_calls():
    one = '{"name": "add", "parameters": {"a": 1, "b": 2}}'
    assert parse_tool_calls(one, "llama3-json") == ParsedReply(None, (call("add", {"a": 1, "b": 2}),))
    assert parse_tool_calls(f"<|python_tag|>{one}", "llama3-json").tool_calls == (call("add", {"a": 1, "b": 2}),)
    several = '{"name": "a", "parameters": {"s": "x;y"}}; {"name": "b", "arguments": {}};'
    assert parse_tool_calls(several, "llama3-json").tool_calls == (call("a", {"s": "x;y"}, 0), call("b", {}, 1))


def test_mistral_calls():
    text = 'Calling.[TOOL_CALLS] [{"name": "add", "arguments": {"a": 1}, "id": "abcdefghi"}, {"name": "neg", "arguments": {"x": 2}}]'
    assert parse_tool_calls(text, "mistral") == ParsedReply("Calling.", (call("add", {"a": 1}, 0), call("neg", {"x": 2}, 1)))


# -- parse_tool_calls: anything malformed stays text --------------------------------------------

@pytest.mark.parametrize(("fmt", "text"), [
    ("hermes", "<tool_call>{not json}</tool_call>"),
    ("hermes", '<tool_call>["add", {"a": 1}]</tool_call>'),
    ("hermes", '<tool_call>{"arguments": {"a": 1}}</tool_call>'),
    ("hermes", '<tool_call>{"name": 7, "arguments": {"a": 1}}</tool_call>'),
    ("hermes", '<tool_call>{"name": "  ", "arguments": {"a": 1}}</tool_call>'),
    ("hermes", '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1}"}</tool_call>'),
    ("hermes", '<tool_call>{"name": "add"}</tool_call>'),
    ("hermes", '<tool_call>{"name": "add", "arguments": {"a": NaN}}</tool_call>'),
    ("hermes", '<tool_call>{"name": "add", "arguments": {"a": 1}} extra</tool_call>'),
    ("hermes", '<tool_call>{"name": "add", "arguments": {"a": 1}}'),  # unclosed
    ("hermes", '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call> done </tool_call>'),
    ("hermes", hermes("ok", {}) + "<tool_call>{broken</tool_call>"),  # one bad block spoils all
    ("hermes", '<tool_call>{"name": "add", "arguments": {"s": "\\ud800"}}</tool_call>'),  # lone surrogate
    ("llama3-json", 'Sure: {"name": "add", "parameters": {"a": 1}}'),
    ("llama3-json", '{"answer": 5}'),
    ("llama3-json", '{"name": "add", "parameters": {"a": 1}} and more'),
    ("llama3-json", '{"name": "add", "parameters": {"a": 1}'),
    ("llama3-json", '{"name": "add", "parameters": {"a": 1}}; {"bad": 1}'),
    ("mistral", "[TOOL_CALLS] []"),
    ("mistral", '[TOOL_CALLS] {"name": "add", "arguments": {"a": 1}}'),
    ("mistral", '[TOOL_CALLS] [{"name": "add", "arguments": {"a": 1}}] trailing'),
    ("mistral", '[TOOL_CALLS] [{"name": "add", "arguments": [1]}]'),
    ("none", hermes("add", {"a": 1})),
    ("hermes", '{"name": "add", "parameters": {"a": 1}}'),  # another family's format
])
def test_malformed_reply_is_plain_text(fmt, text):
    assert parse_tool_calls(text, fmt) == ParsedReply(text, ())


def test_unknown_format_is_a_configuration_error():
    with pytest.raises(ValueError, match="fmt: unknown tool-call format 'xml'"):
        parse_tool_calls("hi", "xml")


# -- parse_tool_calls: hostile input never raises -----------------------------------------------

def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


HOSTILE = [
    "<tool_call>" * 200_000,
    "</tool_call>" + "x" * 3_000_000,
    "<tool_call>" + _deep(10_000) + "</tool_call>",
    '<tool_call>{"name": "f", "arguments": {"x": ' + _deep(10_000) + "}}</tool_call>",
    '{"name": "f", "parameters": {"x": ' + _deep(10_000) + "}}",
    "[TOOL_CALLS]" + _deep(10_000),
    '[TOOL_CALLS][{"name": "f", "arguments": {"x": ' + "{\"a\": " * 10_000 + "1" + "}" * 10_000 + "}}]",
    '<tool_call>{"name": "f", "arguments": {"n": ' + "9" * 5000 + "}}</tool_call>",
    "<tool_call>\x00{\"name\": \"f\u0000\", \"arguments\": {}}</tool_call>",
    "\ud800<tool_call>{\"name\": \"\udfff\", \"arguments\": {}}</tool_call>\udc00",
    '<tool_call>{"name": "f", "arguments": {"k": "\\udfff"}}</tool_call>',
    "<|python_tag|>" * 1000,
    "<|python_tag|>{" + '"a":' * 50_000,
    "[TOOL_CALLS]" * 1000 + "[",
    "{" * 100_000,
    '{"name": "f", "parameters": {}};' * 20_000,
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("index", range(len(HOSTILE)))
def test_hostile_text_never_raises(fmt, index):
    text = HOSTILE[index]
    parsed = parse_tool_calls(text, fmt)
    _check_invariants(text, parsed)


def _check_invariants(text: str, parsed: ParsedReply) -> None:
    assert isinstance(parsed, ParsedReply)
    if not parsed.tool_calls:
        assert parsed.content == text  # no sampled text is dropped
        return
    if parsed.content is not None:  # the text outside the calls, stripped
        assert parsed.content and parsed.content == parsed.content.strip() and len(parsed.content) < len(text)
        assert "<tool_call>" not in parsed.content and "</tool_call>" not in parsed.content
    for i, c in enumerate(parsed.tool_calls):
        assert c["id"] == f"call_{i}" and c["type"] == "function"
        assert isinstance(json.loads(c["function"]["arguments"]), dict)
        c["function"]["arguments"].encode("utf-8"), c["function"]["name"].encode("utf-8")


FRAGMENTS = ["<tool_call>", "</tool_call>", "<|python_tag|>", "[TOOL_CALLS]", "{", "}", "[", "]", '"', ":", ",", ";",
             '"name"', '"arguments"', '"parameters"', '"f"', "{}", "1", "-0.5e3", "true", "null", "NaN", "\\", "\\u",
             "\\ud800", "\ud800", "\x00", "\n", " ", "é", "🙂", '{"name": "f", "arguments": {}}']


@pytest.mark.parametrize("seed", range(5))
def test_random_fragment_soup_never_raises(seed):
    rng = random.Random(seed)
    for _ in range(400):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 40)))
        for fmt in FORMATS:
            _check_invariants(text, parse_tool_calls(text, fmt))


@settings(max_examples=150, deadline=None)
@given(st.text(), st.sampled_from(FORMATS))
def test_arbitrary_text_never_raises(text, fmt):
    _check_invariants(text, parse_tool_calls(text, fmt))


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(st.text(min_size=1).filter(str.strip), st.dictionaries(st.text(), _JSON, max_size=5))
def test_arguments_round_trip_in_every_format(name, arguments):
    def valid_utf8(s: str) -> bool:
        try:
            s.encode("utf-8")
            return True
        except UnicodeEncodeError:
            return False

    obj = {"name": name, "arguments": arguments}
    for fmt, text in (("hermes", f"<tool_call>{json.dumps(obj)}</tool_call>"),
                      ("llama3-json", json.dumps({"name": name, "parameters": arguments})),
                      ("mistral", f"[TOOL_CALLS]{json.dumps([obj])}")):
        parsed = parse_tool_calls(text, fmt)
        if not valid_utf8(json.dumps(obj, ensure_ascii=False)):
            assert parsed == ParsedReply(text, ())
            continue
        assert len(parsed.tool_calls) == 1, (fmt, text)
        assert parsed.tool_calls[0]["function"]["name"] == name
        assert json.loads(parsed.tool_calls[0]["function"]["arguments"]) == arguments


# -- apply_tool_choice --------------------------------------------------------------------------

def test_tool_choice_none_returns_calls_as_the_sampled_text():
    text = "Calling. " + hermes("add", {"a": 1})
    parsed = parse_tool_calls(text, "hermes")
    assert apply_tool_choice(parsed, "none") == ParsedReply(text, ())
    for choice in ("auto", "required", {"type": "function", "function": {"name": "add"}}):
        assert apply_tool_choice(parsed, choice) is parsed
    plain = parse_tool_calls("hello", "hermes")
    assert apply_tool_choice(plain, "none") is plain
    with pytest.raises(ValueError, match="apply_tool_choice: .*no sampled text"):
        apply_tool_choice(ParsedReply(None, (call("add", {}),)), "none")


# -- validate_tools / validate_tool_choice ------------------------------------------------------

CALC = {"type": "function", "function": {"name": "calculator", "description": "Evaluate.",
                                         "parameters": {"type": "object", "properties": {"e": {"type": "string"}}}}}


def test_validate_tools_normalises_a_deep_copy():
    raw = [CALC, {"type": "function", "function": {"name": "now", "x-extra": 1, "description": None}}]
    tools = validate_tools(raw)
    assert tools == [CALC, {"type": "function", "function": {"name": "now"}}]
    tools[0]["function"]["parameters"]["properties"]["e"]["type"] = "number"
    assert CALC["function"]["parameters"]["properties"]["e"]["type"] == "string"
    assert validate_tools(None) == [] and validate_tools([]) == []


@pytest.mark.parametrize(("tools", "message"), [
    ({"type": "function"}, "tools: must be a list of tool objects, not dict"),
    (["calculator"], "tools[0]: must be an object, not str"),
    ([CALC, {"type": "retrieval", "function": {"name": "x"}}], "tools[1].type: must be 'function', not 'retrieval'"),
    ([{"type": "function"}], "tools[0].function: must be an object, not null"),
    ([CALC, {"type": "function", "function": {"name": ""}}], "tools[1].function.name: must be a non-empty string"),
    ([{"type": "function", "function": {"name": 3}}], "tools[0].function.name: must be a non-empty string"),
    ([CALC, CALC], "tools[1].function.name: 'calculator' is declared twice"),
    ([{"type": "function", "function": {"name": "f", "parameters": "{}"}}], "tools[0].function.parameters: must be an object, not str"),
    ([{"type": "function", "function": {"name": "f", "description": 5}}], "tools[0].function.description: must be a string, not int"),
])
def test_validate_tools_names_the_field(tools, message):
    with pytest.raises(ValueError) as err:
        validate_tools(tools)
    assert str(err.value) == message


def test_validate_tool_choice():
    tools = validate_tools([CALC])
    assert validate_tool_choice(None, tools) == "auto" and validate_tool_choice(None, []) == "none"
    for choice in ("none", "auto", "required"):
        assert validate_tool_choice(choice, tools) == choice
    named = {"type": "function", "function": {"name": "calculator", "extra": 1}}
    assert validate_tool_choice(named, tools) == {"type": "function", "function": {"name": "calculator"}}


@pytest.mark.parametrize(("choice", "tools", "message"), [
    ("sometimes", [CALC], "tool_choice: must be 'none', 'auto', 'required' or a function object, not 'sometimes'"),
    ("required", [], "tool_choice: 'required' needs at least one tool in 'tools'"),
    (3, [CALC], "tool_choice: must be a string or an object, not int"),
    ({"type": "tool", "function": {"name": "calculator"}}, [CALC], "tool_choice.type: must be 'function', not 'tool'"),
    ({"type": "function"}, [CALC], "tool_choice.function.name: must be a string"),
    ({"type": "function", "function": {"name": "search"}}, [CALC],
     "tool_choice.function.name: 'search' is not a declared tool (declared: calculator)"),
    ({"type": "function", "function": {"name": "search"}}, [], "tool_choice.function.name: 'search' is not a declared tool (declared: none)"),
])
def test_validate_tool_choice_names_the_field(choice, tools, message):
    with pytest.raises(ValueError) as err:
        validate_tool_choice(choice, validate_tools(tools))
    assert str(err.value) == message


# -- validate_messages / for_template -----------------------------------------------------------

TOOL_CALL = {"id": "call_0", "type": "function", "function": {"name": "calculator", "arguments": '{"e":"2+3"}'}}


def test_validate_messages_normalises():
    raw = [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}]},
        {"role": "user", "content": "2+3?", "name": "ann"},
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL], "refusal": None, "annotations": [], "audio": None},
        {"role": "tool", "tool_call_id": "call_0", "content": "5", "name": "calculator"},
        {"role": "assistant", "content": "5.", "tool_calls": []},
        {"role": "user", "content": None},
    ]
    out = validate_messages(raw)
    assert out == [
        {"role": "system", "content": "Be brief.\nUse tools."},
        {"role": "user", "content": "2+3?", "name": "ann"},
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
        {"role": "tool", "content": "5", "name": "calculator", "tool_call_id": "call_0"},
        {"role": "assistant", "content": "5."},
        {"role": "user", "content": ""},
    ]
    out[2]["tool_calls"][0]["function"]["name"] = "changed"
    assert TOOL_CALL["function"]["name"] == "calculator"


@pytest.mark.parametrize(("messages", "message"), [
    ([], "messages: must be a non-empty list of message objects, not an empty list"),
    ("hi", "messages: must be a non-empty list of message objects, not str"),
    ([{"role": "user", "content": "a"}, "b"], "messages[1]: must be an object, not str"),
    ([{"role": "function", "content": "a"}], "messages[0].role: must be one of system, developer, user, assistant, tool; not 'function'"),
    ([{"content": "a"}], "messages[0].role: must be one of system, developer, user, assistant, tool; not None"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
      {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
     "messages[2].content[0].type: only 'text' parts are supported, not 'image_url'"),
    ([{"role": "user", "content": ["a"]}], "messages[0].content[0]: must be an object, not str"),
    ([{"role": "user", "content": [{"type": "text", "text": 1}]}], "messages[0].content[0].text: must be a string, not int"),
    ([{"role": "user", "content": 5}], "messages[0].content: must be a string, null or a list of content parts, not int"),
    ([{"role": "user", "content": "a", "tool_calls": [TOOL_CALL]}], "messages[0].tool_calls: only assistant messages carry tool calls, not user messages"),
    ([{"role": "assistant", "tool_calls": {"id": "x"}}], "messages[0].tool_calls: must be a list of tool calls, not dict"),
    ([{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}],
     "messages[0].tool_calls[0].function.arguments: must be a JSON string, not dict"),
    ([{"role": "assistant", "tool_calls": [{"function": {"name": "", "arguments": "{}"}}]}],
     "messages[0].tool_calls[0].function.name: must be a non-empty string"),
    ([{"role": "assistant", "tool_calls": [{"id": 7, "function": {"name": "f", "arguments": "{}"}}]}],
     "messages[0].tool_calls[0].id: must be a string, not int"),
    ([{"role": "assistant", "tool_calls": [{"type": "code", "function": {"name": "f", "arguments": "{}"}}]}],
     "messages[0].tool_calls[0].type: must be 'function', not 'code'"),
    ([{"role": "assistant", "tool_calls": ["f"]}], "messages[0].tool_calls[0]: must be an object, not str"),
    ([{"role": "assistant", "tool_calls": [{"id": "x"}]}], "messages[0].tool_calls[0].function: must be an object, not null"),
    ([{"role": "tool", "content": "5"}], "messages[0].tool_call_id: a tool message needs a string tool_call_id"),
    ([{"role": "tool", "tool_call_id": "c"}], "messages[0].content: a tool message needs content (the tool's result)"),
    ([{"role": "user", "content": "a", "name": 1}], "messages[0].name: must be a string, not int"),
])
def test_validate_messages_names_the_path(messages, message):
    with pytest.raises(ValueError) as err:
        validate_messages(messages)
    assert str(err.value) == message


def test_openai_sdk_message_validates():
    chat = pytest.importorskip("openai.types.chat")
    sdk = chat.ChatCompletionMessage(role="assistant", content=None, tool_calls=[
        {"id": "call_0", "type": "function", "function": {"name": "calculator", "arguments": '{"e":"2+3"}'}}])
    dumped = sdk.model_dump()
    assert "refusal" in dumped and "annotations" in dumped  # the SDK adds keys we drop
    assert validate_messages([dumped]) == [{"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}]


def test_for_template_parses_arguments_and_fills_content():
    messages = validate_messages([
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [
            TOOL_CALL, {"id": "call_1", "function": {"name": "f", "arguments": "not json"}},
            {"id": "call_2", "function": {"name": "g", "arguments": "[1, 2]"}},
            {"id": "call_3", "function": {"name": "h", "arguments": _deep(5000)}}]},
        {"role": "assistant", "content": "done"},
    ])
    out = for_template(messages)
    assert out[1]["content"] == ""
    assert [c["function"]["arguments"] for c in out[1]["tool_calls"]] == [{"e": "2+3"}, "not json", "[1, 2]", _deep(5000)]
    assert "tool_calls" not in out[0] and "tool_calls" not in out[2]
    assert messages[1]["content"] is None and messages[1]["tool_calls"][0]["function"]["arguments"] == '{"e":"2+3"}'


# -- same_message -------------------------------------------------------------------------------

OURS = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_0", "type": "function", "function": {"name": "calculator", "arguments": '{"e":"2+3","n":1,"ok":true}'}}]}


def _with(arguments=None, **changes) -> dict:
    message = json.loads(json.dumps(OURS))
    if arguments is not None:
        message["tool_calls"][0]["function"]["arguments"] = arguments
    for key, value in changes.items():
        if key == "id":
            message["tool_calls"][0]["id"] = value
        elif key == "name":
            message["tool_calls"][0]["function"]["name"] = value
        else:
            message[key] = value
    return message


@pytest.mark.parametrize(("theirs", "same"), [
    (_with(), True),
    (_with('{"ok": true, "n": 1, "e": "2+3"}'), True),       # re-serialised, keys reordered
    (_with('{"e": "2+3", "n": 1.0, "ok": true}'), True),     # 1 and 1.0 are one JSON number
    (_with(content=""), True),                               # None and "" are equal
    (_with(id=None), True),                                  # the client dropped the id
    (_with(id="call_9"), False),
    (_with('{"e": "2+3", "n": 1, "ok": 1}'), False),         # true is not 1
    (_with('{"e": "2+3", "n": 2, "ok": true}'), False),
    (_with('{"e": "2+3", "n": 1}'), False),
    (_with("not json"), False),
    (_with(name="calc"), False),
    (_with(content="Calling."), False),
    (_with(role="user"), False),
    (_with(tool_calls=[]), False),
    (_with(tool_calls=OURS["tool_calls"] * 2), False),
    (_with(tool_calls="oops"), False),
])
def test_same_message(theirs, same):
    assert same_message(theirs, OURS) is same
    assert same_message(OURS, theirs) is same


def test_same_message_compares_content_exactly():
    a = {"role": "assistant", "content": "Five."}
    assert same_message(a, {"role": "assistant", "content": "Five."})
    assert not same_message(a, {"role": "assistant", "content": "Five. "})
    assert same_message({"role": "assistant", "content": [{"type": "text", "text": "Five."}]}, a)
    assert not same_message(a, "Five.")
    raw = _with('{"x": ' + _deep(5000) + "}")
    assert same_message(raw, json.loads(json.dumps(raw))) and not same_message(raw, OURS)


def test_same_message_after_a_langchain_round_trip():
    messages = pytest.importorskip("langchain_core.messages")
    returned = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "calculator", "arguments": '{"e":"2+3","x":1.5,"s":"é"}'}}]}
    # LangChain parses the arguments into a dict and writes them back with json.dumps.
    sent_back = messages.convert_to_openai_messages(messages.convert_to_messages([returned])[0])
    assert sent_back["tool_calls"][0]["function"]["arguments"] != returned["tool_calls"][0]["function"]["arguments"]
    assert same_message(validate_messages([sent_back])[0], returned)
    changed = json.loads(json.dumps(sent_back))
    changed["tool_calls"][0]["function"]["arguments"] = '{"e": "2+4", "x": 1.5, "s": "é"}'
    assert not same_message(validate_messages([changed])[0], returned)
