"""Async-stream timing helpers with no domain knowledge: the next item before a deadline, a
stream bounded by a deadline, stopping a task the caller no longer waits for, and abandoning
one whose result must be given back."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


async def next_before(iterator: AsyncGenerator[T, None], deadline: float) -> T:
    """The next item of ``iterator``, or ``TimeoutError`` once the loop time passes ``deadline``.

    The timeout wraps only the wait for one item (never a ``yield``), and costs one timer
    handle per item rather than a task.
    """
    if sys.version_info >= (3, 11):
        async with asyncio.timeout_at(deadline):
            return await iterator.__anext__()
    remaining = deadline - asyncio.get_running_loop().time()  # pragma: no cover - Python 3.10
    return await asyncio.wait_for(iterator.__anext__(), max(remaining, 0))  # pragma: no cover


async def bounded(
    items: AsyncGenerator[T, None], deadline: float, on_timeout: Callable[[], BaseException]
) -> AsyncGenerator[T, None]:
    """``items`` until the loop time passes ``deadline``; then ``on_timeout()`` is raised.
    Closing this generator closes ``items``."""
    try:
        while True:
            try:
                item = await next_before(items, deadline)
            except StopAsyncIteration:
                return
            except (TimeoutError, asyncio.TimeoutError):
                raise on_timeout() from None
            yield item
    finally:
        await items.aclose()


async def wait_through_cancellation(work: asyncio.Future[Any], timeout: float | None = None) -> bool:
    """Wait until ``work`` is done (at most ``timeout`` seconds), even while the waiting task
    is being cancelled (by asyncio or by an anyio scope); a cancellation that came meanwhile is
    raised once the wait is over. Returns whether ``work`` is done."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    cancelled = False
    with anyio.CancelScope(shield=True):
        while not work.done():
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                break
            try:
                await asyncio.wait({work}, timeout=remaining)
            except asyncio.CancelledError:
                cancelled = True  # keep waiting: the work must stop first
    if cancelled:
        raise asyncio.CancelledError()
    return work.done()


async def stop_and_wait(work: asyncio.Future[Any], cancel: threading.Event | None = None) -> None:
    """Stop a task the caller no longer waits for (setting ``cancel`` first, so a binding's
    thread stops between steps) and wait until it has: a slot is never released under a busy
    model. It completes even when the caller is being cancelled (then re-raises that)."""
    if work.done():
        return
    if cancel is not None:
        cancel.set()
    work.cancel()
    await wait_through_cancellation(work)


async def abandon(work: asyncio.Future[T], give_back: Callable[[T], Awaitable[Any]]) -> None:
    """Stop waiting for ``work``: cancel it while it runs, or ``give_back`` what it produced
    meanwhile (a slot or lease granted in the same turn as its caller left would otherwise be
    held by nobody)."""
    work.cancel()
    await asyncio.gather(work, return_exceptions=True)
    if not work.cancelled() and work.exception() is None:
        await give_back(work.result())
