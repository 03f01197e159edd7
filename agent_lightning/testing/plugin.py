"""The pytest plugin shipped with agent-lightning (entry point ``pytest11``).

Fixtures for plugin tests; importing this module is cheap (torch and transformers are
imported only when ``al_tiny_policy`` is used).
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

TINY_PRESET_OPTIONS = {"hidden_size": 32, "num_layers": 1, "num_heads": 2}


def plugin_manager_with(*plugins: Any) -> Any:
    """A strict plugin manager holding only ``plugins`` (modules or objects with ``@hookimpl``
    functions): every built-in is blocked and installed entry points are not loaded.

    Each plugin is registered as ``under-test:<module or class name>``; a plugin that
    implements a misspelled hook or raises in a hook raises ``PluginError``.
    """
    from agent_lightning.plugins import BUILTIN_PLUGINS, build_plugin_manager

    if not plugins:
        raise ValueError("al_plugin_manager: give at least one plugin module or object")
    extra = []
    for plugin in plugins:
        label = getattr(plugin, "__name__", None) or type(plugin).__name__
        extra.append((f"under-test:{label}", plugin))
    return build_plugin_manager(autoload=False, blocked=BUILTIN_PLUGINS, extra_plugins=extra, strict=True)


def tiny_policy(seed: int = 0) -> Any:
    """A tiny random-init ``TransformersBackend`` (hidden 32, one layer, two heads) on the CPU."""
    from agent_lightning.backends.transformers.backend import TransformersBackend
    from agent_lightning.config import BackendConfig, ModelConfig

    return TransformersBackend(ModelConfig(preset="tiny", preset_options=dict(TINY_PRESET_OPTIONS)),
                               BackendConfig(device="cpu"), seed=seed)


@pytest.fixture
def al_plugin_manager() -> Callable[..., Any]:
    """Factory: ``al_plugin_manager(my_plugin_module)`` -> a ``PluginManager`` with only it."""
    return plugin_manager_with


@pytest.fixture
def al_tiny_policy() -> Any:
    """A tiny random-init transformers backend (seed 0, CPU, float32)."""
    return tiny_policy(0)
