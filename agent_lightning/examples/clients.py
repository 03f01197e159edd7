"""One ``openai`` client shared by every episode of an example agent."""

from __future__ import annotations

import threading

_client = None
_lock = threading.Lock()


def shared_openai(llm):
    """An ``OpenAI`` client pointed at this episode's ``llm.base_url``: one client (one
    connection pool) for all episodes, each episode a cheap ``with_options`` copy of it.
    Creating a client per episode works too; it only costs more CPU per episode."""
    global _client
    from openai import OpenAI

    with _lock:
        if _client is None:
            _client = OpenAI(base_url=llm.base_url, api_key=llm.api_key, max_retries=0)
    return _client.with_options(base_url=llm.base_url, api_key=llm.api_key)
