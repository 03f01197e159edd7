"""Running the policy endpoint: uvicorn on 127.0.0.1 and a free port, in a thread.

    with PolicyServer(service) as server:
        server.base_url("episode-7")   # http://127.0.0.1:PORT/rollouts/episode-7/v1
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from agent_lightning.serving.app import MAX_BODY_BYTES, create_app
from agent_lightning.serving.service import PolicyService


class PolicyServer:
    """The endpoint's HTTP server on a background thread.

    Args:
        service: What answers the requests.
        host: Interface to bind (``127.0.0.1``: this machine only).
        port: ``0`` picks a free port.
        serving: Also answer ``/v1/chat/completions`` without an episode (``alightning serve``).
    """

    def __init__(self, service: PolicyService, *, host: str = "127.0.0.1", port: int = 0, serving: bool = False,
                 max_body_bytes: int = MAX_BODY_BYTES):
        self.service = service
        self.host = host
        self._requested_port = port
        self.serving = serving
        self.max_body_bytes = max_body_bytes
        self.port: int | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (after :meth:`start`)."""
        if self.port is None:
            raise RuntimeError("the policy endpoint is not started")
        return f"http://{self.host}:{self.port}"

    def base_url(self, episode_id: str | None = None) -> str:
        """The OpenAI ``base_url`` of an episode (or of the server, when serving)."""
        return f"{self.url}/rollouts/{episode_id}/v1" if episode_id is not None else f"{self.url}/v1"

    def start(self, timeout_s: float = 30.0) -> "PolicyServer":
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._requested_port))
        except OSError as exc:
            sock.close()
            raise OSError(f"policy endpoint: cannot listen on {self.host}:{self._requested_port} ({exc.strerror})") from None
        self.port = sock.getsockname()[1]
        app = create_app(self.service, max_body_bytes=self.max_body_bytes, serving=self.serving)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_keep_alive=30, limit_concurrency=4096, backlog=2048)
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # the trainer owns SIGTERM/SIGINT
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="policy-endpoint",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"policy endpoint on {self.host}:{self.port} failed to start")
            if time.monotonic() > deadline:
                raise TimeoutError(f"policy endpoint on {self.host}:{self.port} did not start within {timeout_s:.0f} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving (open connections are closed) and the service's sampler."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.service.close()

    def __enter__(self) -> "PolicyServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
