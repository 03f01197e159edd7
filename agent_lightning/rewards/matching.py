"""Answer-matching rewards: ``exact-match``, ``numeric-match`` and ``format``.

All three read the final action of the trajectory (the policy's last turn). The answer
is the text inside ``<answer>...</answer>`` when ``answer_pattern`` finds it (the last
match wins), else the whole action; the expected value is
``trajectory.task.reference[reference_key]`` (a value or a list of accepted values).
"""

from __future__ import annotations

import math
import re
import string
from typing import Any, Iterable

from agent_lightning.hookspecs import hookimpl
from agent_lightning.types import Trajectory

ANSWER_PATTERN = r"<answer>(.*?)</answer>"

_NUMBER = re.compile(
    r"[-+]?(?:\d{1,3}(?:,\d{3})+(?![\d,])(?:\.\d+)?|\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?")


def extract_answer(text: str, pattern: str | None = ANSWER_PATTERN) -> str:
    """The answer inside the last ``pattern`` match (group 1), or ``text`` stripped if none."""
    if pattern:
        matches = re.findall(pattern, text, flags=re.S)
        if matches:
            last = matches[-1]
            return (last if isinstance(last, str) else last[0]).strip()
    return text.strip()


def extract_number(text: str) -> float | None:
    """The last number written in ``text``: ``"1,234.5"``, ``"$-3"``, ``"2e3"``, ``"3/4"``; else ``None``.

    Thousands separators must be well formed (``"1,234"``); ``"1,2"`` reads as two numbers.
    """
    for raw in reversed(_NUMBER.findall(text)):
        raw = raw.replace(",", "").replace(" ", "")
        try:
            if "/" in raw:
                num, den = raw.split("/")
                if float(den) == 0:
                    continue
                value = float(num) / float(den)
            else:
                value = float(raw)
        except ValueError:
            continue
        if math.isfinite(value):
            return value
    return None


def numbers_match(got: float, expected: float, *, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    return math.isfinite(got) and math.isclose(got, expected, rel_tol=rel_tol, abs_tol=abs_tol)


def normalize_text(text: str, *, case_sensitive: bool = False, strip_punctuation: bool = True) -> str:
    """Collapse whitespace; drop surrounding quotes and (optionally) punctuation and case."""
    text = " ".join(str(text).split())
    if strip_punctuation:
        text = text.translate(str.maketrans("", "", string.punctuation)).strip()
        text = " ".join(text.split())
    return text if case_sensitive else text.lower()


def _accepted(reference: Any) -> list[Any]:
    if isinstance(reference, (list, tuple)):
        return list(reference)
    return [reference]


def _reference(trajectory: Trajectory, key: str) -> Any:
    ref = trajectory.task.reference
    if key not in ref:
        raise KeyError(f"task '{trajectory.task.id}' has no reference['{key}'] (has: {', '.join(sorted(ref)) or 'none'})")
    return ref[key]


def _final_action(trajectory: Trajectory) -> str:
    """The answer to judge: what an agent returned (``info["answer"]``), else the last action."""
    answer = trajectory.info.get("answer")
    if isinstance(answer, str):
        return answer
    return trajectory.turns[-1].action if trajectory.turns else ""


def exact_match(reference_key: str = "answer", answer_pattern: str | None = ANSWER_PATTERN,
                case_sensitive: bool = False, strip_punctuation: bool = True):
    """1.0 when the final answer equals an accepted reference after normalisation, else 0.0."""
    re.compile(answer_pattern or "")

    def reward(trajectory: Trajectory) -> float:
        answer = normalize_text(extract_answer(_final_action(trajectory), answer_pattern),
                                case_sensitive=case_sensitive, strip_punctuation=strip_punctuation)
        accepted = _accepted(_reference(trajectory, reference_key))
        return float(any(answer == normalize_text(a, case_sensitive=case_sensitive,
                                                    strip_punctuation=strip_punctuation) for a in accepted))

    return reward


exact_match.description = "1 if the final answer equals task.reference['answer'] (normalised)"  # type: ignore[attr-defined]


def numeric_match(reference_key: str = "answer", answer_pattern: str | None = ANSWER_PATTERN,
                  rel_tol: float = 1e-6, abs_tol: float = 1e-9):
    """1.0 when the last number in the final answer is within tolerance of the reference."""
    if rel_tol < 0 or abs_tol < 0:
        raise ValueError(f"reward.rel_tol and reward.abs_tol must be >= 0, got {rel_tol}, {abs_tol}")

    def reward(trajectory: Trajectory) -> float:
        got = extract_number(extract_answer(_final_action(trajectory), answer_pattern))
        if got is None:
            return 0.0
        for expected in _accepted(_reference(trajectory, reference_key)):
            value = expected if isinstance(expected, (int, float)) else extract_number(str(expected))
            if value is not None and numbers_match(got, float(value), rel_tol=rel_tol, abs_tol=abs_tol):
                return 1.0
        return 0.0

    return reward


numeric_match.description = "1 if the final answer's number is within tolerance of the reference"  # type: ignore[attr-defined]


def format_reward(pattern: str = ANSWER_PATTERN, turns: str = "last", require_full_match: bool = False):
    """Rewards following a format: the fraction of the considered turns whose action matches.

    Args:
        pattern: Regular expression (dot matches newlines).
        turns: ``"last"`` (only the final action: 0 or 1) or ``"all"`` (fraction of turns).
        require_full_match: The whole stripped action must match, not just contain a match.
    """
    if turns not in ("last", "all"):
        raise ValueError(f"reward.turns must be 'last' or 'all', got {turns!r}")
    compiled = re.compile(pattern, flags=re.S)

    def matches(action: str) -> bool:
        return bool(compiled.fullmatch(action.strip()) if require_full_match else compiled.search(action))

    def reward(trajectory: Trajectory) -> float:
        actions: Iterable[str] = [t.action for t in trajectory.turns]
        actions = list(actions)[-1:] if turns == "last" else list(actions)
        if not actions:
            return 0.0
        return sum(matches(a) for a in actions) / len(actions)

    return reward


format_reward.description = "fraction of turns (or the last) whose action matches a regex"  # type: ignore[attr-defined]


@hookimpl
def register_rewards(register):
    register("exact-match", exact_match)
    register("numeric-match", numeric_match)
    register("format", format_reward)
