"""Server-Sent Events response that notices a client leaving.

Starlette's ``StreamingResponse`` only watches for disconnects on old ASGI versions; here a
watcher always runs beside the stream, so a client that leaves cancels the generation at once
(the binding stops between tokens) and ``on_close`` frees the slot. (Routes that answer
once use :func:`lollms_server.api.cancellation.cancellable` instead.)
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Coroutine

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        on_close: Callable[[], Coroutine[None, None, None]],
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(content=None, headers=headers, media_type=self.media_type)
        self.events = events
        self.on_close = on_close
        del self.headers["content-length"]  # streamed: the length is not known
        self.headers["cache-control"] = "no-cache"
        self.headers["x-accel-buffering"] = "no"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def watch_disconnect() -> None:
                    while True:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            group.cancel_scope.cancel()
                            return

                group.start_soon(watch_disconnect)
                try:
                    await self._stream(send)
                except OSError:  # the connection broke while sending
                    pass
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self.events.aclose()
                finally:
                    await self.on_close()

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for data in self.events:
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
