"""Ollama's error shape and its NDJSON stream response.

Ollama clients read an error as ``{"error": "message"}`` (the ``ollama`` Python client raises
``ResponseError(error, status_code)`` from it). :class:`OllamaErrorShape` is ASGI middleware,
outermost, that rewrites every JSON error answered on an Ollama path (``/api/...`` except the
native ``/api/v1``) from the server's one shape to Ollama's, whoever raised it: the key gate
(401/403), a route (400/404/429/503...), a validation error (400, see ``api/errors.py``), the
body limit (413) or the last-resort 500. Status and headers (``Retry-After``) are kept.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lollms_server.api.sse import EventStreamResponse

NATIVE_PREFIX = "/api/v1"


def is_ollama_path(path: str) -> bool:
    """``/api/chat``, ``/api/tags``... (and unknown ``/api/...`` paths), not ``/api/v1/...``."""
    if not path.startswith("/api/"):
        return False
    return not (path == NATIVE_PREFIX or path.startswith(NATIVE_PREFIX + "/"))


def ollama_error(body: Any) -> dict[str, str]:
    """``{"error": message}`` from the server's error body (or anything else)."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return {"error": error["message"]}
        if isinstance(error, str):
            return {"error": error}
        if isinstance(body.get("detail"), str):
            return {"error": body["detail"]}
    return {"error": "Request failed."}


class NDJSONStreamResponse(EventStreamResponse):
    """Newline-delimited JSON with the same disconnect watch, deadline and ``on_close`` as the
    server's event streams (a client that leaves frees the slot)."""

    media_type = "application/x-ndjson"


class OllamaErrorShape:
    """Rewrites JSON error bodies on Ollama paths to ``{"error": "message"}``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_ollama_path(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        held: Message | None = None  # the start of an error answer, until its body is whole
        chunks: list[bytes] = []

        async def reshaping_send(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                types = [
                    value for name, value in message.get("headers", []) if name.lower() == b"content-type"
                ]
                is_json = bool(types) and bytes(types[0]).startswith(b"application/json")
                if int(message["status"]) >= 400 and is_json:
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                try:
                    body = ollama_error(json.loads(b"".join(chunks) or b"null"))
                except ValueError:
                    body = {"error": "Request failed."}
                payload = json.dumps(body).encode("utf-8")
                kept = [
                    (name, value)
                    for name, value in held.get("headers", [])
                    if name.lower() not in (b"content-length",)
                ]
                kept.append((b"content-length", str(len(payload)).encode()))
                await send({**held, "headers": kept})
                await send({"type": "http.response.body", "body": payload})
                return
            await send(message)

        await self.app(scope, receive, reshaping_send)
