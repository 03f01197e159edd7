"""HTTP for the policy endpoint: an OpenAI-compatible ASGI app (Starlette).

Routes (every one needs ``Authorization: Bearer <run's key>``):

    POST /rollouts/<episode>/v1/chat/completions   a call of that episode (``stream`` too)
    POST /rollouts/<episode>/v1/reward             {"reward": x, "call_id"?: id}
    GET  /rollouts/<episode>/v1/models, /v1/models the served model names (roles)
    POST /v1/chat/completions                      only when serving (no episode: each call alone)

Errors are OpenAI error objects with a 4xx status; a request never reaches the policy
before its body is read (at most ``max_body_bytes``), parsed and validated, and nothing one
request does can disturb another episode.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from agent_lightning.serving.service import PolicyService, RequestError, stream_chunks

log = logging.getLogger("agent_lightning.serving")

MAX_BODY_BYTES = 4 * 1024 * 1024
"""Default request body limit (4 MiB)."""


def _error(exc: RequestError) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(exc.body(), status_code=exc.status)


async def _read_json(request: Any, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError(400, "Content-Length is not a number") from None
        if size > limit:
            raise RequestError(413, f"the request body is {size} bytes; the limit is {limit}", code="body_too_large")
    data = bytearray()
    async for chunk in request.stream():
        data.extend(chunk)
        if len(data) > limit:
            raise RequestError(413, f"the request body is over the limit of {limit} bytes", code="body_too_large")
    try:
        return json.loads(bytes(data).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"the request body is not UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise RequestError(400, "the request body is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # an integer literal longer than Python converts (4300 digits)
        raise RequestError(400, f"the request body is not valid JSON: {str(exc)[:200]}") from None


def create_app(service: PolicyService, *, max_body_bytes: int = MAX_BODY_BYTES, serving: bool = False) -> Any:
    """The ASGI app over ``service``. ``serving``: also answer ``/v1/chat/completions`` without an episode."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    expected = f"Bearer {service.api_key}".encode()

    def authorised(request: Any) -> None:
        given = request.headers.get("authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, expected):
            raise RequestError(401, "missing or wrong API key: send the run's key as 'Authorization: Bearer <key>'",
                               type="authentication_error", code="invalid_api_key")

    async def guarded(request: Any, handler: Any) -> Any:
        try:
            authorised(request)
            return await handler(request)
        except RequestError as exc:
            return _error(exc)
        except Exception as exc:  # noqa: BLE001 - the policy failed: this call only, 500 with the reason
            log.exception("policy endpoint: %s %s failed", request.method, request.url.path)
            return _error(RequestError(500, f"the policy failed: {type(exc).__name__}: {str(exc)[:200]}", type="server_error"))

    async def chat(request: Any) -> Any:
        async def handle(request: Any) -> Any:
            episode = request.path_params.get("episode")
            if episode is None and not serving:
                raise RequestError(404, "this endpoint trains: send calls to the episode's base URL "
                                        "(http://HOST:PORT/rollouts/<episode id>/v1)", code="episode_required")
            body = await _read_json(request, max_body_bytes)
            stream = isinstance(body, dict) and body.get("stream") is True
            response = await service.complete(episode, body)
            if not stream:
                return JSONResponse(response)
            include_usage = bool(isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage"))

            async def events() -> Any:
                for chunk in stream_chunks(response, include_usage):
                    yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        return await guarded(request, handle)

    async def reward(request: Any) -> Any:
        async def handle(request: Any) -> Any:
            body = await _read_json(request, max_body_bytes)
            return JSONResponse(service.reward(request.path_params["episode"], body))

        return await guarded(request, handle)

    async def models(request: Any) -> Any:
        async def handle(request: Any) -> Any:
            episode = request.path_params.get("episode")
            if episode is not None:
                service.ledger(episode)  # 404 for an unknown episode
            return JSONResponse({"object": "list", "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "agent-lightning"} for name in service.models]})

        return await guarded(request, handle)

    async def not_found(request: Any, exc: Any) -> Any:
        status = getattr(exc, "status_code", 404)
        kind = "not found" if status == 404 else "not allowed" if status == 405 else "refused"
        return _error(RequestError(status, f"{request.method} {request.url.path[:200]}: {kind} "
                                           f"(routes: /rollouts/<episode>/v1/chat/completions, /v1/models)"))

    routes = [
        Route("/rollouts/{episode}/v1/chat/completions", chat, methods=["POST"]),
        Route("/rollouts/{episode}/v1/reward", reward, methods=["POST"]),
        Route("/rollouts/{episode}/v1/models", models, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
