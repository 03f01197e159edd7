"""Goals of the web environment, derived from the shop's catalogue.

Kinds: ``cheapest`` (add the cheapest in-stock item of a colour and category to the
cart), ``buy`` (an exact quantity of a product), ``top-rated`` (the price of the best
rated item of a category), ``lightest`` (the name of the lightest item), ``color`` (a
product's colour). Every fifth goal of each kind, in a fixed pseudo-random order, is
held out for ``eval``. Cart goals are judged from the site's cart state, the others
from the answer. Each goal's ``about`` names what it asks about (a ``category`` slug, a
``color``, a ``product`` id), for the solvers that script worked examples (``web_demos``).
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

KINDS = ("cheapest", "buy", "top-rated", "lightest", "color")
"""Every goal kind, in the order demonstrations cycle through them."""


@functools.lru_cache(maxsize=1)
def goals() -> tuple[dict[str, Any], ...]:
    """Every goal on the shop, each ``{"kind", "id", "goal", "reference", "about"}``."""
    from agent_lightning.envs import web_site as site

    out = []
    products = site.catalog()
    for slug, (noun, _) in site.CATEGORIES.items():
        items = [p for p in products if p.category == slug]
        for color in site.COLORS:
            options = [p for p in items if p.color == color and p.in_stock]
            if options:
                best = min(options, key=lambda p: p.price_cents)
                out.append({"kind": "cheapest", "id": f"cheapest-{color}-{slug}", "goal": f"Add the cheapest {color} {noun.lower()} that is in "
                            "stock to your cart (one unit, nothing else), then answer \"done\".",
                            "reference": {"check": "cart", "cart": {best.id: 1}},
                            "about": {"category": slug, "color": color}})
        top = max(items, key=lambda p: p.rating)
        out.append({"kind": "top-rated", "id": f"top-rated-price-{slug}", "goal": f"What is the price in dollars of the highest-rated "
                    f"{noun.lower()}? Answer with the number.", "reference": {"check": "number", "answer": top.price_cents / 100},
                    "about": {"category": slug}})
        light = min(items, key=lambda p: p.weight_g)
        out.append({"kind": "lightest", "id": f"lightest-{slug}", "goal": f"Which {noun.lower()} is the lightest? Answer with its full name.",
                    "reference": {"check": "text", "answer": light.name}, "about": {"category": slug}})
    for p in products:
        out.append({"kind": "color", "id": f"color-{p.id}", "goal": f"What color is the {p.name}? Answer with the color.",
                    "reference": {"check": "text", "answer": p.color}, "about": {"product": p.id}})
        if p.in_stock:
            k = 2 + int(hashlib.sha256(p.id.encode()).hexdigest(), 16) % 4
            out.append({"kind": "buy", "id": f"buy-{k}-{p.id}", "goal": f"Put exactly {k} units of the {p.name} in your cart (and nothing "
                        "else), then answer \"done\".", "reference": {"check": "cart", "cart": {p.id: k}},
                        "about": {"product": p.id}})
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _eval_ids() -> frozenset[str]:
    """Every fifth goal of each kind, in a fixed pseudo-random order, is held out."""
    kinds: dict[str, list[str]] = {}
    for g in goals():
        kinds.setdefault(g["kind"], []).append(g["id"])
    held = set()
    for ids in kinds.values():
        ordered = sorted(ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
        held.update(ordered[::5])
    return frozenset(held)


def goal_split(goal_id: str) -> str:
    return "eval" if goal_id in _eval_ids() else "train"
