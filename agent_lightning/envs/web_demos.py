"""Worked examples for the web environment: a solver per goal kind and the episodes it plays.

Small models follow a format they have *seen* far better than one they are told about, so
``WebEnv(demonstrations=N)`` puts N solved episodes before the task as real chat turns.

* ``plan(goal)`` — the shortest route from the home page that is *grounded*: every choice
  and the answer can be read off pages the route has shown (the catalogue picks the route;
  it never lets the route skip looking). Steps name elements by their label
  (``("click", "Tents")``, ``("type", "q", "Drifter Tent")``), not by number.
* ``play(env, task, steps)`` — plays a plan on a real ``WebEnv``, turning each label into
  the ``[N]`` of the page actually shown, and returns the chat turns exactly as the episode
  produced them; raises if the episode does not end in success.
* ``pick_goals(kinds, count, candidates)`` — which goals become examples.

Route lengths in actions, the answer included: ``color`` 3 (product on the first page of
its category, sorted by name) or 4 (search its name; ties go to search, whose numbers are
the same for every product; with ``type_submits`` a search is one action, so every
``color`` route is the 3-action search); ``buy`` 5 or 6; ``cheapest`` 5 (search "colour noun", open the
cheapest hit, add it), plus 2 per cheaper hit that is out of stock; ``top-rated`` 3
(category, sort by rating, read the first price); ``lightest`` 18 (search the noun and open
all 8 products: weights appear only on product pages), more than the default ``max_turns``.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

from agent_lightning.envs import web_site as site
from agent_lightning.types import Message, Task

Step = tuple[str, ...]
"""``("click", label)``, ``("type", field_name, text)``, ``("back",)`` or ``("answer", text)``."""

_SEARCH = "(button: Search)"
_ADD = "(button: Add to cart)"


def _search(text: str) -> list[Step]:
    return [("type", "q", text), ("click", _SEARCH)]


def _in_category(slug: str) -> list[site.Product]:
    return [p for p in site.catalog() if p.category == slug]  # catalogue order = search-result order


def _to_product(p: site.Product, type_submits: bool = False) -> list[Step]:
    """Home page -> product page: through its category when it is on the listing's first page
    (sorted by name, 2 steps), else by searching its name (3 steps; category + next page ties).
    With ``type_submits`` the search takes 2 steps, so it ties the category and wins."""
    by_name = sorted(_in_category(p.category), key=lambda q: q.name)
    if by_name.index(p) < site.PAGE_SIZE and not type_submits:
        return [("click", site.CATEGORIES[p.category][1]), ("click", p.name)]
    return _search(p.name) + [("click", p.name)]


def _color(goal: dict[str, Any], type_submits: bool = False) -> list[Step]:
    p = site.product_by_id(goal["about"]["product"])
    return _to_product(p, type_submits) + [("answer", p.color)]


def _buy(goal: dict[str, Any], type_submits: bool = False) -> list[Step]:
    p = site.product_by_id(goal["about"]["product"])
    quantity = goal["reference"]["cart"][p.id]
    return _to_product(p, type_submits) + [("type", "qty", str(quantity)), ("click", _ADD), ("answer", "done")]


def _cheapest(goal: dict[str, Any], type_submits: bool = False) -> list[Step]:
    slug, color = goal["about"]["category"], goal["about"]["color"]
    hits = sorted((p for p in _in_category(slug) if p.color == color), key=lambda p: p.price_cents)
    steps = _search(f"{color} {site.CATEGORIES[slug][0].lower()}")  # lists every hit with its price
    for p in hits:  # stock shows only on the product page: open hits cheapest first
        steps.append(("click", p.name))
        if p.in_stock:
            return steps + [("click", _ADD), ("answer", "done")]
        steps.append(("back",))
    raise ValueError(f"web demo: goal {goal['id']} has no item in stock")


def _top_rated(goal: dict[str, Any], type_submits: bool = False) -> list[Step]:
    slug = goal["about"]["category"]
    top = max(_in_category(slug), key=lambda p: p.rating)
    return [("click", site.CATEGORIES[slug][1]), ("click", "rating"), ("answer", top.price)]


def _lightest(goal: dict[str, Any], type_submits: bool = False) -> list[Step]:
    slug = goal["about"]["category"]
    items = _in_category(slug)
    steps = _search(site.CATEGORIES[slug][0].lower())  # all 8 on one results page
    for i, p in enumerate(items):
        steps += [("click", p.name)] + ([("back",)] if i < len(items) - 1 else [])
    return steps + [("answer", min(items, key=lambda p: p.weight_g).name)]


PLANNERS: dict[str, Callable[[dict[str, Any], bool], list[Step]]] = {
    "cheapest": _cheapest, "buy": _buy, "top-rated": _top_rated, "lightest": _lightest, "color": _color}


def plan(goal: dict[str, Any], *, type_submits: bool = False) -> list[Step]:
    """The shortest grounded route for one of ``web_goals.goals()``, from the home page.

    With ``type_submits`` (``WebEnv(type_submits=True)``: typing submits the form), the
    button press that follows each ``type`` is dropped.
    """
    steps = PLANNERS[goal["kind"]](goal, type_submits)
    if not type_submits:
        return steps
    return [s for i, s in enumerate(steps) if not (i and steps[i - 1][0] == "type" and _presses_button(s))]


def _presses_button(step: Step) -> bool:
    return step[0] == "click" and step[1].startswith("(button: ")


def resolve(step: Step, page: str) -> str:
    """The action text for ``step`` on the rendered ``page`` (labels become ``[N]``)."""
    if step[0] in ("back", "answer"):
        return "back" if step[0] == "back" else f'answer "{step[1]}"'
    pattern = (rf'\[(\d+)\] \(text field "{re.escape(step[1])}":' if step[0] == "type"
               else rf"\[(\d+)\] {re.escape(step[1])}(?=\s|$)")
    m = re.search(pattern, page, re.M)
    if m is None:
        raise RuntimeError(f"web demo: no element {step[1]!r} on the page:\n{page}")
    return f'type {m.group(1)} "{step[2]}"' if step[0] == "type" else f"click {m.group(1)}"


def play(env: Any, task: Task, steps: Sequence[Step]) -> list[Message]:
    """Play ``steps`` on ``env`` (a ``WebEnv``): the task's user message with the start page,
    then assistant action / user page turns, ending with the assistant's ``answer``.
    Raises ``RuntimeError`` unless the last step ends the episode with reward 1."""
    first = env.reset(task).messages[-1]
    turns: list[Message] = [{"role": first["role"], "content": first["content"]}]
    page = first["content"]
    for i, step in enumerate(steps):
        action = resolve(step, page)
        result = env.step(action)
        turns.append({"role": "assistant", "content": action})
        if result.done:
            if i != len(steps) - 1 or result.reward != 1.0:
                raise RuntimeError(f"web demo: {task.id} ended after {action!r} (step {i + 1} of {len(steps)}) "
                                   f"with reward {result.reward}")
            return turns
        shown = result.observation.messages[0]
        turns.append({"role": shown["role"], "content": shown["content"]})
        page = shown["content"]
    raise RuntimeError(f"web demo: {task.id} did not end after its {len(steps)} steps")


def pick_goals(kinds: Sequence[str], count: int, candidates: Sequence[dict[str, Any]], *,
               type_submits: bool = False) -> list[dict[str, Any]]:
    """``count`` goals from ``candidates``, cycling through ``kinds``; within a kind the
    shortest routes first (ties in catalogue order), so the prompt stays short. Raises
    ``ValueError`` naming ``environment.demonstrations`` when a kind runs out."""
    ranked = {k: sorted((g for g in candidates if g["kind"] == k), key=lambda g: len(plan(g, type_submits=type_submits))) for k in kinds}
    chosen = []
    for i in range(count):
        kind, rank = kinds[i % len(kinds)], i // len(kinds)
        if rank >= len(ranked[kind]):
            raise ValueError(f"environment.demonstrations: {count} needs {rank + 1} examples of kind {kind!r}, "
                             f"which has only {len(ranked[kind])} training goals")
        chosen.append(ranked[kind][rank])
    return chosen
