"""Preference data: JSONL files of prompt / chosen / rejected conversations, and their tokens.

Used by offline DPO (``algorithm.dataset``) and ``alightning train-reward-model``. One JSON
object per line (blank lines are skipped)::

    {"id": "pair-7",                                        # optional; default "<file>:<line>"
     "prompt": "guess my number between 1 and 6 .",         # str: one user message, or a list of messages
     "chosen": [{"role": "assistant", "content": "3"},
                {"role": "user", "content": "higher than 3"},
                {"role": "assistant", "content": "5"}],     # str: one assistant reply, or a list of messages
     "rejected": "1"}

* ``prompt`` opens the conversation and is shared by both answers (system/user/... messages).
* ``chosen`` and ``rejected`` are the preferred and the dispreferred continuation: a string
  (one assistant reply) or a list of messages that starts and ends with an ``assistant``
  message; messages in between with any other role (``user``, ``tool``) are the environment's
  feedback — context, never trained on.

Conversations become token streams exactly as rollouts build them (``backends/chat_tokens``):
the prompt's tokens with the generation prompt, then per assistant message its content's
tokens plus the template's end-of-turn stop token (the *policy tokens*, the only ones a loss
sees), then the following feedback messages as an observation delta. Chosen and rejected
therefore share the prompt's tokens, and an offline pair looks like two rollouts of the task.
Each side is returned as a :class:`~agent_lightning.types.Trajectory`, so the packing and
log-prob code of the online algorithms applies unchanged.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from agent_lightning.types import Message, Task, Trajectory, Turn


class PreferenceDataError(ValueError):
    """A preference file or row is malformed (the message names the file and line)."""


@dataclass(frozen=True)
class PreferencePair:
    """One preference: ``chosen`` is preferred to ``rejected`` as a continuation of ``prompt``."""

    id: str
    prompt: tuple[Message, ...]
    chosen: tuple[Message, ...]
    rejected: tuple[Message, ...]


def resolve_path(path: str | Path, *, key: str = "algorithm.dataset") -> Path:
    """A file path, or ``<python package>/<file>`` inside an installed package (such as
    ``agent_lightning/presets/guess-number-preferences.jsonl``), found without importing it."""
    import importlib.util

    candidate = Path(path).expanduser()
    if candidate.is_file():
        return candidate
    package, _, rest = str(path).partition("/")
    spec = importlib.util.find_spec(package) if package.isidentifier() and rest else None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / rest).is_file():
            return Path(folder) / rest
    raise PreferenceDataError(f"{key}: '{path}' is neither a file nor a file inside an installed package")


def _messages(value: Any, default_role: str, where: str, field: str) -> tuple[Message, ...]:
    if isinstance(value, str):
        return ({"role": default_role, "content": value},)
    if not isinstance(value, list) or not value:
        raise PreferenceDataError(f"{where}: '{field}' must be a string or a non-empty list of messages")
    out = []
    for i, message in enumerate(value):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str) and isinstance(message.get("content"), str)):
            raise PreferenceDataError(f"{where}: '{field}[{i}]' must be an object with string 'role' and 'content'")
        out.append({"role": message["role"], "content": message["content"]})
    return tuple(out)


def _response(value: Any, where: str, field: str) -> tuple[Message, ...]:
    messages = _messages(value, "assistant", where, field)
    if messages[0]["role"] != "assistant" or messages[-1]["role"] != "assistant":
        raise PreferenceDataError(f"{where}: '{field}' must start and end with an assistant message")
    return messages


def parse_pair(row: Any, where: str, default_id: str) -> PreferencePair:
    """Validate one decoded JSON row into a :class:`PreferencePair`."""
    if not isinstance(row, dict):
        raise PreferenceDataError(f"{where}: expected an object with prompt, chosen and rejected")
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
    if missing:
        raise PreferenceDataError(f"{where}: missing key(s) {', '.join(missing)}")
    return PreferencePair(
        id=str(row.get("id", default_id)),
        prompt=_messages(row["prompt"], "user", where, "prompt"),
        chosen=_response(row["chosen"], where, "chosen"),
        rejected=_response(row["rejected"], where, "rejected"),
    )


def load_preferences(path: str | Path, *, key: str = "algorithm.dataset") -> list[PreferencePair]:
    """Every pair of a preference JSONL file (see the module docstring for the format)."""
    file = resolve_path(path, key=key)
    pairs = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PreferenceDataError(f"{where}: not valid JSON ({exc.msg})") from None
        pairs.append(parse_pair(row, where, f"{file.name}:{number}"))
    if not pairs:
        raise PreferenceDataError(f"{key}: {file} holds no preference pairs")
    return pairs


def write_preferences(pairs: Sequence[PreferencePair], path: str | Path) -> None:
    """Write pairs as JSONL (the inverse of :func:`load_preferences`)."""
    with open(path, "w", encoding="utf-8") as handle:
        for pair in pairs:
            row = {"id": pair.id, "prompt": list(pair.prompt), "chosen": list(pair.chosen), "rejected": list(pair.rejected)}
            handle.write(json.dumps(row, separators=(",", ":")) + "\n")


def split_pairs(pairs: Sequence[PreferencePair], eval_fraction: float, seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """A seeded ``(train, held-out)`` split; the held-out part has ``round(n * eval_fraction)``
    pairs (at least one when ``eval_fraction > 0`` and ``n > 1``)."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_eval = round(len(pairs) * eval_fraction)
    if eval_fraction > 0 and len(pairs) > 1:
        n_eval = min(max(1, n_eval), len(pairs) - 1)
    held = sorted(order[:n_eval])
    train = sorted(order[n_eval:])
    return [pairs[i] for i in train], [pairs[i] for i in held]


class ConversationEncoder:
    """Token streams of conversations under a tokenizer's chat template (see module docstring)."""

    def __init__(self, tokenizer: Any):
        from agent_lightning.backends.transformers.chat_tokens import ChatTokens

        self.tokenizer = tokenizer
        self.chat = ChatTokens(tokenizer)
        self.stop_id = self._turn_stop_id()

    def _turn_stop_id(self) -> int:
        """The stop token the template puts after an assistant message (EOS when none shows)."""
        probe = [{"role": "user", "content": "AL_PROBE_USER"}, {"role": "assistant", "content": "AL_PROBE_REPLY"}]
        rendered = self.tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=False)
        end_ids = self._encode(rendered[rendered.rfind("AL_PROBE_REPLY") + len("AL_PROBE_REPLY"):])
        stops = self.chat.stop_token_ids()
        found = [i for i in end_ids if i in stops]
        if found:
            return found[0]
        if not stops:
            raise ValueError(f"tokenizer {type(self.tokenizer).__name__} has no EOS or end-of-turn token")
        return stops[0]

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, prompt: Sequence[Message], response: Sequence[Message], *, id: str, group: int = 0) -> Trajectory:
        """``prompt`` followed by ``response`` as a trajectory whose policy tokens are the
        assistant messages' tokens (each closed by the turn's stop token)."""
        prompt_ids = self.chat.prompt(prompt)
        turns: list[Turn] = []
        i = 0
        while i < len(response):
            message = response[i]
            if message["role"] != "assistant":
                raise ValueError(f"pair '{id}': response message {i} has role '{message['role']}' where an assistant reply is expected")
            feedback = []
            i += 1
            while i < len(response) and response[i]["role"] != "assistant":
                feedback.append(response[i])
                i += 1
            action_ids = tuple(self._encode(message["content"]) + [self.stop_id])
            observation = tuple(self.chat.observation(feedback, after_stop=True)) if feedback else ()
            turns.append(Turn(action=message["content"], action_token_ids=action_ids,
                              action_logprobs=(0.0,) * len(action_ids), observation_token_ids=observation))
        task = Task(id=id.rsplit("/", 1)[0], prompt=tuple(prompt))
        return Trajectory(id=id, task=task, group=group, prompt_token_ids=tuple(prompt_ids), turns=tuple(turns))

    def encode_pair(self, pair: PreferencePair, group: int = 0) -> tuple[Trajectory, Trajectory]:
        """``(chosen, rejected)`` trajectories sharing the prompt's tokens."""
        return (self.encode(pair.prompt, pair.chosen, id=f"{pair.id}/chosen", group=group),
                self.encode(pair.prompt, pair.rejected, id=f"{pair.id}/rejected", group=group))
