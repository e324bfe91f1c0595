"""Thread bridges (finding #19): executors per kind of work, and a cancelled caller waits for
its thread, so a slot is never given back under a busy model."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from lollms_server.core.bindings import CancelToken
from lollms_server.core.bindings.threads import EXECUTOR_THREADS, run_blocking, run_cancellable


async def test_slow_generations_do_not_starve_short_blocking_calls() -> None:
    release = threading.Event()

    def generation(cancel: CancelToken) -> None:
        release.wait(10)

    cancel = CancelToken()
    busy = [
        asyncio.ensure_future(run_cancellable(generation, cancel, cancel))
        for _ in range(EXECUTOR_THREADS["generate"] + 8)
    ]
    await asyncio.sleep(0.1)
    try:
        started = time.monotonic()
        assert await asyncio.wait_for(run_blocking(lambda: 42), 5) == 42
        assert time.monotonic() - started < 1.0, "a short call waited behind the generations"
        # the server's own thread work (the default executor) is not starved either
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "ok"), 5) == "ok"
    finally:
        release.set()
        await asyncio.gather(*busy)


@pytest.mark.parametrize("bridge", ["blocking", "cancellable"])
async def test_a_cancelled_caller_returns_only_once_its_thread_has_ended(bridge: str) -> None:
    ended = threading.Event()

    def work(*_: object) -> None:
        time.sleep(0.3)
        ended.set()

    cancel = CancelToken()
    call = run_blocking(work) if bridge == "blocking" else run_cancellable(work, cancel)
    task = asyncio.ensure_future(call)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ended.is_set(), "the caller went on while its thread still ran"
    assert bridge == "blocking" or cancel.is_set()
