"""Real chat templates of several model families render the endpoint's messages: a system
prompt, a calculator tool, a user question, an assistant tool call (in ``for_template`` form), the
tool's result and a final answer. What each template writes as the model's tool-call turn is
what ``parse_tool_calls`` reads back in the format ``detect_format`` picks for it. Qwen3's
template rewrites earlier assistant turns, which the endpoint's token ledger has to live with.
"""

from __future__ import annotations

import json
import re

import jinja2
import pytest
from templates import TEMPLATE_DIR, TEMPLATE_NAMES, needs_smollm2, template_text, tokenizer_with_template

from agent_lightning.serving.messages import for_template, validate_messages
from agent_lightning.serving.tool_calls import FORMATS, detect_format, parse_tool_calls, validate_tools

SYSTEM = "You are a careful assistant."
QUESTION = "What is 2 + 3?"
ANSWER = "2 + 3 = 5."
CALL_ID = "call00001"  # Mistral's template insists on 9-character ids
TOOLS = validate_tools([{
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
    },
}])


def conversation(call_id: str = CALL_ID) -> list[dict]:
    return validate_messages([
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": "calculator", "arguments": '{"expression":"2 + 3"}'}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "5"},
        {"role": "assistant", "content": ANSWER},
    ])


# How each family writes the assistant's tool-call turn, and where that turn starts and ends in
# a rendering (SmolLM2's eos_token "<|im_end|>" stands in for Mistral's "</s>").
EXPECTED = {
    "smollm2": ("none", None, None, None),
    "qwen2_5": ("hermes", '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2 + 3"}}\n</tool_call>',
                "<|im_start|>assistant\n", "<|im_end|>"),
    "qwen3": ("hermes", '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2 + 3"}}\n</tool_call>',
              "<|im_start|>assistant\n", "<|im_end|>"),
    "llama3_1": ("llama3-json", '{"name": "calculator", "parameters": {"expression": "2 + 3"}}',
                 "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    "mistral": ("mistral", '[TOOL_CALLS][{"name": "calculator", "arguments": {"expression": "2 + 3"}, "id": "call00001"}]',
                "[/INST]", "<|im_end|>"),
}


def render(name: str, messages: list[dict], **kwargs) -> str:
    return tokenizer_with_template(name).apply_chat_template(messages, tools=TOOLS, tokenize=False, **kwargs)


def test_every_template_file_is_listed_and_has_its_source_in_the_readme():
    files = sorted(p.stem for p in TEMPLATE_DIR.glob("*.jinja"))
    assert files == sorted(n for n in TEMPLATE_NAMES if n != "smollm2")
    readme = (TEMPLATE_DIR / "README.md").read_text()
    for stem in files:
        assert f"`{stem}.jinja`" in readme, f"{stem}.jinja has no source in chat_templates/README.md"
    assert set(EXPECTED) == set(TEMPLATE_NAMES)


@pytest.mark.parametrize("name", [n for n in TEMPLATE_NAMES if n != "smollm2"])
def test_detect_format_from_the_template_file(name):
    assert detect_format(template_text(name)) == EXPECTED[name][0]
    assert EXPECTED[name][0] in FORMATS


@needs_smollm2
def test_smollm2_template_has_no_tool_format():
    assert detect_format(tokenizer_with_template("smollm2").chat_template) == "none"


@needs_smollm2
@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_template_renders_a_tool_conversation(name):
    fmt, call_text, turn_start, turn_end = EXPECTED[name]
    text = render(name, for_template(conversation()))
    assert QUESTION in text and ANSWER in text and "5" in text
    if name == "mistral":
        # Mistral's template puts the system prompt into the *last* message only when that is
        # the user's: mid-conversation it is not rendered at all.
        assert SYSTEM not in text
        prompt = render(name, for_template(conversation()[:2]), add_generation_prompt=True)
        assert f"[INST]{SYSTEM}\n\n{QUESTION}[/INST]" in prompt
    else:
        assert SYSTEM in text
    if fmt == "none":
        assert "calculator" not in text  # SmolLM2's template ignores tools and tool calls
        return
    assert TOOLS[0]["function"]["description"] in text  # the tools are declared to the model
    assert call_text in text
    # The turn the template wrote for the call is what the parser reads back.
    at = text.index(call_text)
    turn = text[text.rindex(turn_start, 0, at) + len(turn_start): text.index(turn_end, at)]
    parsed = parse_tool_calls(turn, fmt)
    assert parsed.content is None
    assert [c["function"]["name"] for c in parsed.tool_calls] == ["calculator"]
    assert json.loads(parsed.tool_calls[0]["function"]["arguments"]) == {"expression": "2 + 3"}


@needs_smollm2
def test_string_arguments_are_encoded_twice_without_for_template():
    # Why for_template parses arguments: Qwen2.5 applies `tojson` to whatever it is given.
    text = render("qwen2_5", conversation())
    assert '"arguments": "{\\"expression\\":\\"2 + 3\\"}"' in text
    assert '"arguments": {"expression": "2 + 3"}' in render("qwen2_5", for_template(conversation()))


@needs_smollm2
def test_llama3_1_renders_a_string_tool_result_as_json():
    # Its template tests `content is iterable`, which a string is: the result comes out quoted.
    text = render("llama3_1", for_template(conversation()))
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n"5"<|eot_id|>' in text


@needs_smollm2
def test_mistral_template_rejects_tool_call_ids_that_are_not_nine_characters():
    with pytest.raises(jinja2.TemplateError, match="length 9"):
        render("mistral", for_template(conversation(call_id="call_0")))


@needs_smollm2
def test_llama3_1_template_takes_one_tool_call_per_turn():
    messages = conversation()
    messages[2]["tool_calls"] = messages[2]["tool_calls"] * 2
    with pytest.raises(jinja2.TemplateError, match="single tool-calls"):
        render("llama3_1", for_template(messages))


@needs_smollm2
def test_qwen3_drops_earlier_reasoning_when_a_later_user_turn_follows():
    first = [{"role": "user", "content": "Pick a number."},
             {"role": "assistant", "content": "<think>\nThe user wants any number.\n</think>\n\nSeven."}]
    before = render("qwen3", first)
    assert "<|im_start|>assistant\n<think>\nThe user wants any number.\n</think>\n\nSeven.<|im_end|>" in before
    after = render("qwen3", [*first, {"role": "user", "content": "Another?"}], add_generation_prompt=True)
    assert "<|im_start|>assistant\nSeven.<|im_end|>" in after
    assert "The user wants any number." not in after
    # The earlier turn is rewritten: the first rendering is no prefix of the second.
    assert not after.startswith(before)


@needs_smollm2
def test_qwen2_5_keeps_earlier_turns_as_rendered():
    # The contrast: a template that only appends.
    first = [{"role": "user", "content": "Pick a number."}, {"role": "assistant", "content": "Seven."}]
    before = render("qwen2_5", first)
    after = render("qwen2_5", [*first, {"role": "user", "content": "Another?"}], add_generation_prompt=True)
    assert after.startswith(before)


@needs_smollm2
def test_tokenizer_copies_are_per_template_and_tokenise_other_families_special_tokens():
    qwen, llama = tokenizer_with_template("qwen2_5"), tokenizer_with_template("llama3_1")
    assert qwen is tokenizer_with_template("qwen2_5") and qwen is not llama
    assert qwen.chat_template == template_text("qwen2_5") and llama.chat_template == template_text("llama3_1")
    assert "SmolLM" in tokenizer_with_template("smollm2").chat_template
    ids = llama.encode("<|start_header_id|>[TOOL_CALLS]", add_special_tokens=False)
    assert len(ids) > 2 and llama.decode(ids) == "<|start_header_id|>[TOOL_CALLS]"
    with pytest.raises(ValueError, match="'gemma'"):
        tokenizer_with_template("gemma")


def test_templates_are_the_published_text():
    # Spot checks against the vendors' published templates (a transcription error shows here).
    assert template_text("qwen2_5").count("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.") == 2
    assert "enable_thinking is defined and enable_thinking is false" in template_text("qwen3")
    assert re.search(r'set date_string = "26 Jul 2024"', template_text("llama3_1"))
    assert "Tool call IDs should be alphanumeric strings with length 9!" in template_text("mistral")
    assert [len(template_text(n)) for n in ("qwen2_5", "qwen3", "llama3_1", "mistral")] == [2507, 4168, 4614, 3945]
