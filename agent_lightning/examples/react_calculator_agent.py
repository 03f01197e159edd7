"""A ReAct calculator agent written against the ``openai`` SDK with tools.

The agent gives the model a ``calculator`` tool (an OpenAI function schema), runs the calls
the model makes, sends the results back as ``tool`` messages, and takes the first reply
without a tool call as the answer. One worked example opens the conversation, so that a
small model sees the calling convention once. The reward is 1 when the answer's last number
is the task's ``answer``, else 0.2 when the model at least made a calculator call that ran
(a 135M model's first calls mostly name tools that do not exist or invent arguments).

    agent: {entrypoint: "agent_lightning.examples.react_calculator_agent:solve", tasks: ...}

Tasks are JSONL lines ``{"id": ..., "question": "What is 23 * 47?", "answer": 1081}``.
"""

from __future__ import annotations

import ast
import json
import operator
import re

from agent_lightning.examples.clients import shared_openai

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression with + - * / and parentheses.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
    },
}
SYSTEM = "You solve arithmetic questions. Always use the calculator tool, then reply with the number only."
EXAMPLE = [
    {"role": "user", "content": "What is 12 * 34?"},
    {"role": "assistant", "content": None, "tool_calls": [{
        "id": "call_example", "type": "function",
        "function": {"name": "calculator", "arguments": json.dumps({"expression": "12 * 34"})}}]},
    {"role": "tool", "tool_call_id": "call_example", "content": "408"},
    {"role": "assistant", "content": "408"},
]

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.USub: operator.neg, ast.UAdd: operator.pos}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def calculate(expression: str) -> str:
    """The value of ``expression`` (numbers, + - * /, parentheses; at most 64 characters), or
    an error text for the model to read."""
    if not isinstance(expression, str) or len(expression) > 64:
        return "error: give an expression of at most 64 characters"
    try:
        value = _evaluate(ast.parse(expression, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError) as exc:
        return f"error: {type(exc).__name__}"
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def _evaluate(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if abs(left) > 1e12 or abs(right) > 1e12:
            raise ValueError("number too large")
        return _OPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.operand))
    raise ValueError("not arithmetic")


def solve(task: dict, llm, max_calls: int = 3, valid_call_reward: float = 0.2) -> dict:
    """Answer ``task["question"]`` with the calculator; reward 1 for the right number."""
    client = shared_openai(llm)
    messages = [{"role": "system", "content": SYSTEM}, *EXAMPLE, {"role": "user", "content": task["question"]}]
    ran = False
    for _ in range(max_calls):
        reply = client.chat.completions.create(model=llm.model, messages=messages, tools=[CALCULATOR])
        message = reply.choices[0].message
        if not message.tool_calls:
            answer = message.content or ""
            numbers = _NUMBER.findall(answer)
            right = bool(numbers) and float(numbers[-1]) == float(task["answer"])
            return {"reward": 1.0 if right else valid_call_reward * ran, "success": right, "answer": answer}
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            try:
                expression = json.loads(call.function.arguments).get("expression", "")
            except (json.JSONDecodeError, AttributeError):
                expression = None
            result = calculate(expression) if call.function.name == "calculator" else "error: unknown tool"
            ran = ran or not result.startswith("error")
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    return {"reward": valid_call_reward * ran, "success": False}
