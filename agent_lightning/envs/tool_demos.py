"""Worked examples and compact tool descriptions for the tool-use environment's prompt.

Small models follow a format they have *seen* far better than one they are told about: a
135M chat model given only the JSON schemas never emits a ``<tool_call>``, while one worked
exchange placed before the question as real chat turns makes its first reply a well-formed
call. ``demonstration_messages`` builds those turns; every tool result in them comes from
running the real tool on a demo-only state (a fictional document, an empty store), so the
examples show exactly the result format the episode will return, and no example shares a
fact with a task.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from agent_lightning.envs.tools import Tool, ToolState
from agent_lightning.types import Message

# Worked examples per task family (used in order): a question, the calls made in order, the
# final answer. The documents are demo-only: no task asks about them.
_DEMO_DOCUMENTS = (
    {"id": "demo-1", "title": "Elbaria (country)",
     "text": "Elbaria is a small country. Its capital is Tovin and it has 3 rivers."},
    {"id": "demo-2", "title": "Brightvale Tools",
     "text": "Brightvale Tools is a company founded in 1931. It employs 240 people."},
)
DEMOS: Mapping[str, dict[str, Any]] = {
    "lookup": {"question": "How many rivers does the country Elbaria have?",
               "calls": [("search", {"query": "Elbaria rivers"})], "answer": "3"},
    "lookup-2": {"question": "In which year was Brightvale Tools founded?",
                 "calls": [("search", {"query": "Brightvale Tools"})], "answer": "1931"},
    "arithmetic": {"question": "A shop sells 14 boxes with 25 pens in each box, then 30 more pens. "
                               "How many pens does it sell?",
                   "calls": [("calculator", {"expression": "14 * 25 + 30"})], "answer": "380"},
    "lookup-math": {"question": "How many rivers would 4 countries like Elbaria have together?",
                    "calls": [("search", {"query": "Elbaria rivers"}), ("calculator", {"expression": "3 * 4"})],
                    "answer": "12"},
    "kv-prices": {"question": "What do 3 kiwis cost, in dollars?",
                  "calls": [("kv_get", {"key": "price:kiwi"}), ("calculator", {"expression": "3 * 0.5"})],
                  "answer": "1.5"},
    "kv-store": {"question": "Compute 12 * 12 and store it under the key 'square'.",
                 "calls": [("calculator", {"expression": "12 * 12"}), ("kv_set", {"key": "square", "value": 144})],
                 "answer": "144"},
}


def brief_description(tool: Tool) -> str:
    """One line per tool: ``name(arg: type, ...) - description`` (a fraction of the schema's tokens)."""
    props = tool.parameters.get("properties", {})
    required = set(tool.parameters.get("required", ()))
    args = []
    for name, spec in props.items():
        kind = spec.get("type", "any")
        kind = "|".join(kind) if isinstance(kind, list) else kind
        args.append(f"{name}: {kind}" + ("" if name in required else " (optional)"))
    return f"{tool.name}({', '.join(args)}) - {tool.description}"


def demonstration_messages(families: Sequence[str], tools: Mapping[str, Tool], count: int,
                           observation_role: str) -> list[Message]:
    """Chat turns of ``count`` worked examples (user, assistant call, tool result, ..., answer).

    Examples are taken from ``families`` in order (cycling; a family's second pass uses its
    second example, ``<family>-2``, where there is one), skipping any that needs a tool
    outside ``tools``. Raises ``ValueError`` naming the option when none fits.
    """
    usable = [f for f in families if all(name in tools for name, _ in DEMOS[f]["calls"])]
    if count and not usable:
        raise ValueError(f"environment.demonstrations: no worked example fits families {list(families)} "
                         f"with tools {sorted(tools)}")
    messages: list[Message] = []
    for i in range(count):
        family = usable[i % len(usable)]
        second = f"{family}-2"
        demo = DEMOS[second] if (i // len(usable)) % 2 == 1 and second in DEMOS else DEMOS[family]
        state = ToolState(store={"price:kiwi": "0.5"}, documents=_DEMO_DOCUMENTS)
        messages.append({"role": "user", "content": demo["question"]})
        for name, arguments in demo["calls"]:
            call = json.dumps({"name": name, "arguments": arguments})
            messages.append({"role": "assistant", "content": f"<tool_call>{call}</tool_call>"})
            result = tools[name].run(dict(arguments), state)
            messages.append({"role": observation_role, "content": json.dumps({"name": name, "result": result})})
        messages.append({"role": "assistant", "content": f"<answer>{demo['answer']}</answer>"})
    return messages
