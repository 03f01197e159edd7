"""Sampled trajectories of a run (``trajectories/step-N.jsonl``) as conversations.

A record holds the decoded prompt, each turn's action and observation text, and the token
stream trained on with its policy mask. ``segments`` splits the stream back into the
conversation: the prompt and every observation are masked context (never trained on),
each action is policy tokens. ``show`` prints them with rich (``alightning show``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

_STEP_FILE = re.compile(r"^step-(\d+)\.jsonl$")


@dataclass(frozen=True)
class Segment:
    """One stretch of a conversation.

    Attributes:
        kind: ``"prompt"``, ``"policy"`` (sampled by the policy, trained on) or
            ``"observation"`` (environment feedback, masked from the loss).
        text: Decoded text as recorded by the trainer.
        token_ids: The stretch's token ids (empty when the record's mask does not line up
            with its turns, which a well-formed record never does).
        reward: The step reward (policy segments only).
    """

    kind: str
    text: str
    token_ids: tuple[int, ...] = ()
    reward: float | None = None

    @property
    def masked(self) -> bool:
        return self.kind != "policy"


def trajectory_steps(run_dir: str | Path) -> list[int]:
    """Steps that have a trajectories file, ascending."""
    folder = Path(run_dir) / "trajectories"
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name)))


def load_trajectories(run_dir: str | Path, step: int | None = None) -> tuple[int, list[dict[str, Any]]]:
    """``(step, records)`` of ``trajectories/step-<step>.jsonl`` (default: the latest step)."""
    steps = trajectory_steps(run_dir)
    if not steps:
        raise FileNotFoundError(f"{run_dir}: no trajectories/step-N.jsonl files (the run logs them when "
                                "trainer.log_trajectories > 0)")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        shown = ", ".join(map(str, steps[:5] + (["..."] if len(steps) > 10 else []) + steps[max(5, len(steps) - 5):]))
        raise FileNotFoundError(f"{run_dir}: no trajectories for step {step} (steps with trajectories: {shown})")
    path = Path(run_dir) / "trajectories" / f"step-{step}.jsonl"
    return step, [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _runs(mask: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(value, start, end)`` of maximal runs of equal mask values."""
    out: list[tuple[int, int, int]] = []
    start = 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            out.append((int(mask[start]), start, i))
            start = i
    return out


def segments(record: dict[str, Any]) -> list[Segment]:
    """The conversation of one record: prompt, then per turn the policy's action and the
    environment's observation (the last observation is omitted when empty)."""
    ids = list(record.get("token_ids", []))
    mask = [int(m) for m in record.get("policy_mask", [])]
    turns = record.get("turns", [])
    runs = _runs(mask) if len(mask) == len(ids) else []
    # A well-formed stream is: masked prompt, then (policy run, masked observation run) per turn.
    policy_runs = [r for r in runs if r[0] == 1]
    aligned = bool(runs) and runs[0][0] == 0 and len(policy_runs) == len(turns)
    out = [Segment("prompt", record.get("prompt", ""), tuple(ids[runs[0][1]:runs[0][2]]) if aligned else ())]
    cursor = 1
    for turn in turns:
        action_ids: tuple[int, ...] = ()
        obs_ids: tuple[int, ...] = ()
        if aligned:
            _, a, b = runs[cursor]
            action_ids = tuple(ids[a:b])
            cursor += 1
            if cursor < len(runs) and runs[cursor][0] == 0:
                _, a, b = runs[cursor]
                obs_ids = tuple(ids[a:b])
                cursor += 1
        out.append(Segment("policy", turn.get("action", ""), action_ids, turn.get("reward")))
        if turn.get("observation") or obs_ids:
            out.append(Segment("observation", turn.get("observation", ""), obs_ids))
    return out


def tokens(n: int) -> str:
    return f"{n} token" if n == 1 else f"{n} tokens"


def headline(record: dict[str, Any]) -> str:
    """``id · task · reward · success|failure``."""
    outcome = f"failed: {record['failure']}" if record.get("failure") else ("success" if record.get("success") else "no success")
    reward = record.get("reward")
    reward_text = f"{reward:.3g}" if isinstance(reward, (int, float)) else "?"
    return f"{record.get('id', '?')}  task {record.get('task', '?')}  reward {reward_text}  {outcome}"


def show(run_dir: str | Path, step: int | None = None, limit: int | None = None, console: Any = None) -> int:
    """Print a step's trajectories as conversations; returns the step shown.

    Policy tokens (sampled, trained on) are bold green; masked tokens (the prompt and the
    environment's observations, never trained on) are dim. Colours appear only on a
    terminal; the labels say the same in plain text.
    """
    from rich.console import Console, Group
    from rich.panel import Panel
    from rich.text import Text

    console = console or Console()
    step, records = load_trajectories(run_dir, step)
    if limit is not None:
        records = records[:limit]
    console.print(f"step {step}: {len(records)} trajectories from {Path(run_dir) / 'trajectories' / f'step-{step}.jsonl'}",
                  highlight=False, markup=False)
    console.print("policy = sampled by the policy, trained on; masked = prompt / observation, not trained on",
                  style="dim", highlight=False, markup=False)
    for record in records:
        lines = []
        for seg in segments(record):
            count = f", {tokens(len(seg.token_ids))}" if seg.token_ids else ""
            if seg.kind == "policy":
                label = f"policy (trained{count}): "
                style = "bold green"
            else:
                label = f"{seg.kind} (masked{count}): "
                style = "dim"
            line = Text(label, style="cyan" if seg.kind == "policy" else "dim cyan")
            line.append(seg.text, style=style)
            if seg.kind == "policy" and seg.reward:
                line.append(f"  [step reward {seg.reward:g}]", style="yellow")
            lines.append(line)
        border = "red" if record.get("failure") else ("green" if record.get("success") else "white")
        console.print(Panel(Group(*lines), title=Text(headline(record)), title_align="left", border_style=border))
    return step
