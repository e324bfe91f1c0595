"""Thread bridges: blocking library calls run off the event loop (Starlette's concurrency.py
role). A slot is never released while the model is still busy: every bridge waits for its
thread or task to stop before it returns or raises, however long that takes (a thread cannot
be killed; it is logged when it overstays).

Blocking calls run in executors of their own, one per kind of work, bounded, so that slow
generations (``run_cancellable``) cannot starve short calls (``run_blocking``: loads,
tokenize...) nor the server's own thread work (the default executor).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from lollms_server.core.bindings.contract import CancelToken, MediaOutput, Progress
from lollms_server.core.streams import stop_and_wait, wait_through_cancellation

logger = logging.getLogger(__name__)
T = TypeVar("T")

WorkKind = Literal["generate", "blocking"]
EXECUTOR_THREADS: dict[WorkKind, int] = {"generate": 32, "blocking": 16}
OVERSTAY_LOG_SECONDS = 60.0
_executors: dict[WorkKind, ThreadPoolExecutor] = {}
_executors_lock = threading.Lock()


def executor(kind: WorkKind) -> ThreadPoolExecutor:
    """The process's executor for ``kind`` of work (created on first use; threads are a
    process resource, like the event loop's default executor)."""
    with _executors_lock:
        if kind not in _executors:
            _executors[kind] = ThreadPoolExecutor(EXECUTOR_THREADS[kind], thread_name_prefix=f"lollms-{kind}")
        return _executors[kind]


def _in_thread(kind: WorkKind, func: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
    context = contextvars.copy_context()
    call = functools.partial(context.run, func, *args, **kwargs)
    return asyncio.get_running_loop().run_in_executor(executor(kind), call)


async def _wait_for_thread(work: asyncio.Future[T], cancel: CancelToken | None) -> None:
    """The caller was cancelled: stop the call (``cancel``) and wait until its thread ends."""
    if cancel is not None:
        cancel.set()
    try:
        while not await wait_through_cancellation(work, timeout=OVERSTAY_LOG_SECONDS):
            logger.warning("A binding call still runs %g s after its caller left", OVERSTAY_LOG_SECONDS)
    finally:
        if work.done() and not work.cancelled():
            work.exception()  # retrieved: a GenerationCancelled here is expected


async def run_blocking(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a short blocking call in a worker thread; a cancelled caller waits until it ends."""
    work = _in_thread("blocking", func, *args, **kwargs)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await _wait_for_thread(work, None)
        raise


async def run_cancellable(func: Callable[..., T], cancel: CancelToken, *args: Any, **kwargs: Any) -> T:
    """Run a blocking call that checks ``cancel`` between its steps, in a worker thread.

    If the awaiting task is cancelled (client gone, timeout), the token is set and this waits
    until the call has really stopped, so the pool slot is never freed under a busy model.
    """
    work = _in_thread("generate", func, *args, **kwargs)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await _wait_for_thread(work, cancel)
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
        stopped = asyncio.ensure_future(finished.wait())
        while not await wait_through_cancellation(stopped, timeout=OVERSTAY_LOG_SECONDS):
            logger.warning("A producer thread still runs %g s after its consumer left", OVERSTAY_LOG_SECONDS)


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
