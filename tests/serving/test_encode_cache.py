"""The endpoint's cache of chat-template renderings: same ids as rendering afresh, one
rendering per distinct request part, and bounded by both entries and characters."""

from __future__ import annotations

from agent_lightning.serving import service as service_module
from agent_lightning.serving.service import PolicyService, SamplingDefaults


class CountingBackend:
    """Encodes a message list as the character codes of its rendering; counts the renderings."""

    version = 0

    def __init__(self):
        self.calls = 0

    def encode_prompt(self, messages, tools=None):
        self.calls += 1
        return [ord(c) for c in repr((messages, tools))][:50]

    def encode_observation(self, messages, *, after_stop, tools=None):
        self.calls += 1
        return [ord(c) for c in repr((messages, after_stop, tools))][:50]


def _service(backend):
    return PolicyService(backend, SamplingDefaults(max_new_tokens=4, max_context_tokens=512))


def test_each_distinct_part_is_rendered_once_and_ids_are_unchanged():
    backend = CountingBackend()
    service = _service(backend)
    try:
        hint = [{"role": "user", "content": "higher than 3"}]
        first = service._encode_continuation(hint, None, True)
        first.append(-1)  # a caller changing its list cannot change the cache
        assert service._encode_continuation(hint, None, True) == first[:-1]
        assert backend.calls == 1
        assert service._encode_continuation(hint, None, False) != first[:-1]  # after_stop is part of the key
        assert service._encode_prompt(hint, None) == backend.encode_prompt(hint, None)
        tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
        service._encode_prompt(hint, tools)
        service._encode_prompt([{"content": "higher than 3", "role": "user"}], None)  # key order is kept
        assert backend.calls == 6
    finally:
        service.close()


def test_the_cache_forgets_the_least_recently_used_past_its_character_budget(monkeypatch):
    monkeypatch.setattr(service_module, "_ENCODE_CACHE_CHARS", 400)
    backend = CountingBackend()
    service = _service(backend)
    try:
        messages = [[{"role": "user", "content": f"{i:03d}" + "x" * 60}] for i in range(10)]
        for m in messages:
            service._encode_prompt(m, None)
        assert backend.calls == 10 and service._encode_chars <= 400 and 0 < len(service._encode_cache) < 10
        service._encode_prompt(messages[-1], None)  # the newest is kept
        assert backend.calls == 10
        service._encode_prompt(messages[0], None)  # the oldest was dropped
        assert backend.calls == 11
    finally:
        service.close()
