"""Plugin discovery: built-ins, then installed ``agent_lightning`` entry points.

Built-in components are plugin modules registered through exactly the hooks an outside
``agent-lightning-<name>`` distribution uses. A plugin that fails (raises on import,
raises inside a hook, implements a misspelled hook) is reported with its distribution,
version and entry point, left out, and the others keep working; ``strict=True`` (or
``ALIGHTNING_STRICT_PLUGINS=1``) turns such a failure into an error instead.

Environment variables:
* ``ALIGHTNING_DISABLE_PLUGIN_AUTOLOAD=1`` — do not load entry points (built-ins only).
* ``ALIGHTNING_BLOCK_PLUGINS=name1,name2`` — skip these plugins (entry-point or module names).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata as metadata
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable

import pluggy

from agent_lightning import __version__, hookspecs
from agent_lightning.registry import Registry, Source

ENTRY_POINT_GROUP = "agent_lightning"

BUILTIN_PLUGINS: tuple[str, ...] = (
    "agent_lightning.envs.guess_number",
    "agent_lightning.envs.tool_use",
    "agent_lightning.envs.code",
    "agent_lightning.envs.web",
    "agent_lightning.envs.api",
    "agent_lightning.rewards.env_rewards",
    "agent_lightning.rewards.matching",
    "agent_lightning.rewards.tests_passed",
    "agent_lightning.rewards.composite",
    "agent_lightning.rewards.reward_model",
    "agent_lightning.rewards.http",
    "agent_lightning.algorithms.grpo",
    "agent_lightning.algorithms.ppo",
    "agent_lightning.algorithms.rloo",
    "agent_lightning.algorithms.reinforce_pp",
    "agent_lightning.algorithms.dpo",
    "agent_lightning.trackers.console",
    "agent_lightning.trackers.jsonl",
    "agent_lightning.trackers.mlflow",
    "agent_lightning.trackers.wandb",
    "agent_lightning.trackers.tensorboard",
    "agent_lightning.backends.transformers.backend",
    "agent_lightning.agents.builtin",
)

KINDS = {
    "environment": "register_environments",
    "reward": "register_rewards",
    "algorithm": "register_algorithms",
    "tracker": "register_trackers",
    "backend": "register_backends",
    "agent": "register_agents",
}


class PluginError(RuntimeError):
    """A plugin could not be loaded or registered (raised only in strict mode)."""


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that was left out, and why."""

    source: Source
    entry_point: str
    error: str

    def __str__(self) -> str:
        where = f", entry point '{self.entry_point}'" if self.entry_point else ""
        return f"{self.source}{where}: {self.error}"


@dataclass
class PluginManager:
    """The registries of every kind, filled from the plugins that loaded."""

    pm: pluggy.PluginManager
    registries: dict[str, Registry]
    sources: dict[str, Source] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)

    @property
    def environments(self) -> Registry:
        return self.registries["environment"]

    @property
    def rewards(self) -> Registry:
        return self.registries["reward"]

    @property
    def algorithms(self) -> Registry:
        return self.registries["algorithm"]

    @property
    def trackers(self) -> Registry:
        return self.registries["tracker"]

    @property
    def backends(self) -> Registry:
        return self.registries["backend"]

    @property
    def agents(self) -> Registry:
        return self.registries["agent"]

    def unknown(self, kind: str, name: str) -> str:
        """The unknown-name message, mentioning failed plugins that might have provided it."""
        message = self.registries[kind].unknown_message(name)
        if self.failures:
            message += f"; {len(self.failures)} plugin(s) failed to load (see 'alightning plugins')"
        return message


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _blocked_from_env() -> set[str]:
    raw = os.environ.get("ALIGHTNING_BLOCK_PLUGINS", "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def _misspelled_hooks(plugin: Any) -> list[str]:
    """Names of functions marked ``@hookimpl`` that match no hook in the contract."""
    known = set(KINDS.values())
    bad = []
    for attr in dir(plugin):
        value = getattr(plugin, attr, None)
        if callable(value) and hasattr(value, f"{hookspecs.PROJECT_NAME}_impl") and attr not in known:
            close = difflib.get_close_matches(attr, sorted(known), n=1)
            bad.append(f"'{attr}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    return bad


def build_plugin_manager(
    *,
    autoload: bool | None = None,
    blocked: Iterable[str] = (),
    extra_plugins: Iterable[tuple[str, Any]] = (),
    strict: bool | None = None,
) -> PluginManager:
    """Discover plugins and fill the registries.

    Args:
        autoload: Load installed entry points; default: unless
            ``ALIGHTNING_DISABLE_PLUGIN_AUTOLOAD=1``.
        blocked: Plugin names to skip, added to ``ALIGHTNING_BLOCK_PLUGINS``.
        extra_plugins: ``(name, plugin object)`` pairs registered after the entry points
            (tests and embedding applications use this).
        strict: Raise ``PluginError`` on the first failing plugin instead of reporting it.
    """
    if autoload is None:
        autoload = not _env_flag("ALIGHTNING_DISABLE_PLUGIN_AUTOLOAD")
    if strict is None:
        strict = _env_flag("ALIGHTNING_STRICT_PLUGINS")
    block = set(blocked) | _blocked_from_env()

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    manager = PluginManager(pm=pm, registries={kind: Registry(kind) for kind in KINDS})
    ordered: list[tuple[str, Any, Source, str]] = []

    def fail(source: Source, entry_point: str, error: str) -> None:
        failure = PluginFailure(source, entry_point, error)
        if strict:
            raise PluginError(str(failure))
        manager.failures.append(failure)
        warnings.warn(f"agent-lightning: skipping {failure}", stacklevel=3)

    builtin_dist = ("agent-lightning", __version__)
    for module_name in BUILTIN_PLUGINS:
        if module_name in block:
            continue
        source = Source(module_name, *builtin_dist)
        try:
            ordered.append((module_name, importlib.import_module(module_name), source, ""))
        except Exception as exc:  # a broken built-in is reported like any plugin
            fail(source, "", f"import failed: {type(exc).__name__}: {exc}")

    if autoload:
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in block:
                continue
            dist = getattr(ep, "dist", None)
            source = Source(ep.name, dist.name if dist else "unknown", dist.version if dist else "unknown")
            try:
                plugin = ep.load()
            except Exception as exc:
                fail(source, ep.value, f"import failed: {type(exc).__name__}: {exc}")
                continue
            ordered.append((ep.name, plugin, source, ep.value))

    for name, plugin in extra_plugins:
        if name not in block:
            ordered.append((name, plugin, Source(name, "local", "-"), ""))

    for name, plugin, source, entry_point in ordered:
        misspelled = _misspelled_hooks(plugin)
        if misspelled:
            fail(source, entry_point, f"implements unknown hook {', '.join(misspelled)}")
            continue
        if pm.get_plugin(name) is not None or pm.is_registered(plugin):
            fail(source, entry_point, f"a plugin named '{name}' is already registered")
            continue
        pm.register(plugin, name=name)
        manager.sources[name] = source
    pm.check_pending()  # belt and braces: nothing unvalidated may remain registered

    for kind, hook_name in KINDS.items():
        registry = manager.registries[kind]
        for name, _plugin, source, entry_point in ordered:
            plugin = pm.get_plugin(name)
            if plugin is None or manager.sources.get(name) is not source:
                continue
            hook = getattr(plugin, hook_name, None)
            if hook is None or not hasattr(hook, f"{hookspecs.PROJECT_NAME}_impl"):
                continue

            def register(comp_name: str, factory: Any, _source: Source = source) -> None:
                registry.register(comp_name, factory, _source)

            try:
                hook(register=register)
            except Exception as exc:
                fail(source, entry_point, f"{hook_name} raised {type(exc).__name__}: {exc}")
    return manager


def create_component(pm: PluginManager, kind: str, section: str, name: str, *args: Any, **options: Any) -> Any:
    """Build the component ``name`` of ``kind`` (``environment``, ``reward``, ``algorithm``,
    ``tracker``, ``backend``) from the registry with ``options``; an unknown name or a bad
    option becomes a one-line ``ConfigError`` naming the config ``section``."""
    from agent_lightning.config import ConfigError
    from agent_lightning.registry import RegistryError

    registry = pm.registries[kind]
    if name not in registry:
        raise ConfigError(f"{section}.name: {pm.unknown(kind, name)}")
    try:
        return registry.create(name, *args, **options)
    except (RegistryError, ValueError, TypeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc).replace(f"'{kind}.", f"'{section}.")) from None


@functools.lru_cache(maxsize=1)
def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager with default discovery (built lazily, once)."""
    return build_plugin_manager()
