"""The web environment: a real HTTP server, episodes played by a scripted browser."""

from __future__ import annotations

import http.client
import random
import re
import socket

import pytest

from agent_lightning.envs import web_site as site
from agent_lightning.envs.web import WebEnv, goals, parse_action
from agent_lightning.types import StepResult


# ----------------------------------------------------------------------------- the server


def _get(port: int, path: str, headers=None, method="GET", body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()


def test_server_speaks_http_keeps_carts_per_session_and_guards_admin():
    server = site.ShopServer()
    try:
        status, headers, body = _get(server.port, "/")
        assert status == 200 and "Lightning Outfitters" in body
        sid = re.match(r"sid=(\w+)", headers["Set-Cookie"]).group(1)
        product = next(p for p in site.catalog() if p.in_stock)
        status, headers, _ = _get(server.port, "/cart/add", {"Cookie": f"sid={sid}",
                                  "Content-Type": "application/x-www-form-urlencoded"}, "POST", f"product={product.id}&qty=2")
        assert status == 303 and headers["Location"] == "/cart"
        status, _, body = _get(server.port, "/cart", {"Cookie": f"sid={sid}"})
        assert f"{product.name}</a> x 2" in body
        _, _, other = _get(server.port, "/cart")  # a new session has its own, empty cart
        assert "Your cart is empty" in other
        assert _get(server.port, f"/_admin/state?sid={sid}")[0] == 403
        assert _get(server.port, f"/_admin/state?sid={sid}", {site.ADMIN_HEADER: "guess"})[0] == 403
        status, _, state = _get(server.port, f"/_admin/state?sid={sid}", {site.ADMIN_HEADER: server.admin_token})
        assert status == 200 and state == f'{{"cart": {{"{product.id}": 2}}}}'
        assert _get(server.port, "/no/such/page")[0] == 404
        assert _get(server.port, "/cart/add", {"Cookie": f"sid={sid}"}, "POST", "product=zzz&qty=1")[0] == 400
    finally:
        port = server.port
        server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_catalog_answers_are_unique():
    for slug in site.CATEGORIES:
        items = [p for p in site.catalog() if p.category == slug]
        assert len(items) == 8
        for attr in ("price_cents", "weight_g", "rating"):
            assert len({getattr(p, attr) for p in items}) == 8
    assert len({p.id for p in site.catalog()}) == len({p.name for p in site.catalog()}) == 48


def test_env_close_stops_the_server_and_is_idempotent():
    env = WebEnv()
    env.reset(env.tasks("eval")[0])
    port = env.port
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    env.close()
    env.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_splits_are_disjoint_and_cover_every_goal_kind():
    env = WebEnv()
    train, evals = env.tasks("train"), env.tasks("eval")
    assert not {t.id for t in train} & {t.id for t in evals}
    assert len(train) + len(evals) == len(goals())
    kinds = {g["id"]: g["kind"] for g in goals()}
    assert {kinds[t.id] for t in evals} == {kinds[t.id] for t in train} == {"cheapest", "top-rated", "lightest", "color", "buy"}


# ----------------------------------------------------------------------------- a scripted browser


class Browser:
    """Plays the environment the way a model would: reading the text, writing actions."""

    def __init__(self, env: WebEnv, task):
        self.env = env
        self.text = env.reset(task).messages[-1]["content"]
        self.result: StepResult | None = None
        self.requests = 0

    def do(self, action: str) -> str:
        self.result = self.env.step(action)
        self.requests += self.result.info["http_requests"]
        if self.result.observation is not None:
            self.text = self.result.observation.messages[0]["content"]
        return self.text

    def find(self, label: str) -> int:
        m = re.search(rf"\[(\d+)\] {label}", self.text)
        assert m, f"no element {label!r} in:\n{self.text}"
        return int(m.group(1))

    def click(self, label: str) -> str:
        return self.do(f"click {self.find(label)}")

    def type(self, field_name: str, text: str) -> None:
        number = self.find(r'\(text field "' + field_name + '"')
        self.do(f'type {number} "{text}"')

    def products_in_order(self) -> list[str]:
        return re.findall(r"- \[\d+\] (.+?) - \$", self.text)

    def field(self, name: str) -> str:
        return re.search(rf"^{name}: (.+)$", self.text, re.M).group(1)

    def open_product(self, name: str) -> None:
        self.type("q", name)
        self.click(r"\(button: Search\)")
        self.click(re.escape(name))

    def category_products(self, title: str, sort: str) -> list[str]:
        self.click("Home")
        self.click(title)
        self.click(sort)
        names = self.products_in_order()
        while re.search(r"\[\d+\] Next page", self.text):
            self.click("Next page")
            names += self.products_in_order()
        return names


def solve(env: WebEnv, task) -> StepResult:
    """A correct policy for every goal kind, using only what the pages show."""
    b = Browser(env, task)
    goal = task.prompt[-1]["content"].split("\n")[0]
    if m := re.match(r"Goal: Add the cheapest (\w+) (.+?) that is in stock", goal):
        color, noun = m.groups()
        title = next(t for n, t in site.CATEGORIES.values() if n.lower() == noun)
        for name in b.category_products(title, "price"):
            b.open_product(name)
            if b.field("Color") == color and "In stock" in b.text:
                b.click(r"\(button: Add to cart\)")
                return b.env.step('answer "done"')
    if m := re.match(r"Goal: Put exactly (\d+) units of the (.+?) in your cart", goal):
        b.open_product(m.group(2))
        b.type("qty", m.group(1))
        b.click(r"\(button: Add to cart\)")
        assert re.search(rf"x {m.group(1)} - ", b.text)
        return b.env.step('answer "done"')
    if m := re.match(r"Goal: What color is the (.+?)\?", goal):
        b.open_product(m.group(1))
        return b.env.step(f'answer "{b.field("Color")}"')
    if m := re.match(r"Goal: What is the price in dollars of the highest-rated (.+?)\?", goal):
        title = next(t for n, t in site.CATEGORIES.values() if n.lower() == m.group(1))
        first = b.category_products(title, "rating")[0]
        b.open_product(first)
        return b.env.step(f"answer {b.field('Price').lstrip('$')}")
    if m := re.match(r"Goal: Which (.+?) is the lightest\?", goal):
        title = next(t for n, t in site.CATEGORIES.values() if n.lower() == m.group(1))
        weights = {}
        for name in b.category_products(title, "name"):
            b.open_product(name)
            weights[name] = int(b.field("Weight").split()[0])
        return b.env.step(f'answer "{min(weights, key=weights.get)}"')
    raise AssertionError(f"unhandled goal {goal}")


def test_scripted_browser_reaches_every_held_out_goal_over_http():
    env = WebEnv(max_turns=200)
    try:
        results = {t.id: solve(env, t) for t in env.tasks("eval")}
    finally:
        env.close()
    failed = [tid for tid, r in results.items() if not (r.done and r.info["success"] and r.reward == 1.0)]
    assert failed == []
    assert len(results) == 30


def test_wrong_outcomes_are_judged_from_the_site_state():
    env = WebEnv(max_turns=50)
    try:
        task = next(t for t in env.tasks("eval") if t.reference["check"] == "cart")
        (pid, qty), = task.reference["cart"].items()
        name = site.product_by_id(pid).name
        b = Browser(env, task)
        b.open_product(name)
        b.type("qty", str(qty + 1))  # one too many
        b.click(r"\(button: Add to cart\)")
        assert b.env.step('answer "done"').info["success"] is False
        b = Browser(env, task)  # a fresh session: the cart starts empty
        assert "Cart (0 items)" in b.text
        assert b.env.step('answer "done"').info["success"] is False
        answer_task = next(t for t in env.tasks("eval") if t.reference["check"] == "number")
        Browser(env, answer_task)
        wrong = env.step(f"answer {answer_task.reference['answer'] + 1}")
        assert wrong.done and wrong.reward == 0.0
    finally:
        env.close()


def test_turn_budget_ends_the_episode_and_judges_the_cart():
    env = WebEnv(max_turns=2)
    try:
        task = env.tasks("train")[0]
        b = Browser(env, task)
        b.do("click 1")
        assert not b.result.done and b.result.info["http_requests"] == 1
        b.do("back")
        assert b.result.done and b.result.info["success"] is False and b.result.observation is None
    finally:
        env.close()


def test_any_action_text_is_handled(tmp_path):
    rng = random.Random(7)
    env = WebEnv(max_turns=1000)
    try:
        env.reset(env.tasks("train")[0])
        junk = ["", "click", "click -1", "click 0", "click 99999999999999", "type 1", 'type 9 "x"', "type 10 unquoted",
                "back back", "BACK", "answer", "\x00\x01", "click 1\nclick 2", "```\nclick 2\n```", "[3]", "go to cart",
                'type 9 "' + "x" * 10_000 + '"', "\ud800", "click ３"]
        for i in range(300):
            action = rng.choice(junk) if i % 3 else "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(40)))
            result = env.step(action)
            assert isinstance(result, StepResult) and not result.done
            assert result.observation.messages[0]["content"].count("URL: ") == 1
    finally:
        env.close()


@pytest.mark.parametrize("text,expected", [
    ("click 3", ("click", 3)), ("  Click [12] ", ("click", 12)), ('type 4 "red tent"', ("type", 4, "red tent")),
    ("type 4 'x'", ("type", 4, "x")), ("back", ("back",)), ('answer "done"', ("answer", "done")),
    ("answer: 42.5", ("answer", "42.5")), ("I think so.\nclick 2", ("click", 2)), ("`click 5`", ("click", 5)),
    ("clicking 3", None), ("", None),
])
def test_parse_action(text, expected):
    assert parse_action(text) == expected
