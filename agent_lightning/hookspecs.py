"""The plugin contract: the whole of it.

A plugin is a module (or object) with functions decorated by ``hookimpl``; each receives
a ``register(name, factory)`` callable owned by the core. Built-in components use these
same hooks. Outside distributions declare one entry point in the group ``agent_lightning``:

    [project.entry-points.agent_lightning]
    myplugin = "my_package.plugin"

Factories are called with the options from the config section (``options:``) and must
do their heavy imports inside, so that listing plugins stays cheap.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

PROJECT_NAME = "agent_lightning"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[[str, Callable[..., Any]], None]
"""``register(name, factory)``: adds a component; a duplicate name is an error naming both sources."""


@hookspec
def register_environments(register: Register) -> None:
    """Register environment factories.

    ``factory(**options)`` returns an object satisfying ``agent_lightning.types.Environment``.
    Called once when the plugin manager is built. Optionally the factory carries a
    ``description`` attribute (one line) shown by ``alightning plugins``.
    """


@hookspec
def register_rewards(register: Register) -> None:
    """Register reward factories.

    ``factory(**options)`` returns a callable ``(Trajectory) -> float | RewardResult``.
    Called once when the plugin manager is built.
    """


@hookspec
def register_algorithms(register: Register) -> None:
    """Register algorithm factories.

    ``factory(**options)`` returns an object satisfying ``agent_lightning.types.Algorithm``.
    Called once when the plugin manager is built.
    """


@hookspec
def register_trackers(register: Register) -> None:
    """Register tracker factories.

    ``factory(run_dir=..., **options)`` returns an object satisfying
    ``agent_lightning.types.Tracker``. Called once when the plugin manager is built.
    """


@hookspec
def register_backends(register: Register) -> None:
    """Register policy backend factories.

    ``factory(model_config, backend_config)`` returns an object satisfying
    ``agent_lightning.types.Backend``. Called once when the plugin manager is built.
    """


@hookspec
def register_agents(register: Register) -> None:
    """Register agent factories (agents that call the policy endpoint; ``agent.name``).

    ``factory(**options)`` returns a callable ``solve(task: dict, llm) -> result`` (sync or
    async; see ``agent_lightning.agents.builtin`` for the results it may return). Called once
    when the plugin manager is built.
    """
