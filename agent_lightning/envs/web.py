"""Web browsing: reach goals on a real shop site served over HTTP on 127.0.0.1.

Each environment instance starts its own server (``web_site.ShopServer``, ephemeral
port) on first ``reset`` and stops it in ``close``. Every action that navigates becomes
a real HTTP request over a socket, with a session cookie, redirects and form posts.

Observations are a text rendering of the current page: headings, text, links and
buttons numbered ``[N]``, text fields shown as ``[N] (text field "name": "value")``.
Actions (one per turn; the first line that parses is used):

* ``click N`` — follow link N, or press button N (submits its form with the current
  field values);
* ``type N "text"`` — put text into field N (no request until a button is clicked);
* ``back`` — return to the previous page;
* ``answer "text"`` — end the episode with this answer.

Goals: add the cheapest in-stock item of a colour and category to the cart, put an exact
quantity of a product in the cart (judged from the site's cart state, read through an
admin endpoint the agent cannot reach), or answer a question about the catalogue (the
price of the best-rated item, the name of the lightest, a product's colour).

Options for small models, where every prompt token costs time (defaults change nothing):
``kinds`` keeps only goals of those kinds (``web_goals.KINDS``); ``demonstrations`` puts
that many solved training episodes (see ``web_demos``), cycling through the kinds, between
the system prompt and the task as real chat turns — the user message with the start page,
then assistant actions and the pages they led to, played on a real server once per
instance — and drops those goals from the tasks. Pages are short (160-390 characters),
so ``max_page_chars`` never truncates them. A grounded ``lightest`` answer takes 18 actions
(weights show only on product pages), more than the default ``max_turns``.
``type_submits`` makes ``type N "text"`` also submit the field's form, as pressing Enter
after typing does (WebArena's ``type`` presses Enter unless told not to): a search is one
action instead of two, and typing a quantity adds it to the cart.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, Sequence
from urllib.parse import urlencode, urljoin, urlsplit

from agent_lightning.envs.data.web_goals import KINDS, goal_split, goals
from agent_lightning.hookspecs import hookimpl
from agent_lightning.rewards.matching import extract_number, normalize_text
from agent_lightning.types import Message, Observation, StepResult, Task, check_names, check_split

SYSTEM_PROMPT = (
    "You are browsing a shop website to reach a goal. Each page is shown as text; links and buttons are "
    "numbered [N], text fields look like [N] (text field \"name\": \"value\").\n"
    "Reply with exactly one action per turn:\n"
    "click N            follow link N or press button N\n"
    "type N \"text\"      write text into field N (then click a button to submit)\n"
    "back               go to the previous page\n"
    "answer \"text\"      finish, giving your answer (\"done\" for tasks that only change the cart)")
SYSTEM_PROMPT_TYPE_SUBMITS = SYSTEM_PROMPT.replace("(then click a button to submit)", "and submit it (like pressing Enter)")
"""The system prompt when ``type_submits`` is on: typing submits its form."""

_ACTIONS = [
    ("click", re.compile(r"^click\s*\[?(\d+)\]?$", re.I)),
    ("type", re.compile(r"^type\s*\[?(\d+)\]?\s+[\"'](.*)[\"']$", re.I | re.S)),
    ("back", re.compile(r"^back$", re.I)),
    ("answer", re.compile(r"^answer\s*:?\s*(?:[\"'](.*)[\"']|(.+))$", re.I | re.S)),
]


def parse_action(action: str) -> tuple[Any, ...] | None:
    """``("click", n)``, ``("type", n, text)``, ``("back",)``, ``("answer", text)`` or ``None``."""
    for line in action.strip().splitlines()[:50]:
        line = line.strip().strip("`").strip()
        for kind, pattern in _ACTIONS:
            m = pattern.match(line)
            if m is None:
                continue
            if kind == "click":
                return ("click", int(m.group(1)[:6]))
            if kind == "type":
                return ("type", int(m.group(1)[:6]), m.group(2)[:200])
            if kind == "back":
                return ("back",)
            return ("answer", (m.group(1) if m.group(1) is not None else m.group(2)).strip()[:500])
    return None


# ----------------------------------------------------------------------------- pages


@dataclass
class Element:
    kind: str  # "link", "field" or "button"
    href: str = ""
    form: int = -1
    name: str = ""
    value: str = ""


@dataclass
class Form:
    action: str
    method: str
    hidden: list[tuple[str, str]] = field(default_factory=list)
    fields: list[int] = field(default_factory=list)


class _Renderer(HTMLParser):
    _BLOCK = {"p", "ul", "ol", "div", "br", "tr", "form", "body"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.elements: list[Element] = []
        self.forms: list[Form] = []
        self.title = ""
        self._capture: list[str] | None = None
        self._pending: Element | None = None
        self._in_title = False
        self._form: int = -1

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "title":
            self._in_title = True
        elif tag in ("h1", "h2", "h3"):
            self.parts.append("\n# ")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in self._BLOCK:
            self.parts.append("\n")
        if tag == "form":
            self.forms.append(Form(a.get("action", ""), a.get("method", "get").lower()))
            self._form = len(self.forms) - 1
        elif tag == "a" and "href" in a:
            self._pending, self._capture = Element("link", href=a["href"]), []
        elif tag == "button":
            self._pending, self._capture = Element("button", form=self._form), []
        elif tag == "input" and self._form >= 0:
            kind = a.get("type", "text").lower()
            if kind == "hidden":
                self.forms[self._form].hidden.append((a.get("name", ""), a.get("value", "")))
            elif kind in ("text", "number", "search"):
                self.elements.append(Element("field", form=self._form, name=a.get("name", ""), value=a.get("value", "")))
                self.forms[self._form].fields.append(len(self.elements) - 1)
                self.parts.append(f" \x00{len(self.elements) - 1}\x00 ")  # filled in by Page.render

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in ("a", "button") and self._pending is not None:
            self.elements.append(self._pending)
            text = " ".join("".join(self._capture or []).split())
            shown = text if tag == "a" else f"(button: {text})"
            self.parts.append(f" [{len(self.elements)}] {shown} ")
            self._pending, self._capture = None, None
        elif tag == "form":
            self._form = -1
        elif tag in ("h1", "h2", "h3", "p", "li"):
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        data = data.replace("\x00", "\ufffd")  # NUL marks field slots (_FIELD): echoed "\x0099\x00" made render raise
        if self._in_title:
            self.title += data
        elif self._capture is not None:
            self._capture.append(data)
        else:
            self.parts.append(data)


@dataclass
class Page:
    url: str
    status: int
    title: str
    elements: list[Element]
    forms: list[Form]
    lines: list[str]

    def render(self) -> str:
        """The page as text, text fields showing their current (possibly typed) values."""

        def field(m: re.Match) -> str:
            i = int(m.group(1))
            el = self.elements[i]
            return f"[{i + 1}] (text field \"{el.name}\": \"{el.value}\")"

        return f"URL: {self.url}\n" + "\n".join(_FIELD.sub(field, line) for line in self.lines)


_FIELD = re.compile("\x00(\\d+)\x00")


def parse_page(url: str, status: int, body: str) -> Page:
    renderer = _Renderer()
    renderer.feed(body)
    renderer.close()
    lines = [" ".join(line.split()) for line in "".join(renderer.parts).splitlines()]
    return Page(url, status, renderer.title.strip(), renderer.elements, renderer.forms, [ln for ln in lines if ln])


# ----------------------------------------------------------------------------- environment


class WebEnv:
    """Reach goals on a shop website served over real HTTP on 127.0.0.1 (multi-turn).

    The site module (``http.server`` and friends) is imported on first ``reset``, so that
    importing this plugin and listing tasks stay cheap.
    """

    description = "browse a real local shop website over HTTP: click, type, back, answer (multi-turn)"

    def __init__(self, max_turns: int = 12, request_timeout_s: float = 5.0, max_page_chars: int = 4000,
                 kinds: Sequence[str] | None = None, demonstrations: int = 0, type_submits: bool = False):
        if max_turns < 1:
            raise ValueError(f"environment.max_turns must be >= 1, got {max_turns}")
        if demonstrations < 0:
            raise ValueError(f"environment.demonstrations must be >= 0, got {demonstrations}")
        self.max_turns = max_turns
        self.request_timeout_s = request_timeout_s
        self.max_page_chars = max_page_chars
        self.kinds = tuple(dict.fromkeys(check_names("kinds", kinds, KINDS))) if kinds is not None else KINDS
        self.demonstrations = demonstrations
        if not isinstance(type_submits, bool):
            raise ValueError(f"environment.type_submits must be true or false, got {type_submits!r}")
        self.type_submits = type_submits
        self._demos: tuple[tuple[Message, ...], frozenset[str]] | None = None
        self._server: Any = None
        self._task: Task | None = None
        self._sid: str | None = None
        self._page: Page | None = None
        self._history: list[str] = []
        self._turn = 0

    @property
    def port(self) -> int | None:
        return self._server.port if self._server else None

    def tasks(self, split: str) -> list[Task]:
        check_split("web", split)
        turns, shown = self.demonstration_turns()
        system = SYSTEM_PROMPT_TYPE_SUBMITS if self.type_submits else SYSTEM_PROMPT
        return [_task(g, split, turns, system) for g in goals()
                if goal_split(g["id"]) == split and g["kind"] in self.kinds and g["id"] not in shown]

    def demonstration_turns(self) -> tuple[tuple[Message, ...], frozenset[str]]:
        """The worked-example chat turns and the ids of the goals they solve (built once).

        Goals come from the training split of ``self.kinds``; each is played on a fresh
        ``WebEnv`` with this one's page options and its own server, so every page in the
        examples is exactly what ``reset``/``step`` show.
        """
        if self._demos is None and self.demonstrations == 0:
            self._demos = ((), frozenset())
        elif self._demos is None:
            from agent_lightning.envs import web_demos

            train = [g for g in goals() if g["kind"] in self.kinds and goal_split(g["id"]) == "train"]
            chosen = web_demos.pick_goals(self.kinds, self.demonstrations, train, type_submits=self.type_submits)
            player = WebEnv(max_turns=100, request_timeout_s=self.request_timeout_s, max_page_chars=self.max_page_chars,
                            type_submits=self.type_submits)
            try:
                turns = [m for g in chosen for m in web_demos.play(
                    player, _task(g, "train", ()), web_demos.plan(g, type_submits=self.type_submits))]
            finally:
                player.close()
            self._demos = (tuple(turns), frozenset(g["id"] for g in chosen))
        return self._demos

    def reset(self, task: Task) -> Observation:
        if self._server is None:
            from agent_lightning.envs.web_site import ShopServer

            self._server = ShopServer()
        self._task, self._sid, self._history, self._turn = task, None, [], 0
        self._page = self._fetch("GET", "/")
        first = dict(task.prompt[-1])
        first["content"] = f"{first['content']}\n\n{self._show()}"
        return Observation(tuple(task.prompt[:-1]) + (first,))

    def step(self, action: str) -> StepResult:
        if self._task is None or self._page is None:
            raise RuntimeError("web: step() called before reset()")
        self._turn += 1
        info: dict[str, Any] = {"invalid_actions": 0, "http_requests": 0, "http_errors": 0}
        parsed = parse_action(action if isinstance(action, str) else str(action))
        note = ""
        if parsed is None:
            info["invalid_actions"] = 1
            note = 'Invalid action. Use: click N | type N "text" | back | answer "text".'
        elif parsed[0] == "answer":
            success = self._judge(parsed[1])
            info["success"] = success
            return StepResult(None, reward=1.0 if success else 0.0, done=True, info=info)
        else:
            note = self._act(parsed, info)
        if self._turn >= self.max_turns:
            success = self._judge(None)
            info["success"] = success
            return StepResult(None, reward=1.0 if success else 0.0, done=True, info=info)
        text = (note + "\n" if note else "") + self._show()
        return StepResult(Observation.user(text), reward=0.0, done=False, info=info)

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        self._task = self._page = None

    # ------------------------------------------------------------------ browsing

    def _act(self, parsed: tuple[Any, ...], info: dict[str, Any]) -> str:
        page = self._page
        if parsed[0] == "back":
            if len(self._history) < 2:
                return "There is no previous page."
            self._history.pop()
            return self._navigate("GET", self._history.pop(), None, info)
        index = parsed[1] - 1
        if not 0 <= index < len(page.elements):
            info["invalid_actions"] = 1
            return f"There is no element [{parsed[1]}] on this page (elements 1 to {len(page.elements)})."
        el = page.elements[index]
        if parsed[0] == "type":
            if el.kind != "field":
                info["invalid_actions"] = 1
                return f"[{parsed[1]}] is a {el.kind}, not a text field."
            # lone surrogates cannot be UTF-8 encoded: urlencode raised when the form was submitted
            el.value = parsed[2].encode("utf-8", "replace").decode("utf-8")
            return self._submit(el.form, info) if self.type_submits else f"Typed into [{parsed[1]}]."
        if el.kind == "link":
            return self._navigate("GET", urljoin(page.url, el.href), None, info)
        if el.kind == "field":
            info["invalid_actions"] = 1
            return f"[{parsed[1]}] is a text field; use type {parsed[1]} \"text\"."
        return self._submit(el.form, info)

    def _submit(self, form_index: int, info: dict[str, Any]) -> str:
        """Submit form ``form_index`` of the current page with its fields' current values."""
        page = self._page
        form = page.forms[form_index]
        values = list(form.hidden) + [(page.elements[i].name, page.elements[i].value) for i in form.fields]
        target = urljoin(page.url, form.action or page.url)
        if form.method == "post":
            return self._navigate("POST", target, urlencode(values), info)
        return self._navigate("GET", target.split("?")[0] + "?" + urlencode(values), None, info)

    def _navigate(self, method: str, url: str, body: str | None, info: dict[str, Any]) -> str:
        page = self._fetch(method, url, body, info)
        self._page = page
        return "" if page.status < 400 else f"The site answered with status {page.status}."

    def _fetch(self, method: str, url: str, body: str | None = None, info: dict[str, Any] | None = None) -> Page:
        for _ in range(5):  # follow redirects
            parts = urlsplit(url)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            status, headers, text = self._request(method, path, body)
            if info is not None:
                info["http_requests"] += 1
                info["http_errors"] += int(status >= 400)
            if status in (301, 302, 303, 307) and headers.get("location"):
                method, body, url = "GET", None, urljoin(path, headers["location"])
                continue
            page = parse_page(path, status, text)
            if method == "GET" and status < 400:
                self._history.append(path)
            return page
        raise RuntimeError("web: too many redirects")

    def _request(self, method: str, path: str, body: str | None,
                 extra_headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self._server.port, timeout=self.request_timeout_s)
        try:
            headers = dict(extra_headers or {})
            if self._sid:
                headers["Cookie"] = f"sid={self._sid}"
            if body is not None:
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            conn.request(method, path, body=body.encode() if body is not None else None, headers=headers)
            resp = conn.getresponse()
            data = resp.read(1 << 20).decode("utf-8", "replace")
            found = {k.lower(): v for k, v in resp.getheaders()}
            cookie = re.match(r"sid=([0-9a-f]+)", found.get("set-cookie", ""))
            if cookie:
                self._sid = cookie.group(1)
            return resp.status, found, data
        finally:
            conn.close()

    def _show(self) -> str:
        text = self._page.render()
        return text if len(text) <= self.max_page_chars else text[: self.max_page_chars] + "\n[page truncated]"

    # ------------------------------------------------------------------ judging

    def cart(self) -> dict[str, int]:
        """This episode's cart as the server holds it (read over HTTP with the admin token)."""
        if self._sid is None:
            return {}
        from agent_lightning.envs.web_site import ADMIN_HEADER

        status, _, text = self._request("GET", f"/_admin/state?sid={self._sid}", None,
                                        {ADMIN_HEADER: self._server.admin_token})
        if status != 200:
            raise RuntimeError(f"web: reading the cart failed with status {status}")
        return dict(json.loads(text)["cart"])

    def _judge(self, answer: str | None) -> bool:
        ref = self._task.reference
        if ref["check"] == "cart":
            return self.cart() == ref["cart"]
        if answer is None:
            return False
        if ref["check"] == "number":
            got = extract_number(answer)
            return got is not None and abs(got - float(ref["answer"])) < 0.005
        norm = normalize_text(answer)
        expected = normalize_text(ref["answer"])
        return norm == expected or norm == "the " + expected


def _task(goal: dict[str, Any], split: str, demonstrations: tuple[Message, ...], system: str = SYSTEM_PROMPT) -> Task:
    return Task(id=goal["id"], prompt=({"role": "system", "content": system}, *demonstrations,
                                       {"role": "user", "content": f"Goal: {goal['goal']}"}),
                reference=goal["reference"], split=split)


@hookimpl
def register_environments(register):
    register("web", WebEnv)
