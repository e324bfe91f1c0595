"""Each family's error shape: ASGI middleware, outermost, that rewrites every JSON error answered
on a family's paths from the server's one shape (``lollms_server.errors.error_body``) to the
family's (its ``Family.error_shape``), whoever raised it: the key gate (401/403), a route
(400/404/429/503...), a validation error (see ``api/errors.py``), the body limit (413) or the
last-resort 500. Headers (``Retry-After``) are kept; the family may change the status (Anthropic
answers a busy server's 503 as 529). Streams are not touched: their errors are events the
family renders itself.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lollms_server.api import families


class FamilyErrorShape:
    """Rewrites JSON error bodies on the paths of families that have their own error shape."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        family = families.claiming(scope.get("path", "")) if scope["type"] == "http" else None
        shape = family.error_shape if family is not None else None
        if shape is None:
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
                    found = json.loads(b"".join(chunks) or b"null")
                except ValueError:
                    found = None
                status, body = shape(int(held["status"]), found)
                payload = json.dumps(body).encode("utf-8")
                kept = [
                    (name, value)
                    for name, value in held.get("headers", [])
                    if name.lower() != b"content-length"
                ]
                kept.append((b"content-length", str(len(payload)).encode()))
                await send({**held, "status": status, "headers": kept})
                await send({"type": "http.response.body", "body": payload})
                return
            await send(message)

        await self.app(scope, receive, reshaping_send)
