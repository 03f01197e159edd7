"""``alightning new-plugin``: scaffold an installable ``agent-lightning-<name>`` distribution.

``create_plugin("demo", "env", Path("."))`` writes::

    agent-lightning-demo/
        pyproject.toml                   entry point  demo = "agent_lightning_demo"
        README.md
        agent_lightning_demo/__init__.py a working component with its @hookimpl
        tests/test_agent_lightning_demo.py

The generated tests use the fixtures of the shipped pytest plugin
(``agent_lightning.testing``) and, for environments and rewards, its conformance suite;
they pass untouched once the distribution is installed (``pip install ./agent-lightning-demo``).
Templates live in ``agent_lightning/scaffold_templates/`` (package data).
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

# kind (also the template folder) -> (hook, what the README says it is, usage line)
KINDS: dict[str, tuple[str, str, str]] = {
    "env": ("register_environments", "a small multi-turn environment (reach a target sum in steps of 1 to 3)",
            "alightning run environment.name=$name environment.max_target=6"),
    "reward": ("register_rewards", "a reward: success minus a penalty for long answers",
               "alightning run reward.name=$name reward.length_penalty=0.1"),
    "tracker": ("register_trackers", "a tracker writing one text line per event to the run directory",
                "alightning run 'trackers=[jsonl,$name]'"),
    "algorithm": ("register_algorithms", "GRPO with a scaled learning rate, built by composition",
                  "alightning run algorithm.name=$name algorithm.lr_scale=0.5 algorithm.group_size=4"),
    "backend": ("register_backends", "a policy backend delegating to the transformers backend",
                "alightning run backend.name=$name"),
}
KIND_ALIASES = {"environment": "env"}
_TESTING_NOTES = {
    "env": "`check_environment` runs the conformance suite (reset/step contract, determinism,\n"
           "observation budget, finite rewards, idempotent close); `al_tiny_policy` plays an episode.",
    "reward": "`check_reward` runs the reward conformance suite (finite, deterministic values).",
    "tracker": "the tracker is built through the registry and writes to a temporary run directory.",
    "algorithm": "`al_tiny_policy` gives a tiny random-init policy to set the algorithm up on.",
    "backend": "`al_tiny_policy` is the reference the delegated backend is compared with.",
}


def _templates() -> Path:
    return Path(__file__).resolve().parents[1] / "scaffold_templates"


def module_name(name: str) -> str:
    """The Python package of plugin ``name``: ``my-env`` -> ``agent_lightning_my_env``."""
    return "agent_lightning_" + name.replace("-", "_")


def create_plugin(name: str, kind: str = "env", dest: str | Path = ".") -> Path:
    """Write ``dest/agent-lightning-<name>/`` for a plugin of ``kind``; return its path.

    Args:
        name: The plugin and component name: lowercase letters, digits and single dashes,
            starting with a letter (``demo``, ``my-env``).
        kind: ``env`` (or ``environment``), ``reward``, ``tracker``, ``algorithm`` or ``backend``.
        dest: The folder to create the distribution in (created if missing).

    Raises:
        ValueError: An invalid name or kind, or a destination that already exists.
    """
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(f"invalid plugin name {name!r}: use lowercase letters, digits and single dashes, "
                         "starting with a letter (e.g. 'demo' or 'my-env')")
    kind = KIND_ALIASES.get(kind, kind)
    if kind not in KINDS:
        raise ValueError(f"invalid plugin kind {kind!r} (choose from: {', '.join(KINDS)})")
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise ValueError(f"destination {dest} exists and is not a directory")
    dist = f"agent-lightning-{name}"
    root = dest / dist
    if root.exists():
        raise ValueError(f"destination {root} already exists; remove it or choose another --dest")

    hook, summary, usage = KINDS[kind]
    module = module_name(name)
    words = {
        "name": name, "dist": dist, "module": module, "kind": "environment" if kind == "env" else kind,
        "hook": hook, "summary": summary, "cls": "".join(part.capitalize() for part in name.split("-")),
        "func": name.replace("-", "_"), "testing_note": _TESTING_NOTES[kind],
        "usage": "```\n" + Template(usage).substitute(name=name) + "\n```",
    }
    templates = _templates()
    files = {
        root / "pyproject.toml": templates / "pyproject.toml.tmpl",
        root / "README.md": templates / "README.md.tmpl",
        root / module / "__init__.py": templates / kind / "module.py.tmpl",
        root / "tests" / f"test_{module}.py": templates / kind / "test_plugin.py.tmpl",
    }
    rendered = {path: Template(source.read_text(encoding="utf-8")).substitute(words) for path, source in files.items()}
    for path, text in rendered.items():  # render everything first: a template error leaves nothing behind
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root
