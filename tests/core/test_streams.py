"""Async-stream timing helpers: next item before a deadline, bounded streams, stopping a task."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator

import anyio
import pytest

from lollms_server.core.streams import bounded, next_before, stop_and_wait

TIMEOUT_ERRORS = (TimeoutError, asyncio.TimeoutError)  # distinct classes on Python 3.10


class Expired(Exception):
    """What the tests' on_timeout() raises."""


def now() -> float:
    return asyncio.get_running_loop().time()


async def items(*values: int, delay: float = 0.0, log: list[str] | None = None) -> AsyncGenerator[int, None]:
    """Yield ``values``, waiting ``delay`` before each; records in ``log`` when it is closed."""
    try:
        for value in values:
            if delay:
                await asyncio.sleep(delay)
            yield value
    finally:
        if log is not None:
            log.append("closed")


# ---- next_before ----------------------------------------------------------------------------
async def test_next_before_returns_the_next_item() -> None:
    source = items(1, 2)
    assert await next_before(source, now() + 5) == 1
    assert await next_before(source, now() + 5) == 2
    await source.aclose()


async def test_next_before_raises_stop_async_iteration_at_the_end() -> None:
    with pytest.raises(StopAsyncIteration):
        await next_before(items(), now() + 5)


async def test_next_before_times_out_past_the_deadline() -> None:
    log: list[str] = []
    source = items(1, delay=30, log=log)
    with pytest.raises(TIMEOUT_ERRORS):
        await next_before(source, now() + 0.05)
    assert log == ["closed"], "the wait for the item was cancelled"


async def test_next_before_with_a_deadline_already_past_times_out() -> None:
    with pytest.raises(TIMEOUT_ERRORS):
        await next_before(items(1, delay=30), now() - 1)


# ---- bounded --------------------------------------------------------------------------------
async def test_bounded_yields_every_item_then_closes_the_source() -> None:
    log: list[str] = []
    received = [item async for item in bounded(items(1, 2, 3, log=log), now() + 5, Expired)]
    assert received == [1, 2, 3]
    assert log == ["closed"]


async def test_bounded_raises_on_timeout_past_the_deadline_and_closes_the_source() -> None:
    log: list[str] = []
    received: list[int] = []
    with pytest.raises(Expired) as excinfo:
        async for item in bounded(items(1, 2, delay=0.2, log=log), now() + 0.3, lambda: Expired("late")):
            received.append(item)
    assert received == [1], "the item before the deadline arrived"
    assert str(excinfo.value) == "late"
    assert excinfo.value.__suppress_context__, "the TimeoutError is not chained"
    assert log == ["closed"]


async def test_closing_bounded_early_closes_the_source() -> None:
    log: list[str] = []
    stream = bounded(items(1, 2, 3, log=log), now() + 5, Expired)
    assert await stream.__anext__() == 1
    await stream.aclose()
    assert log == ["closed"]


async def test_an_error_of_the_source_passes_through_bounded() -> None:
    async def failing() -> AsyncGenerator[int, None]:
        yield 1
        raise ValueError("source failed")

    with pytest.raises(ValueError, match="source failed"):
        async for _ in bounded(failing(), now() + 5, Expired):
            pass


# ---- stop_and_wait --------------------------------------------------------------------------
def slow_to_stop(log: list[str], cleanup: float = 0.2) -> asyncio.Future[None]:
    """A task that needs ``cleanup`` seconds to stop once cancelled."""

    async def work() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(cleanup)
            log.append("stopped")
            raise

    return asyncio.ensure_future(work())


async def test_stop_and_wait_sets_the_event_and_waits_for_the_task() -> None:
    log: list[str] = []
    work = slow_to_stop(log)
    await asyncio.sleep(0)
    cancel = threading.Event()
    await stop_and_wait(work, cancel)
    assert cancel.is_set()
    assert work.cancelled() and log == ["stopped"], "it returns once the task has stopped"


async def test_stop_and_wait_without_an_event_cancels_the_task() -> None:
    work = asyncio.ensure_future(asyncio.sleep(30))
    await stop_and_wait(work)
    assert work.cancelled()


async def test_stop_and_wait_leaves_a_finished_task_alone() -> None:
    work = asyncio.ensure_future(asyncio.sleep(0, result="done"))
    await work
    cancel = threading.Event()
    await stop_and_wait(work, cancel)
    assert not cancel.is_set(), "nothing to stop"
    assert work.result() == "done"


async def test_stop_and_wait_completes_inside_a_cancelled_anyio_scope() -> None:
    log: list[str] = []
    work = slow_to_stop(log)
    await asyncio.sleep(0)
    with anyio.move_on_after(0.05):
        await stop_and_wait(work, threading.Event())
    assert work.done() and log == ["stopped"], "the shield lets the task stop first"


async def test_stop_and_wait_waits_for_the_task_when_the_caller_task_is_cancelled() -> None:
    log: list[str] = []
    work = slow_to_stop(log)
    await asyncio.sleep(0)
    caller = asyncio.ensure_future(stop_and_wait(work, threading.Event()))
    await asyncio.sleep(0.05)  # the caller now waits for the task to stop
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert work.done(), "the caller ended while the task it stops was still running"
    assert log == ["stopped"]


async def test_stop_and_wait_waits_for_the_task_under_wait_for() -> None:
    log: list[str] = []
    work = slow_to_stop(log)
    await asyncio.sleep(0)
    with pytest.raises(TIMEOUT_ERRORS):
        await asyncio.wait_for(stop_and_wait(work, threading.Event()), 0.05)
    assert work.done() and log == ["stopped"], "the task was still running"
