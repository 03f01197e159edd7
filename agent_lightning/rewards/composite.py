"""``composite``: a weighted sum of named reward components, reported part by part.

Config::

    reward:
      name: composite
      components:
        correct: {name: numeric-match, weight: 1.0, options: {rel_tol: 1.0e-4}}
        tidy:    {name: format, weight: 0.1}

Each component is built by name through the reward registry (so any registered reward,
built-in or from a plugin, can be a component). The result is a ``RewardResult`` whose
``components`` are ``weight * value`` per name and whose total is their sum.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from agent_lightning.hookspecs import hookimpl
from agent_lightning.types import RewardResult, Trajectory


def composite(components: Mapping[str, Any], registry: Any = None):
    """Build the weighted sum.

    Args:
        components: ``{label: {"name": reward name, "weight": w, "options": {...}}}``; instead
            of ``name``/``options`` an entry may give ``reward``: an already built callable.
        registry: Where reward names are looked up (anything with ``create(name, **options)``);
            default: the process-wide plugin manager's reward registry.
    """
    if not isinstance(components, Mapping) or not components:
        raise ValueError("reward.components must be a non-empty mapping of label -> {name, weight, options}")
    built: list[tuple[str, float, Callable[[Trajectory], Any]]] = []
    for label, spec in components.items():
        where = f"reward.components.{label}"
        if not isinstance(spec, Mapping):
            raise ValueError(f"{where} must be a mapping with 'name' and 'weight', got {type(spec).__name__}")
        unknown = set(spec) - {"name", "weight", "options", "reward"}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)} (allowed: name, weight, options)")
        weight = spec.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"{where}.weight must be a finite number, got {weight!r}")
        if "reward" in spec:
            fn = spec["reward"]
            if not callable(fn):
                raise ValueError(f"{where}.reward must be callable")
        else:
            if not isinstance(spec.get("name"), str):
                raise ValueError(f"{where}.name must name a registered reward")
            if spec["name"] == "composite":
                raise ValueError(f"{where}: a composite cannot contain another composite")
            if registry is None:
                from agent_lightning.plugins import get_plugin_manager

                registry = get_plugin_manager().rewards
            fn = registry.create(spec["name"], **dict(spec.get("options") or {}))
        built.append((str(label), float(weight), fn))

    def reward(trajectory: Trajectory) -> RewardResult:
        parts = {}
        for label, weight, fn in built:
            value = fn(trajectory)
            value = value.total if isinstance(value, RewardResult) else float(value)
            if not math.isfinite(value):
                raise ValueError(f"reward component '{label}' returned {value}")
            parts[label] = weight * value
        return RewardResult(components=parts)

    return reward


composite.description = "weighted sum of named reward components (any registered rewards)"  # type: ignore[attr-defined]


@hookimpl
def register_rewards(register):
    register("composite", composite)
