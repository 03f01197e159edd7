"""What an agent gets to reach the policy: an OpenAI base URL, a key and a model name."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass


@dataclass(frozen=True)
class LLM:
    """The policy endpoint of one episode.

    Point any OpenAI client at it: ``OpenAI(base_url=llm.base_url, api_key=llm.api_key)``
    and ask for ``model=llm.model`` (or a role name of ``agent.roles``).

    Attributes:
        base_url: ``http://127.0.0.1:PORT/rollouts/<episode id>/v1``.
        api_key: The run's bearer token.
        model: The default model name.
        episode_id: The episode's id.
    """

    base_url: str
    api_key: str
    model: str
    episode_id: str

    def reward(self, value: float, call_id: str | None = None, *, timeout_s: float = 30.0) -> None:
        """Give a reward to one call (``call_id``: the ``id`` of a chat completion) or, without
        it, to the whole episode. Raises ``RuntimeError`` with the endpoint's message when refused."""
        body = {"reward": value} if call_id is None else {"reward": value, "call_id": call_id}
        request = urllib.request.Request(f"{self.base_url}/reward", data=json.dumps(body).encode(), method="POST",
                                         headers={"Authorization": f"Bearer {self.api_key}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]["message"]
            except Exception:  # noqa: BLE001 - any unreadable body: the status says enough
                message = f"HTTP {exc.code}"
            raise RuntimeError(f"reward refused: {message}") from None
