"""Tool use: answer questions by calling a calculator, a document search and a key-value store.

Chat format (the Hermes/ChatML convention that Qwen2.5, Hermes and SmolLM2 chat
templates use natively, written out in plain tags so any model can follow it):

* The system message lists the tools as JSON schemas inside ``<tools>...</tools>``.
* To call tools the model writes one or more
  ``<tool_call>{"name": "calculator", "arguments": {"expression": "12*7"}}</tool_call>``
  blocks (a block may also hold a JSON list of calls; ``arguments`` may be a JSON
  string; ``parameters`` is accepted for ``arguments``). A bare JSON object with a
  ``name`` as the whole reply is read as a call too.
* Each call is answered by one message (role ``tool`` by default) whose content is JSON:
  ``{"name": ..., "result": ...}`` or ``{"name": ..., "error": <code>, "message": ...}``.
* The episode ends when the model writes ``<answer>...</answer>`` or runs out of turns.

Malformed JSON, unknown tools, invalid or oversized arguments and replies with neither a
call nor an answer are answered with an error message and counted in ``info``
(``tool_calls``, ``tool_errors``, ``valid_calls``, ``format_errors`` per step); no action
string raises.

Tasks (generated deterministically, documents shipped in ``data/``): multi-step
arithmetic word problems, look-ups in the documents, look-ups combined with arithmetic,
price questions over the key-value store, and "compute and store" goals judged from the
store's final state. The ``eval`` split never shares a question with ``train``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from agent_lightning.envs.data import tool_use_tasks as _tasks
from agent_lightning.envs.tool_demos import brief_description, demonstration_messages
from agent_lightning.envs.tools import BUILTIN_TOOLS, Tool, ToolError, ToolState, validate
from agent_lightning.hookspecs import hookimpl
from agent_lightning.rewards.matching import extract_number, normalize_text, numbers_match
from agent_lightning.types import Message, Observation, StepResult, Task, check_split

_TOOL_CALL = re.compile(r"<tool_call>(.*?)(</tool_call>|\Z)", re.S)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)

FORMAT_HELP = ('Reply with <tool_call>{"name": "<tool>", "arguments": {...}}</tool_call> to use a tool, '
               "or <answer>your answer</answer> when you are done.")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _loads(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


def system_prompt(tools: Sequence[Tool], brief: bool = False) -> str:
    """The system message: the tools as JSON schemas (or one line each when ``brief``) and the format."""
    if brief:
        listing = "Available tools:\n" + "\n".join(brief_description(t) for t in tools) + "\n"
    else:
        listing = "Available tools, as JSON schemas:\n<tools>\n" + "\n".join(json.dumps(t.schema()) for t in tools) + "\n</tools>\n"
    return ("You are a careful assistant that answers questions by calling tools.\n"
            f"{listing}"
            "To call a tool, reply with\n"
            '<tool_call>{"name": "<tool name>", "arguments": {<arguments as JSON>}}</tool_call>\n'
            "Each result comes back in a tool message. When you know the answer, reply with\n"
            "<answer>your final answer</answer>\n"
            "Give numbers without units or thousands separators.")


class ToolUseEnv:
    """Answer questions with a calculator, a document search and a key-value store (multi-turn).

    Prompt options: ``tools`` restricts the toolset (names from ``BUILTIN_TOOLS``);
    ``tool_descriptions`` is ``"json"`` (full schemas) or ``"brief"`` (one line per tool);
    ``demonstrations`` puts that many worked examples (see ``tool_demos``) before the
    question as chat turns, which small models need to pick up the call format.
    """

    description = "answer questions by calling calculator, document-search and key-value tools (multi-turn)"

    def __init__(self, max_turns: int = 6, families: Sequence[str] | None = None, num_train: int = 400,
                 num_eval: int = 100, seed: int = 0, observation_role: str = "tool",
                 max_calls_per_turn: int = 4, max_call_chars: int = 1000, max_action_chars: int = 8000,
                 error_penalty: float = 0.0, tools: Sequence[str] | None = None,
                 tool_descriptions: str = "json", demonstrations: int = 0):
        unknown = sorted(set(families or ()) - set(_tasks.FAMILIES))
        if unknown:
            raise ValueError(f"environment.families: unknown {unknown} (known: {', '.join(_tasks.FAMILIES)})")
        if max_turns < 1:
            raise ValueError(f"environment.max_turns must be >= 1, got {max_turns}")
        if observation_role not in ("tool", "user"):
            raise ValueError(f"environment.observation_role must be 'tool' or 'user', got {observation_role!r}")
        self.max_turns = max_turns
        self.families = tuple(families) if families else _tasks.FAMILIES
        self.num_train, self.num_eval, self.seed = num_train, num_eval, seed
        self.observation_role = observation_role
        self.max_calls_per_turn = max_calls_per_turn
        self.max_call_chars = max_call_chars
        self.max_action_chars = max_action_chars
        self.error_penalty = error_penalty
        missing = sorted(set(tools or ()) - set(BUILTIN_TOOLS))
        if missing:
            raise ValueError(f"environment.tools: unknown {missing} (known: {', '.join(BUILTIN_TOOLS)})")
        if tool_descriptions not in ("json", "brief"):
            raise ValueError(f"environment.tool_descriptions must be 'json' or 'brief', got {tool_descriptions!r}")
        if demonstrations < 0:
            raise ValueError(f"environment.demonstrations must be >= 0, got {demonstrations}")
        self.tools: dict[str, Tool] = {name: tool for name, tool in BUILTIN_TOOLS.items() if not tools or name in tools}
        self.tool_descriptions = tool_descriptions
        self.demonstrations = demonstrations
        self._splits: dict[str, list[Task]] = {}
        self._task: Task | None = None
        self._state = ToolState()
        self._turn = 0

    # ------------------------------------------------------------------ Environment protocol

    def tasks(self, split: str) -> list[Task]:
        check_split("tool-use", split)
        if not self._splits:
            system = {"role": "system", "content": system_prompt(list(self.tools.values()),
                                                                 brief=self.tool_descriptions == "brief")}
            demos = tuple(demonstration_messages(self.families, self.tools, self.demonstrations,
                                                 self.observation_role))
            train, evals = _tasks.generate(self.families, self.num_train, self.num_eval, self.seed)
            for name, items in (("train", train), ("eval", evals)):
                self._splits[name] = [
                    Task(id=item["id"], prompt=(system, *demos, {"role": "user", "content": item["question"]}),
                         reference=item["reference"], split=name)
                    for item in items
                ]
        return self._splits[split]

    def reset(self, task: Task) -> Observation:
        self._task = task
        self._turn = 0
        self._state = ToolState(store={str(k): str(v) for k, v in task.reference.get("store", {}).items()},
                                documents=_tasks.documents())
        return Observation(tuple(task.prompt))

    def step(self, action: str) -> StepResult:
        if self._task is None:
            raise RuntimeError("tool-use: step() called before reset()")
        self._turn += 1
        action = action if isinstance(action, str) else str(action)
        info: dict[str, Any] = {"tool_calls": 0, "tool_errors": 0, "valid_calls": 0, "format_errors": 0}
        answer = _ANSWER.search(action[: self.max_action_chars])
        if answer is not None:
            success = self._judge(answer.group(1))
            info["success"] = success
            return StepResult(None, reward=1.0 if success else 0.0, done=True, info=info)
        messages = self._run_calls(action, info)
        penalty = self.error_penalty * (info["tool_errors"] + info["format_errors"])
        reward = -penalty if penalty else 0.0
        if self._turn >= self.max_turns:
            info["success"] = False
            return StepResult(None, reward=reward, done=True, info=info)
        return StepResult(Observation(tuple(messages)), reward=reward, done=False, info=info)

    def close(self) -> None:
        self._task = None
        self._state = ToolState()

    # ------------------------------------------------------------------ calls

    def parse_calls(self, action: str) -> list[dict | ToolError]:
        """The calls written in ``action``: each a ``{"name", "arguments"}`` dict or the error it raised."""
        if len(action) > self.max_action_chars:
            return [ToolError("oversized", f"reply longer than {self.max_action_chars} characters")]
        blocks = _TOOL_CALL.findall(action)
        raw_calls: list[Any] = []
        if not blocks:
            bare = action.strip()
            fenced = _FENCE.match(bare)
            bare = fenced.group(1) if fenced else bare
            if not (bare.startswith("{") or bare.startswith("[")):
                return []
            blocks = [(bare, "bare")]
        for body, closing in blocks:
            if not closing:
                raw_calls.append(ToolError("malformed_json", "<tool_call> is not closed with </tool_call>"))
                continue
            if len(body) > self.max_call_chars:
                raw_calls.append(ToolError("oversized", f"tool call longer than {self.max_call_chars} characters"))
                continue
            try:
                parsed = _loads(body.strip())
            except (ValueError, RecursionError) as exc:
                raw_calls.append(ToolError("malformed_json", f"tool call is not valid JSON: {str(exc)[:120]}"))
                continue
            raw_calls.extend(parsed if isinstance(parsed, list) and parsed else [parsed])
        return [c if isinstance(c, ToolError) else _normalize_call(c) for c in raw_calls]

    def _run_calls(self, action: str, info: dict[str, Any]) -> list[Message]:
        calls = self.parse_calls(action)
        if not calls:
            info["format_errors"] += 1
            return [self._message({"error": "no_tool_call", "message": "No tool call or answer found. " + FORMAT_HELP})]
        messages = []
        for index, call in enumerate(calls):
            info["tool_calls"] += 1
            name = call.get("name") if isinstance(call, dict) else None
            try:
                if isinstance(call, ToolError):
                    raise call
                if index >= self.max_calls_per_turn:
                    raise ToolError("too_many_calls", f"at most {self.max_calls_per_turn} tool calls per turn")
                result = self._call(call["name"], call["arguments"])
                messages.append(self._message({"name": name, "result": result}))
                info["valid_calls"] += 1
            except ToolError as err:
                info["tool_errors"] += 1
                payload = {"name": name} if isinstance(name, str) else {}
                payload.update(err.as_dict())
                messages.append(self._message(payload))
        return messages

    def _call(self, name: Any, arguments: Any) -> Any:
        if not isinstance(name, str) or name not in self.tools:
            known = ", ".join(sorted(self.tools))
            raise ToolError("unknown_tool", f"no tool named {str(name)[:40]!r} (tools: {known})")
        tool = self.tools[name]
        validate(arguments, tool.parameters)
        try:
            return tool.run(arguments, self._state)
        except ToolError:
            raise
        except Exception as exc:  # a tool bug must not end the episode
            raise ToolError("tool_failed", f"{name} failed: {type(exc).__name__}") from None

    def _message(self, payload: dict[str, Any]) -> Message:
        return {"role": self.observation_role, "content": json.dumps(payload)}

    # ------------------------------------------------------------------ judging

    def _judge(self, answer: str) -> bool:
        ref = self._task.reference
        if ref.get("check") == "store":
            stored = self._state.store.get(ref["store_key"])
            got = extract_number(stored) if stored is not None else None
            return got is not None and numbers_match(got, float(ref["answer"]), rel_tol=1e-6,
                                                     abs_tol=float(ref.get("abs_tol", 1e-6)))
        if isinstance(ref["answer"], (int, float)):
            got = extract_number(answer)
            return got is not None and numbers_match(got, float(ref["answer"]), rel_tol=1e-6,
                                                     abs_tol=float(ref.get("abs_tol", 1e-6)))
        return normalize_text(answer) == normalize_text(str(ref["answer"]))


def _normalize_call(call: Any) -> dict | ToolError:
    if not isinstance(call, dict):
        return ToolError("bad_call", f"a tool call must be a JSON object with 'name' and 'arguments', got {_kind(call)}")
    name = call.get("name")
    if not isinstance(name, str):
        return ToolError("bad_call", "a tool call needs a string 'name'")
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = _loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError):
            return ToolError("malformed_json", f"arguments of {name[:40]!r} are a string that is not valid JSON")
    if not isinstance(arguments, dict):
        return ToolError("invalid_arguments", f"arguments: expected object, got {_kind(arguments)}")
    return {"name": name, "arguments": arguments}


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)


@hookimpl
def register_environments(register):
    register("tool-use", ToolUseEnv)
