"""Typed registries of components, owned by the core and filled through the hooks."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterator


class RegistryError(ValueError):
    """A registration conflict or a lookup of an unknown component name."""


@dataclass(frozen=True)
class Source:
    """Where a component came from: the plugin and, for installed ones, its distribution."""

    plugin: str
    distribution: str
    version: str

    def __str__(self) -> str:
        return f"plugin '{self.plugin}' ({self.distribution} {self.version})"


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    kind: str
    name: str
    factory: Callable[..., Any]
    source: Source

    @property
    def description(self) -> str:
        text = getattr(self.factory, "description", None) or (self.factory.__doc__ or "")
        return text.strip().splitlines()[0] if text.strip() else ""


class Registry:
    """Name -> factory for one kind of component (``environment``, ``reward``...).

    Duplicate names are rejected naming both sources; an unknown name is answered with
    the known ones and a did-you-mean.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, factory: Callable[..., Any], source: Source) -> None:
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{source} registered a {self.kind} with an invalid name {name!r}")
        if not callable(factory):
            raise RegistryError(f"{source} registered {self.kind} '{name}' with a non-callable factory {factory!r}")
        if name in self._entries:
            first = self._entries[name].source
            raise RegistryError(f"{self.kind} '{name}' is registered twice: by {first} and by {source}")
        self._entries[name] = Entry(self.kind, name, factory, source)

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        known = sorted(self._entries)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"unknown {self.kind} '{name}' (known: {', '.join(known) or 'none'}){hint}"

    def create(self, name: str, /, *args: Any, **options: Any) -> Any:
        """Build the component ``name`` with ``options``.

        Options the factory does not accept are rejected as ``unknown key '<kind>.<key>'``
        with the allowed keys; other ``TypeError``s from the factory name the component.
        """
        entry = self.get(name)
        allowed = _accepted_keywords(entry.factory)
        if allowed is not None:
            for key in options:
                if key not in allowed:
                    close = difflib.get_close_matches(key, sorted(allowed), n=1)
                    hint = f"; did you mean '{close[0]}'?" if close else ""
                    raise RegistryError(
                        f"unknown key '{self.kind}.{key}' for {self.kind} '{name}' "
                        f"(allowed: {', '.join(sorted(allowed)) or 'none'}){hint}"
                    )
        try:
            return entry.factory(*args, **options)
        except TypeError as exc:
            raise RegistryError(f"{self.kind} '{name}' from {entry.source} rejected its options: {exc}") from exc

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return sorted(self._entries)


def _accepted_keywords(factory: Callable[..., Any]) -> set[str] | None:
    """Keyword names ``factory`` accepts, or ``None`` when it takes ``**kwargs`` or is opaque."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    names = set()
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.add(parameter.name)
    return names
