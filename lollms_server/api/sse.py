"""Server-Sent Events response that notices a client leaving.

Starlette's ``StreamingResponse`` only watches for disconnects on old ASGI versions; here a
watcher always runs beside the stream, so a client that leaves cancels the generation at once
(the binding stops between tokens) and ``on_close`` frees the slot. (Routes that answer
once use :func:`lollms_server.api.cancellation.cancellable` instead.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Coroutine

import anyio
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

DEADLINE_GRACE_SECONDS = 1.0  # past a stream's deadline, for its own timeout event to go out


class EventStreamResponse(Response):
    """An event stream that ends (and calls ``on_close``, which frees the slot) when the client
    leaves, when a send cannot progress for ``send_timeout`` seconds (a client that stopped
    reading: default ``server.send_timeout`` of the app's config), or at ``deadline`` (loop time,
    or a callable giving it once known: the generation timeout bounds the whole life of a slot,
    sends included)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        on_close: Callable[[], Coroutine[None, None, None]],
        headers: dict[str, str] | None = None,
        *,
        send_timeout: float | None = None,
        deadline: float | Callable[[], float | None] | None = None,
    ) -> None:
        super().__init__(content=None, headers=headers, media_type=self.media_type)
        self.events = events
        self.on_close = on_close
        self.send_timeout = send_timeout
        self.deadline = deadline
        del self.headers["content-length"]  # streamed: the length is not known
        self.headers["cache-control"] = "no-cache"
        self.headers["x-accel-buffering"] = "no"
        self._sending: tuple[float, int] | None = None  # (loop time, number) of the send under way
        self._sends = 0
        self.send_timed_out = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.send_timeout is None:
            app = scope.get("app")
            config = getattr(getattr(app, "state", None), "config", None)
            self.send_timeout = config.server.send_timeout if config is not None else None
        try:
            async with anyio.create_task_group() as group:

                async def watch_deadline() -> None:
                    """The deadline, once known (a queued stream learns it at admission)."""
                    while True:
                        deadline = self.deadline() if callable(self.deadline) else self.deadline
                        if deadline is not None:
                            group.cancel_scope.deadline = deadline + DEADLINE_GRACE_SECONDS
                            return
                        await anyio.sleep(0.5)

                if self.deadline is not None:
                    group.start_soon(watch_deadline)

                async def watch_disconnect() -> None:
                    while True:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            group.cancel_scope.cancel()
                            return

                group.start_soon(watch_disconnect)
                if self.send_timeout is not None:
                    group.start_soon(self._watch_sends, group.cancel_scope, self.send_timeout)
                try:
                    await self._stream(send)
                except OSError:  # the connection broke
                    pass
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self.events.aclose()
                finally:
                    await self.on_close()

    async def _stream(self, send: Send) -> None:
        await self._send(
            send, {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for data in self.events:
            await self._send(send, {"type": "http.response.body", "body": data, "more_body": True})
            # a send to a client that has gone returns at once, and buffered events are ready at
            # once: let the disconnect watcher (and everyone else) run between events
            await asyncio.sleep(0)
        await self._send(send, {"type": "http.response.body", "body": b"", "more_body": False})

    async def _send(self, send: Send, message: Message) -> None:
        """One send, watched by :meth:`_watch_sends` (a timeout scope per send cost as much loop
        time as the send itself)."""
        self._sends += 1
        self._sending = (asyncio.get_running_loop().time(), self._sends)
        try:
            await send(message)
        finally:
            self._sending = None

    async def _watch_sends(self, scope: anyio.CancelScope, timeout: float) -> None:
        """End the stream when one send has not progressed for ``timeout`` seconds (a client that
        stopped reading); checked every quarter of it, so it is noticed within 1.25x."""
        loop = asyncio.get_running_loop()
        while True:
            sending = self._sending
            if sending is None:
                await anyio.sleep(timeout / 4)
                continue
            remaining = sending[0] + timeout - loop.time()
            if remaining <= 0:
                self.send_timed_out = True
                scope.cancel()
                return
            await anyio.sleep(min(remaining, timeout / 4))
