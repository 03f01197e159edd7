"""The web environment's site: a small outdoor-gear shop served over real HTTP.

``ShopServer`` runs a ``ThreadingHTTPServer`` on 127.0.0.1 with an ephemeral port in a
daemon thread. Pages: home (search form, categories), category listings (sortable,
paginated), search results, product pages (add-to-cart form with a quantity field) and
the cart (remove buttons). Carts live per session (cookie ``sid``). The environment
reads a session's cart through ``/_admin/state``, which needs a per-server secret header
that no page links to and no form can send.

The catalog is built deterministically (``catalog()``): 8 products in each of 6
categories, with distinct prices and weights so that every "cheapest"/"lightest"/
"highest rated" question has exactly one answer.
"""

from __future__ import annotations

import functools
import html
import json
import random
import secrets
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

# slug -> (product noun, page title)
CATEGORIES = {"backpacks": ("Backpack", "Backpacks"), "tents": ("Tent", "Tents"), "jackets": ("Jacket", "Jackets"),
              "boots": ("Boots", "Boots"), "lamps": ("Lamp", "Lamps"), "bottles": ("Bottle", "Bottles")}
COLORS = ("red", "blue", "green", "black", "orange", "grey")
_ADJECTIVES = ("Trailblazer", "Summit", "Nomad", "Ridgeline", "Cascade", "Timber", "Aurora", "Granite",
               "Drifter", "Falcon", "Canyon", "Glacier", "Meadow", "Tundra", "Voyager", "Ember")
PAGE_SIZE = 5
ADMIN_HEADER = "X-Admin-Token"


@dataclass(frozen=True)
class Product:
    id: str
    name: str
    category: str
    color: str
    price_cents: int
    rating: float
    weight_g: int
    in_stock: bool

    @property
    def price(self) -> str:
        return f"{self.price_cents / 100:.2f}"


@functools.lru_cache(maxsize=1)
def catalog() -> tuple[Product, ...]:
    rng = random.Random("agent-lightning-web-shop-v1")
    products = []
    for slug, (noun, _) in CATEGORIES.items():
        adjectives = rng.sample(_ADJECTIVES, 8)
        prices = rng.sample(range(1500, 40000, 7), 8)
        weights = rng.sample(range(150, 4000, 13), 8)
        ratings = rng.sample([round(2.0 + 0.1 * i, 1) for i in range(31)], 8)
        colors = [COLORS[i % len(COLORS)] for i in range(8)]
        rng.shuffle(colors)
        for i in range(8):
            products.append(Product(id=f"{slug[:3]}{i + 1:02d}", name=f"{adjectives[i]} {noun}", category=slug,
                                    color=colors[i], price_cents=prices[i], rating=ratings[i], weight_g=weights[i],
                                    in_stock=rng.random() > 0.15))
    return tuple(products)


def product_by_id(pid: str) -> Product | None:
    return next((p for p in catalog() if p.id == pid), None)


# ----------------------------------------------------------------------------- pages

_e = html.escape


def _page(title: str, body: str, cart_count: int) -> str:
    return (f"<html><head><title>{_e(title)}</title></head><body>"
            f"<h1>{_e(title)}</h1>{body}"
            f"<p><a href='/'>Home</a> <a href='/cart'>Cart ({cart_count} items)</a></p>"
            "<form action='/search' method='get'><input type='text' name='q' value=''>"
            "<button type='submit'>Search</button></form></body></html>")


def _listing(products: list[Product]) -> str:
    if not products:
        return "<p>No products found.</p>"
    return "<ul>" + "".join(f"<li><a href='/product/{p.id}'>{_e(p.name)}</a> - ${p.price}</li>" for p in products) + "</ul>"


def _home() -> tuple[str, str]:
    links = "".join(f"<li><a href='/category/{slug}'>{title}</a></li>" for slug, (_, title) in CATEGORIES.items())
    return "Lightning Outfitters", f"<p>Welcome! Browse a category or search.</p><ul>{links}</ul>"


def _category(slug: str, query: dict[str, list[str]]) -> tuple[str, str] | None:
    if slug not in CATEGORIES:
        return None
    sort = query.get("sort", ["name"])[0]
    keys = {"name": lambda p: p.name, "price": lambda p: p.price_cents, "rating": lambda p: -p.rating}
    items = sorted((p for p in catalog() if p.category == slug), key=keys.get(sort, keys["name"]))
    try:
        page = max(1, int(query.get("page", ["1"])[0]))
    except ValueError:
        page = 1
    pages = (len(items) + PAGE_SIZE - 1) // PAGE_SIZE
    page = min(page, pages)
    shown = items[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    sorts = " ".join(f"<a href='/category/{slug}?sort={s}'>{s}</a>" for s in ("name", "price", "rating"))
    nav = f"<p>Page {page} of {pages}."
    if page > 1:
        nav += f" <a href='/category/{slug}?sort={sort}&page={page - 1}'>Previous page</a>"
    if page < pages:
        nav += f" <a href='/category/{slug}?sort={sort}&page={page + 1}'>Next page</a>"
    return CATEGORIES[slug][1], f"<p>Sort by: {sorts} (now: {_e(sort)})</p>{_listing(shown)}{nav}</p>"


def _search(query: dict[str, list[str]]) -> tuple[str, str]:
    words = query.get("q", [""])[0].lower().split()
    hits = [p for p in catalog()
            if words and all(w in f"{p.name} {p.color} {p.category}".lower() for w in words)]
    shown = " ".join(words)
    return f"Search results for '{shown}'", _listing(hits[:10]) + (f"<p>{len(hits) - 10} more not shown; refine the search.</p>" if len(hits) > 10 else "")


def _product(pid: str) -> tuple[str, str] | None:
    p = product_by_id(pid)
    if p is None:
        return None
    stock = "In stock" if p.in_stock else "Out of stock"
    body = (f"<p>Price: ${p.price}</p><p>Color: {p.color}</p><p>Rating: {p.rating} / 5</p>"
            f"<p>Weight: {p.weight_g} g</p><p>{stock}</p>")
    if p.in_stock:
        body += (f"<form action='/cart/add' method='post'><input type='hidden' name='product' value='{p.id}'>"
                 "<input type='number' name='qty' value='1'><button type='submit'>Add to cart</button></form>")
    body += f"<p><a href='/category/{p.category}'>Back to {CATEGORIES[p.category][1]}</a></p>"
    return p.name, body


def _cart(cart: dict[str, int]) -> tuple[str, str]:
    if not cart:
        return "Your cart", "<p>Your cart is empty.</p>"
    rows, total = [], 0
    for pid, qty in cart.items():
        p = product_by_id(pid)
        total += p.price_cents * qty
        rows.append(f"<li><a href='/product/{p.id}'>{_e(p.name)}</a> x {qty} - ${p.price_cents * qty / 100:.2f}"
                    f"<form action='/cart/remove' method='post'><input type='hidden' name='product' value='{p.id}'>"
                    "<button type='submit'>Remove</button></form></li>")
    return "Your cart", f"<ul>{''.join(rows)}</ul><p>Total: ${total / 100:.2f}</p>"


# ----------------------------------------------------------------------------- server


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet server
        pass

    def _session(self) -> tuple[str, dict[str, int], bool]:
        cookies = {}
        for part in self.headers.get("Cookie", "").split(";"):
            key, _, value = part.strip().partition("=")
            cookies[key] = value
        sid = cookies.get("sid", "")
        with self.server.lock:
            if sid in self.server.carts:
                return sid, self.server.carts[sid], False
            sid = secrets.token_hex(8)
            self.server.carts[sid] = {}
            return sid, self.server.carts[sid], True

    def _send(self, status: int, body: str, sid: str, new: bool, content_type: str = "text/html",
              location: str | None = None) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if new:
            self.send_header("Set-Cookie", f"sid={sid}; Path=/; HttpOnly")
        if location:
            self.send_header("Location", location)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/_admin/state":
            if not secrets.compare_digest(self.headers.get(ADMIN_HEADER, ""), self.server.admin_token):
                self._send(403, "forbidden", "", False, "text/plain")
                return
            sid = query.get("sid", [""])[0]
            with self.server.lock:
                cart = dict(self.server.carts.get(sid, {}))
            self._send(200, json.dumps({"cart": cart}), "", False, "application/json")
            return
        sid, cart, new = self._session()
        path = url.path.rstrip("/") or "/"
        found: tuple[str, str] | None
        if path == "/":
            found = _home()
        elif path.startswith("/category/"):
            found = _category(path[len("/category/"):], query)
        elif path == "/search":
            found = _search(query)
        elif path.startswith("/product/"):
            found = _product(path[len("/product/"):])
        elif path == "/cart":
            with self.server.lock:
                found = _cart(dict(cart))
        else:
            found = None
        count = sum(cart.values())
        if found is None:
            self._send(404, _page("Not found", "<p>There is no such page.</p>", count), sid, new)
        else:
            self._send(200, _page(found[0], found[1], count), sid, new)

    def do_POST(self) -> None:  # noqa: N802
        sid, cart, new = self._session()
        length = min(int(self.headers.get("Content-Length", "0") or 0), 10_000)
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        pid = form.get("product", [""])[0]
        product = product_by_id(pid)
        path = urlsplit(self.path).path
        error = None
        with self.server.lock:
            if path == "/cart/add" and product is not None and product.in_stock:
                try:
                    qty = int(form.get("qty", ["1"])[0])
                except ValueError:
                    qty = 0
                if 1 <= qty <= 99:
                    cart[pid] = min(99, cart.get(pid, 0) + qty)
                else:
                    error = "Quantity must be a whole number from 1 to 99."
            elif path == "/cart/remove" and pid in cart:
                del cart[pid]
            else:
                error = "That request could not be processed."
        if error:
            self._send(400, _page("Error", f"<p>{_e(error)}</p>", sum(cart.values())), sid, new)
        else:
            self._send(303, "", sid, new, location="/cart")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.carts: dict[str, dict[str, int]] = {}
        self.admin_token = secrets.token_hex(16)


class ShopServer:
    """The shop on 127.0.0.1:<ephemeral port>; ``stop()`` closes the listening socket."""

    def __init__(self) -> None:
        self._server = _Server()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"web-shop-{self.port}", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def admin_token(self) -> str:
        return self._server.admin_token

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

