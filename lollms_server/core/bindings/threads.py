"""Thread bridges: blocking library calls run off the event loop (Starlette's concurrency.py
role). A slot is never released while the model is still busy: every bridge waits for its
thread or task to stop before it returns or raises."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from lollms_server.core.bindings.contract import CancelToken, MediaOutput, Progress
from lollms_server.core.streams import stop_and_wait, wait_through_cancellation

logger = logging.getLogger(__name__)
T = TypeVar("T")


async def run_blocking(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking call in a worker thread."""
    return await asyncio.to_thread(func, *args, **kwargs)


async def run_cancellable(func: Callable[..., T], cancel: CancelToken, *args: Any, **kwargs: Any) -> T:
    """Run a blocking call that checks ``cancel`` between its steps, in a worker thread.

    If the awaiting task is cancelled (client gone, timeout), the token is set and this waits
    until the call has really stopped, so the pool slot is never freed under a busy model.
    """
    work = asyncio.ensure_future(asyncio.to_thread(func, *args, **kwargs))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        cancel.set()
        try:
            await wait_through_cancellation(work, timeout=120)
        finally:
            if work.done() and not work.cancelled():
                work.exception()  # retrieved: a GenerationCancelled here is expected
        raise


async def stream_from_thread(
    produce: Callable[[], Iterator[T]], cancel: CancelToken
) -> AsyncGenerator[T, None]:
    """Pull a blocking iterator in a dedicated thread and yield its items on the loop.

    The producer runs at full speed and appends items to a deque; it wakes the loop only
    when the consumer is actually waiting, so a fast producer costs one wake-up per batch
    rather than per item. When the consumer stops early or is cancelled, the token is set,
    the producer stops between items and this generator waits until it has: a slot is
    never released while the model is still busy.
    """
    loop = asyncio.get_running_loop()
    items: deque[tuple[str, Any]] = deque()
    ready = asyncio.Event()
    finished = asyncio.Event()
    consumer_waiting = False

    def wake(event: asyncio.Event) -> None:
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:  # loop closed: nobody is listening any more
            pass

    def put(kind: str, value: Any) -> None:
        nonlocal consumer_waiting
        items.append((kind, value))
        if consumer_waiting:
            consumer_waiting = False
            wake(ready)

    def run() -> None:
        iterator: Iterator[T] | None = None
        try:
            iterator = produce()
            for item in iterator:
                if cancel.is_set():
                    break
                put("item", item)
            put("done", None)
        except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
            put("error", exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001
                    logger.debug("closing a producer failed", exc_info=True)
            wake(finished)

    completed = False
    thread = threading.Thread(target=run, name="lollms-producer", daemon=True)
    thread.start()
    try:
        while True:
            if not items:
                ready.clear()
                consumer_waiting = True
                if not items:  # re-check: the producer may have appended meanwhile
                    await ready.wait()
                consumer_waiting = False
                continue
            kind, value = items.popleft()
            if kind == "item":
                yield value
                continue
            completed = True
            if kind == "done":
                return
            raise value
    finally:
        if not completed:  # the consumer left early: stop the producer
            cancel.set()
        # a slot is never released under a busy producer
        await wait_through_cancellation(asyncio.ensure_future(finished.wait()), timeout=30)


async def with_progress(
    run: Callable[[CancelToken, Progress], Awaitable[list[MediaOutput]]], cancel: CancelToken
) -> AsyncGenerator[tuple[int, int] | list[MediaOutput], None]:
    """Run a media call ``run(cancel, progress)``, yielding its progress as (step, total), then
    its outputs; closing the generator early sets ``cancel``, cancels the call and waits until
    it has stopped."""
    loop = asyncio.get_running_loop()
    steps: asyncio.Queue[tuple[int, int]] = asyncio.Queue()

    def progress(step: int, total: int) -> None:
        try:
            loop.call_soon_threadsafe(steps.put_nowait, (step, total))
        except RuntimeError:  # loop closed
            pass

    work = asyncio.ensure_future(run(cancel, progress))
    try:
        while not work.done():
            getter = asyncio.ensure_future(steps.get())
            await asyncio.wait({work, getter}, return_when="FIRST_COMPLETED")
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()
        yield work.result()
    finally:
        await stop_and_wait(work, cancel)
