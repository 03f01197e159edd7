"""Worked examples for the ``code`` environment's prompt (``CodeEnv(demonstrations=N)``).

A 135M chat model told to reply with "one ```python code block" often answers in prose, or
with a block that does not define the function; one worked exchange placed before the task
as real chat turns shows it the exact layout. Each demo is a problem of its own (no task
shares its entry point) in the shape of a shipped problem (``entry_point``, ``description``,
``tests``, ``num_public``), so its user message is formatted exactly like a task prompt,
plus ``solution``: the source the assistant turn shows, fenced. The tests check that each
solution passes its examples. Used in order: ``demonstrations=2`` takes the first two.
"""

from __future__ import annotations

from typing import Any

DEMOS: tuple[dict[str, Any], ...] = (
    {"entry_point": "add_one", "description": "Return the integer n plus one.",
     "tests": [{"args": [4], "expected": 5}, {"args": [-1], "expected": 0}], "num_public": 2,
     "solution": "def add_one(n):\n    return n + 1\n"},
    {"entry_point": "shout", "description": "Return the string s in upper case followed by '!'.",
     "tests": [{"args": ["hi"], "expected": "HI!"}, {"args": ["Go now"], "expected": "GO NOW!"}],
     "num_public": 2,
     "solution": "def shout(s):\n    return s.upper() + '!'\n"},
    {"entry_point": "clamp", "description": "Return the number n limited to the range from low to high "
     "(inclusive).",
     "tests": [{"args": [15, 0, 10], "expected": 10}, {"args": [-3, 0, 10], "expected": 0}], "num_public": 2,
     "solution": "def clamp(n, low, high):\n    if n < low:\n        return low\n    if n > high:\n"
                 "        return high\n    return n\n"},
    {"entry_point": "total_length", "description": "Return the total number of characters in all the "
     "strings of the list words.",
     "tests": [{"args": [["ab", "cde"]], "expected": 5}, {"args": [[]], "expected": 0}], "num_public": 2,
     "solution": "def total_length(words):\n    total = 0\n    for w in words:\n        total += len(w)\n"
                 "    return total\n"},
)


def demo_reply(demo: dict[str, Any]) -> str:
    """The assistant turn of a demo: the function in one ```python block, as the system prompt asks."""
    return f"```python\n{demo['solution']}```"
