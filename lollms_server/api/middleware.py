"""Pure ASGI middleware: the key gate (401 before any body is read), request ids, request
size limit, and the last-resort 500."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lollms_server.core.errors import AuthenticationError, error_body
from lollms_server.core.metrics import Metrics
from lollms_server.core.security import KeyStore, extract_key, loopback_host_header, same_machine_origin

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("lollms_server.access")


async def send_json_error(
    send: Send,
    status: int,
    body: dict[str, Any],
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    payload = json.dumps(body).encode("utf-8")
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if request_id is not None:
        raw.append((b"x-request-id", request_id.encode()))
    raw.extend((name.lower().encode(), value.encode()) for name, value in (headers or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class KeyGateMiddleware:
    """Refuses a request without a valid key (401) before the app reads or parses its body, so
    an anonymous caller cannot make the server parse megabytes of JSON. Routes without a key:
    ``public_paths`` (``/health``; ``/metrics`` when public; the OpenAPI pages and the web UI's
    pages when on) and paths under ``public_prefixes`` (the UI's static files). Routes
    check the key's scopes again as a dependency.

    In ``allow_unauthenticated_localhost`` mode there is no key: only requests whose ``Host`` is
    this machine's loopback and whose ``Origin`` (if any) is too get through (403 otherwise), so
    a web page cannot reach the server by DNS rebinding or a cross-site request.
    """

    def __init__(
        self, app: ASGIApp, keys: KeyStore, public_paths: set[str], public_prefixes: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.keys = keys
        self.public_paths = public_paths
        self.public_prefixes = public_prefixes

    def _is_public(self, path: str) -> bool:
        if path in self.public_paths:
            return True
        return bool(self.public_prefixes) and path.startswith(self.public_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._is_public(str(scope.get("path", ""))):
            await self.app(scope, receive, send)
            return
        if self.keys.allow_anonymous:
            if not (
                loopback_host_header(_header(scope, b"host"))
                and same_machine_origin(_header(scope, b"origin"))
            ):
                body = error_body(
                    "permission_error",
                    "Without API keys this server answers only requests to localhost from this machine.",
                )
                await send_json_error(send, 403, body)
                return
        else:
            try:
                self.keys.authenticate(
                    extract_key(_header(scope, b"x-api-key"), _header(scope, b"authorization"))
                )
            except AuthenticationError as exc:
                await send_json_error(send, exc.status_code, exc.to_dict(), headers=exc.headers)
                return
        await self.app(scope, receive, send)


class RequestGuardMiddleware:
    """Gives every request an id (``X-Request-ID``), refuses bodies over ``max_bytes`` with 413
    before reading them whole, and turns any unexpected exception into a generic 500 (the
    exception is logged, never sent)."""

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        began = time.perf_counter()
        status = 500
        started = False
        too_large = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started, status
            if too_large:
                return  # the 413 has been sent; the app's answer is dropped
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await send_json_error(send, 413, self._too_large_body(), request_id)
            self._observe(scope, 413, began, request_id)
            return

        received = 0

        async def receive_wrapper() -> Message:
            nonlocal received, too_large, started, status
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    if not started:
                        started = True
                        status = 413
                        await send_json_error(send, 413, self._too_large_body(), request_id)
                    return {"type": "http.disconnect"}
            return message

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except Exception:
            logger.exception("Unhandled error in request %s", request_id)
            if not started and not too_large:
                started = True
                status = 500
                body = error_body("internal_error", "Internal server error.")
                await send_json_error(send, 500, body, request_id)
        finally:
            self._observe(scope, status, began, request_id)

    def _observe(self, scope: Scope, status: int, began: float, request_id: str) -> None:
        """One access log line (request id, key name, route, status, duration) and the metrics."""
        seconds = time.perf_counter() - began
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        state = scope.get("state", {})
        access_logger.info(
            "%s %s %s %d %.1fms key=%s",
            request_id,
            scope.get("method", ""),
            route,
            status,
            seconds * 1000,
            state.get("principal", "-"),
        )
        if self.metrics is not None:
            self.metrics.observe_request(route, str(scope.get("method", "")), status, seconds)

    def _too_large_body(self) -> dict[str, Any]:
        return error_body(
            "payload_too_large", f"The request body is larger than the limit of {self.max_bytes} bytes."
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
