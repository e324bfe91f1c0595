"""The one cancellation helper of every route: a client that leaves cancels its work at once.

Uvicorn does not cancel a route when its client disconnects, so a long generation (or a wait
in a pool's queue) would run for nobody, holding its place or its slot. :func:`cancellable`
races the work against the client's ``http.disconnect``; when the client leaves first the work
is cancelled (a queued waiter leaves the queue, a binding stops between steps, the slot is
given back) and :class:`ClientDisconnected` ends the route with an empty 499 (see
``api/errors.py``). Streams use :class:`~lollms_server.api.sse.EventStreamResponse`, which does
the same while streaming; the admission before a stream goes through here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request

from lollms_server.core.bindings import CancelToken

T = TypeVar("T")
CLIENT_CLOSED_REQUEST = 499


class ClientDisconnected(Exception):
    """The client left before its answer was ready (answered 499, which nobody reads)."""


async def cancellable(request: Request, run: Callable[[CancelToken], Awaitable[T]]) -> T:
    """``await run(cancel)``; when the client disconnects first, the work is cancelled and
    ``cancel`` set (so a binding's thread stops too) and :class:`ClientDisconnected` raised."""
    cancel = CancelToken()
    work = asyncio.ensure_future(run(cancel))

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work.done():
            cancel.set()
            work.cancel()
        await asyncio.gather(work, watcher, return_exceptions=True)
        cancel.set()
    if work.cancelled():
        raise ClientDisconnected()
    return work.result()
