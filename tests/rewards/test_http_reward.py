"""The ``http`` reward against real HTTP servers on 127.0.0.1: success, retries with backoff,
dead ports, errors, timeouts — a failure fails that episode, and the key never leaks."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent_lightning.config import ConfigError
from agent_lightning.loop.scoring import score
from agent_lightning.plugins import get_plugin_manager
from agent_lightning.types import Task, Trajectory, Turn

KEY = "sk-test-5f1c9e2d7a"
TASK = Task(id="q1", prompt=({"role": "user", "content": "what is 2 + 2 ?"},), reference={"answer": "4"})


def _traj(tid="q1/0", answer="4"):
    turns = (Turn(action="let me think", action_token_ids=(5,), action_logprobs=(-1.0,), observation_token_ids=(6,),
                  info={"tool": "calc"}),
             Turn(action=answer, action_token_ids=(7,), action_logprobs=(-0.5,), reward=1.0, info={"success": True}))
    return Trajectory(id=tid, task=TASK, group=0, prompt_token_ids=(1, 2), turns=turns, success=True)


class Server:
    """A scoring server in a thread; ``behaviour(handler, body) -> (status, payload | None)``."""

    def __init__(self, behaviour):
        self.requests: list[tuple[dict, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((dict(self.headers), body))
                status, payload = behaviour(len(outer.requests), body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/score"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _reward(url, **options):
    defaults = {"api_key_env": "SCORER_KEY", "timeout_s": 2.0, "retries": 3, "backoff_s": 0.01}
    return get_plugin_manager().rewards.create("http", url=url, **{**defaults, **options})


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("SCORER_KEY", KEY)


def _judge(n, body):
    return 200, {"reward": 1.0 if body["final_answer"] == body["task"]["reference"]["answer"] else 0.0}


def test_posts_the_trajectory_with_the_key_header_and_reads_the_reward():
    with Server(_judge) as server:
        reward = _reward(server.url)
        assert reward(_traj(answer="4")) == 1.0
        assert reward(_traj(answer="5")) == 0.0
    headers, body = server.requests[0]
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert body == {
        "trajectory_id": "q1/0",
        "task": {"id": "q1", "prompt": [{"role": "user", "content": "what is 2 + 2 ?"}], "reference": {"answer": "4"}},
        "turns": [{"action": "let me think", "reward": 0.0, "info": {"tool": "calc"}},
                  {"action": "4", "reward": 1.0, "info": {"success": True}}],
        "final_answer": "4", "success": True, "step_rewards": [0.0, 1.0],
    }


def test_custom_header_components_and_no_reference():
    def answer(n, body):
        return 200, {"score": 0.75, "components": {"correct": 0.5, "style": 0.25}}

    with Server(answer) as server:
        reward = _reward(server.url, header="X-Api-Key", header_prefix="", field="score", include_reference=False)
        result = reward(_traj())
    headers, body = server.requests[0]
    assert headers["X-Api-Key"] == KEY and "Authorization" not in headers
    assert "reference" not in body["task"]
    assert result.total == 0.75 and dict(result.components) == {"correct": 0.5, "style": 0.25}


def test_flaky_server_is_retried_with_exponential_backoff(caplog, monkeypatch):
    waits = []  # the client's sleeps between attempts (recorded, not timed: no wall-clock asserts)
    caller, real_sleep = threading.get_ident(), time.sleep

    def recording_sleep(seconds):
        if threading.get_ident() == caller:
            waits.append(seconds)
        real_sleep(seconds)

    def flaky(n, body):
        return (503, {"error": "overloaded"}) if n <= 2 else (200, {"reward": 0.5})

    monkeypatch.setattr(time, "sleep", recording_sleep)
    with Server(flaky) as server:
        reward = _reward(server.url, backoff_s=0.05)
        with caplog.at_level(logging.WARNING):
            assert reward(_traj()) == 0.5
    assert len(server.requests) == 3
    assert waits == pytest.approx([0.05, 0.1])  # waited backoff_s, then twice that
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2 and "HTTP 503" in retries[0] and "attempt 2 of 4" in retries[0]
    assert KEY not in caplog.text


def test_a_500_fails_the_episode_not_the_run_and_hides_the_key(caplog):
    def broken(n, body):
        return 500, {"error": f"internal error while checking key {KEY}"}  # a server echoing the key back

    with Server(broken) as server:
        reward = _reward(server.url + f"?token={KEY}", retries=2)
        with caplog.at_level(logging.DEBUG):
            out = score([_traj("a"), _traj("b")], reward)
    assert len(server.requests) == 6  # 3 attempts per episode
    for traj in out:
        assert traj.failure.startswith(f"reward failed: HttpRewardError: scoring API {server.url} failed after 3 attempt(s): HTTP 500")
        assert KEY not in traj.failure and "***" in traj.failure
    assert KEY not in caplog.text


def test_a_dead_port_fails_each_episode_after_its_retries():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there any more
    reward = _reward(f"http://127.0.0.1:{port}/score", retries=1)
    with pytest.raises(Exception) as info:
        reward(_traj())
    assert type(info.value).__name__ == "HttpRewardError"
    assert "failed after 2 attempt(s)" in str(info.value) and "refused" in str(info.value).lower()
    assert KEY not in str(info.value)


def test_a_slow_server_times_out():
    release = threading.Event()

    def slow(n, body):
        release.wait(5)
        return 200, {"reward": 1.0}

    with Server(slow) as server:
        out = score([_traj()], _reward(server.url, timeout_s=0.2, retries=1))
        release.set()
    assert out[0].failure.startswith("reward failed: HttpRewardError: scoring API")
    assert out[0].failure.endswith("failed after 2 attempt(s): TimeoutError: timed out")
    assert len(server.requests) == 2


def test_client_errors_and_bad_answers_are_not_retried():
    def bad_request(n, body):
        return 400, {"error": "bad trajectory"}

    with Server(bad_request) as server:
        out = score([_traj()], _reward(server.url))
    assert len(server.requests) == 1
    assert out[0].failure.endswith("HTTP 400: {\"error\": \"bad trajectory\"}")

    for payload, message in [(b"not json", "the answer is not JSON"), ({"score": 1}, "the answer has no 'reward' field"),
                             ({"reward": "high"}, "'reward' is str, not a number")]:
        with Server(lambda n, body, p=payload: (200, p)) as server:
            out = score([_traj()], _reward(server.url))
        assert len(server.requests) == 1 and out[0].failure.endswith(message), out[0].failure


def test_batch_scores_concurrently_and_isolates_failures():
    together = threading.Barrier(4, timeout=10)  # passes only if all four requests are in flight at once

    def mixed(n, body):
        together.wait()
        if body["trajectory_id"] == "bad":
            return 422, {"error": "unscorable"}
        return 200, {"reward": float(len(body["trajectory_id"]))}

    with Server(mixed) as server:
        out = score([_traj("a"), _traj("bad"), _traj("ccc"), _traj("dddd")], _reward(server.url, concurrency=4, retries=0))
    assert [t.final_reward for t in out if t.failure is None] == [1.0, 3.0, 4.0]
    assert out[1].failure.endswith("HTTP 422: {\"error\": \"unscorable\"}")


def test_configuration_errors_never_show_the_key(monkeypatch):
    monkeypatch.delenv("SCORER_KEY")
    with pytest.raises(ValueError, match=r"^reward.api_key_env: the environment variable SCORER_KEY is not set$"):
        _reward("http://127.0.0.1:9/score")
    with pytest.raises(ValueError, match=r"^reward.url: 'ftp://host/x' is not an http\(s\) URL$"):
        _reward("ftp://user:pw@host/x", api_key_env=None)
    with pytest.raises(ConfigError, match=r"unknown key 'reward.retry'"):
        _reward("http://127.0.0.1:9/score", api_key_env=None, retry=2)
    monkeypatch.setenv("SCORER_KEY", KEY)
    assert KEY not in repr(_reward("http://127.0.0.1:9/score"))
