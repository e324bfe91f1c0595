"""The ledger of a device shared by the server processes of a host (core.device_share): its file
lock, reads and writes never run on the event loop, and their order survives cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lollms_server.core import devices as devices_module
from lollms_server.core.device_share import SharedLedger
from tests.core.test_devices import GPU, FakeBinding, FakeDevice, generate, process_manager

SLOW = 0.3
"""Seconds every file lock operation and file read of the shared ledger takes here."""


class SlowLock:
    """A file lock whose acquire and release take ``SLOW`` seconds (a peer holding the file, a
    slow disk); the calls and the threads that made them are kept."""

    def __init__(self, lock: Any, calls: list[str]) -> None:
        self.lock = lock
        self.calls = calls

    def acquire(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(SLOW)
        self.calls.append(threading.current_thread().name)
        return self.lock.acquire(*args, **kwargs)

    def release(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(SLOW)
        self.calls.append(threading.current_thread().name)
        return self.lock.release(*args, **kwargs)


@pytest.fixture
def slow_io(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the shared ledger's file locks and reads slow; returns the threads that ran them."""
    calls: list[str] = []
    original_init = SharedLedger.__init__
    original_read = SharedLedger._read

    def init(self: SharedLedger, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._load_lock = SlowLock(self._load_lock, calls)  # type: ignore[assignment]
        self._write_lock = SlowLock(self._write_lock, calls)  # type: ignore[assignment]

    def read(self: SharedLedger) -> dict[str, list[dict[str, Any]]]:
        time.sleep(SLOW)
        calls.append(threading.current_thread().name)
        return original_read(self)

    monkeypatch.setattr(SharedLedger, "__init__", init)
    monkeypatch.setattr(SharedLedger, "_read", read)
    return calls


class Ticker:
    """A task that sleeps 10 ms again and again and keeps its worst lateness."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.ticks = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, loop.time() - before - 0.01)
            self.ticks += 1


@contextlib.asynccontextmanager
async def ticking() -> AsyncIterator[Ticker]:
    ticker = Ticker()
    task = asyncio.create_task(ticker.run())
    await asyncio.sleep(0.02)
    try:
        yield ticker
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_shared_ledger_io_never_blocks_the_event_loop(tmp_path: Path, slow_io: list[str]) -> None:
    device = FakeDevice(1000)
    manager = process_manager(device, tmp_path, f"{os.getpid()}:first", 5.0)
    peer = SharedLedger(tmp_path, GPU, owner=f"{os.getpid()}:second")
    text = FakeBinding("llm", device, {"a": 300})
    async with ticking() as ticker:
        await asyncio.to_thread(peer.publish, [{"instance": "img", "model": "sd", "mb": 200}])
        # a load: the host-wide load lock, reads under it, the reservation and its settlement
        assert await generate(manager, text, "text", "a") == "ok"
        arbiter = manager.devices.get(GPU)
        # working memory: what fits goes at once (try_reserve), then is released
        async with manager.working_memory(text, "text", "a", 100, "job"):
            assert {key[1] for key in arbiter.ledger} == {"a", "a#job-1"}
        # synchronous readers: the cached view of the other process
        assert arbiter.free_mb() == pytest.approx(1000 - 100 - 300 - 200)
        state = manager.snapshot()["devices"][GPU]
        assert [(e["model"], e["mb"]) for e in state["other_processes"]] == [("sd", 200.0)]
        assert ticker.worst < 0.1, f"the event loop stalled {ticker.worst:.3f} s"
        assert await manager.unload("llm", "a")
        await manager.devices.refresh()
    assert ticker.ticks > 0
    assert ticker.worst < 0.1, f"the event loop stalled {ticker.worst:.3f} s"
    assert slow_io and "MainThread" not in slow_io  # every lock and read ran off the loop
    # the writes all landed, in order: the peer sees this process hold nothing any more
    assert await asyncio.to_thread(peer.read_others) == []


async def test_a_cancelled_load_releases_the_host_lock_after_its_write(
    tmp_path: Path, slow_io: list[str]
) -> None:
    device = FakeDevice(1000)
    manager = process_manager(device, tmp_path, f"{os.getpid()}:first", 5.0)
    arbiter = manager.devices.get(GPU)
    peer = SharedLedger(tmp_path, GPU, owner=f"{os.getpid()}:second")

    async def hold() -> None:
        async with arbiter.loading():
            arbiter.ledger[("llm", "a")] = devices_module.Reservation("llm", "a", "text", 300, 300)
            arbiter._publish()
            await asyncio.sleep(10)

    task = asyncio.create_task(hold())
    while not arbiter.ledger:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the release ran after the queued write: a peer that gets the lock sees the reservation
    assert await asyncio.to_thread(peer.try_acquire_load)
    assert [e["model"] for e in await asyncio.to_thread(peer.read_others)] == ["a"]
    await asyncio.to_thread(peer.release_load_now)

    # cancelled while its attempt to take the lock is still running: what it takes is given back
    attempt = asyncio.create_task(arbiter.shared.try_acquire())  # type: ignore[union-attr]
    await asyncio.sleep(SLOW / 3)
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt
    # the attempt and the release it queued run to their end: then a peer gets the lock
    stop = time.monotonic() + 10 * SLOW
    while not await asyncio.to_thread(peer.try_acquire_load):
        assert time.monotonic() < stop, "the cancelled attempt kept the host-wide load lock"
    await asyncio.to_thread(peer.release_load_now)


async def test_the_status_view_of_other_processes_is_refreshed_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devices_module, "SHARE_REFRESH_SECONDS", 0.05)
    device = FakeDevice(1000)
    manager = process_manager(device, tmp_path, f"{os.getpid()}:first", 5.0)
    arbiter = manager.devices.get(GPU)
    peer = SharedLedger(tmp_path, GPU, owner=f"{os.getpid()}:second")
    manager.start()
    try:
        await asyncio.to_thread(peer.publish, [{"instance": "img", "model": "sd", "mb": 200}])
        for _ in range(100):
            if arbiter.snapshot()["other_processes"]:
                break
            await asyncio.sleep(0.02)
        assert [e["model"] for e in arbiter.snapshot()["other_processes"]] == ["sd"]
        assert arbiter.reserved_mb() == 200
    finally:
        await manager.stop()
    assert manager.devices._refresher is None
