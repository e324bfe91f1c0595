"""Ollama's error shape and its NDJSON stream response.

Ollama clients read an error as ``{"error": "message"}`` (the ``ollama`` Python client raises
``ResponseError(error, status_code)`` from it). :func:`error_shape` is the family's
``error_shape``: ``kit.errors.FamilyErrorShape`` applies it to every JSON error answered on an
Ollama path (``/api/...`` except the native ``/api/v1``), whoever raised it. Status and headers
(``Retry-After``) are kept.
"""

from __future__ import annotations

from typing import Any

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


def error_shape(status: int, body: Any) -> tuple[int, dict[str, str]]:
    """The family's error shape: the status kept, the body as ``{"error": message}``."""
    return status, ollama_error(body)
