"""Meta-test: every hook of the contract is documented in the README and exercised by a
test (a ``@hookimpl`` function of that name in a test file other than this one)."""

from __future__ import annotations

import re
from pathlib import Path

from agent_lightning import hookspecs
from agent_lightning.plugins import KINDS

REPO = Path(__file__).resolve().parents[2]


def contract_hooks() -> list[str]:
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return sorted(name for name, value in vars(hookspecs).items() if callable(value) and hasattr(value, marker))


def test_the_contract_is_the_five_registration_hooks():
    assert contract_hooks() == sorted(KINDS.values())


def test_every_hook_is_documented_in_the_readme():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [hook for hook in contract_hooks() if not re.search(rf"\b{hook}\b", readme)]
    assert missing == [], f"hooks missing from README.md: {missing}"


def test_every_hook_is_exercised_by_a_test():
    this = Path(__file__).resolve()
    sources = [p.read_text(encoding="utf-8") for p in (REPO / "tests").rglob("*.py") if p.resolve() != this]
    assert sources
    missing = []
    for hook in contract_hooks():
        implemented = re.compile(rf"@hookimpl\b[^\n]*\n(?:[ \t]*@[^\n]*\n)*[ \t]*def {hook}\(")
        if not any(implemented.search(text) for text in sources):
            missing.append(hook)
    assert missing == [], f"hooks with no @hookimpl in any test: {missing}"
