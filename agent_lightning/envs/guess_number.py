"""Number guessing with higher/lower feedback: the quickstart environment.

The agent must find a secret integer in ``[1, max_number]`` within ``max_turns`` guesses.
Each wrong guess is answered ``higher than G`` or ``lower than G``: a hint narrows the
range only together with the earlier ones, so a policy that uses earlier
feedback (binary search) always wins when ``max_turns >= ceil(log2(max_number + 1))``,
while one that ignores it rarely does.

Reward: 1.0 for finding the secret. ``wasted_guess_penalty`` (default 0) is subtracted for
each guess the earlier hints had already ruled out (or that is not a number in range),
a dense signal that teaches using the feedback; success is what evaluation measures.

Splits: the task space is every secret; ``train`` and ``eval`` hold distinct task ids
(episodes played for evaluation are never trained on), each covering every secret.
"""

from __future__ import annotations

import re

from agent_lightning.hookspecs import hookimpl
from agent_lightning.types import Observation, StepResult, Task, check_split

_INTEGER = re.compile(r"-?\d+")


class GuessNumberEnv:
    """Find the secret number from higher/lower hints (multi-turn)."""

    description = "find a secret number from higher/lower hints (multi-turn quickstart)"

    def __init__(self, max_number: int = 10, max_turns: int = 5, eval_repeats: int = 1,
                 wasted_guess_penalty: float = 0.0):
        if max_number < 2:
            raise ValueError(f"environment.max_number must be at least 2, got {max_number}")
        if max_turns < 1:
            raise ValueError(f"environment.max_turns must be at least 1, got {max_turns}")
        self.max_number = max_number
        self.max_turns = max_turns
        self.eval_repeats = eval_repeats
        self.wasted_guess_penalty = wasted_guess_penalty
        self._secret: int | None = None
        self._turn = 0
        self._low, self._high = 1, max_number

    def tasks(self, split: str) -> list[Task]:
        check_split("guess-number", split)
        prompt = ({"role": "user", "content": f"guess my number between 1 and {self.max_number} ."},)
        repeats = 1 if split == "train" else self.eval_repeats
        return [
            Task(id=f"{split}-{secret}-{r}", prompt=prompt, reference={"secret": secret}, split=split)
            for r in range(repeats)
            for secret in range(1, self.max_number + 1)
        ]

    def reset(self, task: Task) -> Observation:
        self._secret = int(task.reference["secret"])
        self._turn = 0
        self._low, self._high = 1, self.max_number
        return Observation(task.prompt)

    def step(self, action: str) -> StepResult:
        if self._secret is None:
            raise RuntimeError("guess-number: step() called before reset()")
        self._turn += 1
        guess = self._read_guess(action)
        valid = guess is not None and 1 <= guess <= self.max_number
        if valid and guess == self._secret:
            return StepResult(None, reward=1.0, done=True, info={"success": True, "invalid": 0.0, "wasted": 0.0})
        wasted = not valid or not self._low <= guess <= self._high
        out_of_turns = self._turn >= self.max_turns
        if not valid:
            text = f"invalid . guess a number between 1 and {self.max_number} ."
        elif self._secret > guess:
            text, self._low = f"higher than {guess}", max(self._low, guess + 1)
        else:
            text, self._high = f"lower than {guess}", min(self._high, guess - 1)
        info = {"success": False, "invalid": 0.0 if valid else 1.0, "wasted": float(wasted)}
        reward = -self.wasted_guess_penalty if wasted else 0.0
        return StepResult(None if out_of_turns else Observation.user(text), reward=reward, done=out_of_turns, info=info)

    def _read_guess(self, action: str) -> int | None:
        """The first integer in ``action``; ``None`` when there is none, or when it has more
        digits than ``max_number`` (out of range anyway: an invalid guess like any other)."""
        match = _INTEGER.search(action)
        if match is None:
            return None
        digits = match.group().lstrip("-").lstrip("0") or "0"
        # int() refuses strings over sys.get_int_max_str_digits() (4300) digits: never convert huge ones
        if len(digits) > len(str(self.max_number)):
            return None
        return -int(digits) if match.group().startswith("-") else int(digits)

    def close(self) -> None:
        self._secret = None


@hookimpl
def register_environments(register):
    register("guess-number", GuessNumberEnv)
