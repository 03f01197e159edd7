"""Task generator of the tool-use environment.

Every task is a dict ``{"id", "question", "reference"}``; ``reference`` holds
``answer`` (a number or text), optionally ``abs_tol``, ``store`` (the key-value store's
initial contents) and ``check: "store"`` with ``store_key`` for goals judged from the
store's final state. Generation is deterministic in ``seed``; the eval split is built
first and train skips any question already in it, so no question is in both.

Families:
* ``arithmetic`` — multi-step word problems with 3-4 digit numbers (calculator).
* ``lookup`` — one fact from the fictional documents (search).
* ``lookup-math`` — two facts combined (search, then calculator).
* ``kv-prices`` — prices kept in the key-value store (kv_get/kv_keys, then calculator).
* ``kv-store`` — compute a value and store it under a key (calculator, then kv_set).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import random
from typing import Any, Callable, Sequence

FAMILIES = ("arithmetic", "lookup", "lookup-math", "kv-prices", "kv-store")


@functools.lru_cache(maxsize=1)
def documents() -> tuple[dict[str, Any], ...]:
    """The shipped document collection (``tool_use_documents.json``)."""
    text = (importlib.resources.files("agent_lightning.envs.data") / "tool_use_documents.json").read_text()
    return tuple(json.loads(text)["documents"])


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [d["facts"] for d in documents() if d["facts"]["kind"] == kind]


# ----------------------------------------------------------------------------- families


def _arithmetic(rng: random.Random) -> tuple[str, dict[str, Any]]:
    kind = rng.randrange(6)
    if kind == 0:
        a, b, c = rng.randint(120, 980), rng.randint(12, 96), rng.randint(100, 999)
        return (f"A warehouse has {a} boxes with {b} bolts in each box. Then {c} bolts are shipped out. "
                "How many bolts are left?", {"answer": a * b - c})
    if kind == 1:
        a, b, c = rng.randint(45, 180), rng.randint(3, 19), rng.randint(100, 950)
        return (f"A train travels at {a} km per hour for {b} hours and then another {c} km. "
                "How many km does it travel in total?", {"answer": a * b + c})
    if kind == 2:
        a, b, c, d = rng.randint(2000, 9000), rng.randint(35, 240), rng.randint(4, 21), rng.randint(100, 2000)
        return (f"A tank holds {a} liters. It loses {b} liters per day for {c} days and is then refilled "
                f"with {d} liters. How many liters does it hold now?", {"answer": a - b * c + d})
    if kind == 3:
        a, b, c = rng.randint(140, 990), rng.randint(2, 4), rng.randint(12, 31)
        return (f"A factory makes {a} widgets per shift and runs {b} shifts a day. How many widgets does it "
                f"make in {c} days?", {"answer": a * b * c})
    if kind == 4:
        price, pct = rng.randint(1200, 9800) / 100, rng.choice([5, 10, 15, 20, 25, 30, 35, 40])
        return (f"A jacket costs {price:.2f} dollars and is discounted by {pct} percent. What is the new "
                "price in dollars, rounded to 2 decimals?", {"answer": round(price * (100 - pct) / 100, 2),
                                                            "abs_tol": 0.011})
    n, bill, tip = rng.randint(3, 9), rng.randint(8000, 30000) / 100, rng.randint(900, 5000) / 100
    return (f"{n} friends split a bill of {bill:.2f} dollars plus a tip of {tip:.2f} dollars equally. How many "
            "dollars does each pay, rounded to 2 decimals?", {"answer": round((bill + tip) / n, 2), "abs_tol": 0.011})


_LOOKUPS: dict[str, list[tuple[str, str]]] = {
    "city": [("population", "How many people live in {name}, according to the documents?"),
             ("founded", "In which year was the town of {name} founded?"),
             ("elevation", "At what elevation, in meters, does {name} lie?")],
    "mountain": [("height", "How high is {name}, in meters above sea level?")],
    "planet": [("moons", "How many moons does the planet {name} have?"),
               ("day_hours", "How many hours does one day last on the planet {name}?")],
    "company": [("founded", "In which year was {name} founded?"),
                ("employees", "How many people does {name} employ?")],
}


def _lookup(rng: random.Random) -> tuple[str, dict[str, Any]]:
    kind = rng.choice(sorted(_LOOKUPS))
    facts = rng.choice(_by_kind(kind))
    field, template = rng.choice(_LOOKUPS[kind])
    return template.format(name=facts["name"]), {"answer": facts[field]}


def _lookup_math(rng: random.Random) -> tuple[str, dict[str, Any]]:
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.sample(_by_kind("mountain"), 2)
        return (f"What is the combined height of {a['name']} and {b['name']}, in meters?",
                {"answer": a["height"] + b["height"]})
    if kind == 1:
        a, b = rng.sample(_by_kind("city"), 2)
        return (f"How many more people live in {a['name']} than in {b['name']}? (Negative if fewer.)",
                {"answer": a["population"] - b["population"]})
    if kind == 2:
        a, b = rng.sample(_by_kind("planet"), 2)
        return (f"How many moons do the planets {a['name']} and {b['name']} have together?",
                {"answer": a["moons"] + b["moons"]})
    a = rng.choice(_by_kind("company"))
    year = rng.randint(2030, 2060)
    return f"How many years old will {a['name']} be in the year {year}?", {"answer": year - a["founded"]}


_ITEMS = ("apple", "pear", "lamp", "kettle", "notebook", "candle", "scarf", "teapot", "ladder", "bucket")


def _kv_prices(rng: random.Random) -> tuple[str, dict[str, Any]]:
    items = rng.sample(_ITEMS, 5)
    prices = {item: rng.randint(150, 4999) / 100 for item in items}
    x, y = rng.sample(items, 2)
    qx, qy = rng.randint(2, 12), rng.randint(2, 12)
    store = {f"price:{i}": f"{p:.2f}" for i, p in prices.items()}
    return (f"The key-value store holds item prices in dollars under keys like 'price:<item>'. What do {qx} "
            f"{x}s and {qy} {y}s cost together, in dollars?",
            {"answer": round(qx * prices[x] + qy * prices[y], 2), "abs_tol": 0.011, "store": store})


def _kv_store(rng: random.Random) -> tuple[str, dict[str, Any]]:
    a, b, c = rng.randint(101, 999), rng.randint(11, 99), rng.randint(100, 9999)
    key = rng.choice(["result", "total", "answer", "value"])
    return (f"Compute {a} * {b} - {c} and save the result in the key-value store under the key '{key}'. "
            "Then reply <answer>done</answer>.",
            {"answer": a * b - c, "check": "store", "store_key": key})


_GENERATORS: dict[str, Callable[[random.Random], tuple[str, dict[str, Any]]]] = {
    "arithmetic": _arithmetic, "lookup": _lookup, "lookup-math": _lookup_math,
    "kv-prices": _kv_prices, "kv-store": _kv_store,
}


@functools.lru_cache(maxsize=8)
def generate(families: Sequence[str], num_train: int, num_eval: int, seed: int = 0
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train, eval)`` task dicts, families interleaved round-robin, questions unique.

    Cached: ``families`` must be hashable (a tuple); callers must not mutate the result.
    """
    families = list(families)
    if not families:
        raise ValueError("tool-use: at least one task family is needed")
    seen: set[str] = set()
    out = {}
    for split, count in (("eval", num_eval), ("train", num_train)):
        items: list[dict[str, Any]] = []
        attempts = 0
        while len(items) < count:
            family = families[attempts % len(families)]
            rng = random.Random(f"tool-use/{seed}/{split}/{family}/{attempts}")
            attempts += 1
            question, reference = _GENERATORS[family](rng)
            if question in seen:
                if attempts > 50 * (count + 10):
                    break  # a small family (lookup) ran out of distinct questions
                continue
            seen.add(question)
            items.append({"id": f"{split}-{family}-{len(items)}", "question": question, "reference": reference})
        out[split] = items
    return out["train"], out["eval"]
