"""One device's ledger shared by the server processes of a host (``--workers N``, worker
processes of ``isolation = "process"`` pools): every process writes its own reservations to
``runtime_folder/device-<name>.json`` and counts the others' (those of live processes) against
the device, and loads are serialized host-wide by ``device-<name>.lock``. A process evicts
only its own idle models; memory another process holds is waited for like a busy model's.

Every file lock, read and write runs on one I/O thread of the process (never on the event
loop), in the order it was asked for: a write queued before the release of the load lock has
finished when the lock is released, even when the request that queued them was cancelled.
Synchronous readers (status, metrics) see :meth:`SharedLedger.others`, a cached view that the
async paths, every write and a periodic refresh (:class:`lollms_server.core.devices.Devices`)
keep fresh.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout

from lollms_server.utils.processes import pid_alive, process_started

__all__ = ["SharedLedger"]

logger = logging.getLogger(__name__)

LOCK_POLL_SECONDS = 0.05
WRITE_TIMEOUT_SECONDS = 5.0
WRITE_POLL_SECONDS = 0.001
MAX_ENTRIES = 4096
"""Entries read from the file at most (a corrupt or hostile file cannot grow memory)."""

T = TypeVar("T")
_io_lock = threading.Lock()
_io: tuple[int, ThreadPoolExecutor] | None = None


def _executor() -> ThreadPoolExecutor:
    """The process's one shared-ledger I/O thread (first in, first out; a new one after a fork)."""
    global _io
    with _io_lock:
        if _io is None or _io[0] != os.getpid():
            _io = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="lollms-device-share"))
        return _io[1]


def _submit(call: Callable[..., T], *args: Any) -> Future[T]:
    future = _executor().submit(call, *args)
    future.add_done_callback(_log_failure)
    return future


def _log_failure(future: Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("Shared device ledger I/O failed", exc_info=future.exception())


async def _run(call: Callable[..., T], *args: Any) -> T:
    """``call`` on the I/O thread; it runs to its end even if the awaiting task is cancelled."""
    return await asyncio.shield(asyncio.wrap_future(_submit(call, *args)))


class SharedLedger:
    """The reservations of the other processes of this host on one device."""

    def __init__(
        self,
        folder: Path,
        device: str,
        owner: str | None = None,
        alive: Callable[[int], bool] = pid_alive,
    ) -> None:
        stem = "device-" + device.replace(":", "-")
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{stem}.json"
        self.owner = owner or f"{os.getpid()}@{process_started(os.getpid())}"
        """``<pid>[@<started>][:<tag>]``: whose entries these are (the pid tells whether it lives;
        its start time, whether the process of that pid now is still the one that wrote them)."""
        self._alive = alive
        self._load_lock = FileLock(str(folder / f"{stem}.lock"), thread_local=False)
        self._write_lock = FileLock(str(folder / f"{stem}.json.lock"), timeout=WRITE_TIMEOUT_SECONDS)
        self._others: list[dict[str, Any]] = []
        self.others_read_at: float | None = None
        """``time.monotonic()`` of the file read :meth:`others` shows (None: not read yet)."""

    # ---- the host-wide load lock --------------------------------------------------------
    async def acquire_load(self) -> None:
        """Wait (without blocking the loop) until no other process of the host loads a model
        on this device."""
        while not await self.try_acquire():
            await asyncio.sleep(LOCK_POLL_SECONDS)

    async def try_acquire(self) -> bool:
        """:meth:`try_acquire_load` on the I/O thread; a cancelled caller gives back what the
        attempt took."""
        future = _submit(self.try_acquire_load)
        try:
            return await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            future.add_done_callback(self._give_back_if_taken)
            raise

    def _give_back_if_taken(self, future: Future[bool]) -> None:
        if not future.cancelled() and future.exception() is None and future.result():
            _submit(self.release_load_now)

    async def release_load(self) -> None:
        """Release the load lock on the I/O thread, after every write queued before (it is
        released even if the caller is cancelled meanwhile)."""
        await _run(self.release_load_now)

    def try_acquire_load(self) -> bool:
        """Take the host-wide load lock if no other process holds it (never waits; this
        process's own holder does not stop it: the lock counts its holders). Blocking: call
        it off the event loop (:meth:`try_acquire`)."""
        try:
            self._load_lock.acquire(blocking=False)
        except Timeout:
            return False
        return True

    def release_load_now(self) -> None:
        """Blocking: call it off the event loop (:meth:`release_load`)."""
        self._load_lock.release()

    # ---- entries ------------------------------------------------------------------------
    def _read(self) -> dict[str, list[dict[str, Any]]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {
            str(owner): [entry for entry in entries[:MAX_ENTRIES] if isinstance(entry, dict)]
            for owner, entries in list(data.items())[:MAX_ENTRIES]
            if isinstance(entries, list)
        }

    def _lives(self, owner: str) -> bool:
        pid, _, started = owner.split(":", 1)[0].partition("@")
        try:
            if not self._alive(int(pid)):
                return False
            # a dead writer's pid given to a new process: not the writer
            return not started or process_started(int(pid)) == float(started)
        except ValueError:
            return False

    def others(self) -> list[dict[str, Any]]:
        """The reservations of the other live processes, ``{owner, instance, model, mb}``, as
        last read (never reads the file: safe on the event loop)."""
        return self._others

    async def refresh(self) -> list[dict[str, Any]]:
        """Read the other processes' reservations again (on the I/O thread)."""
        return await _run(self.read_others)

    def read_others(self) -> list[dict[str, Any]]:
        """Read the file (blocking: off the event loop) and keep what :meth:`others` shows."""
        return self._keep(self._read())

    def _keep(self, data: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
        found = []
        for owner, entries in data.items():
            if owner == self.owner or not self._lives(owner):
                continue
            for entry in entries:
                try:
                    found.append(
                        {
                            "owner": owner,
                            "instance": str(entry["instance"]),
                            "model": str(entry["model"]),
                            "mb": float(entry["mb"]),
                        }
                    )
                except (KeyError, TypeError, ValueError):
                    continue
        self._others, self.others_read_at = found, time.monotonic()
        return found

    def others_mb(self) -> float:
        return sum(entry["mb"] for entry in self.others())

    def submit(self, entries: Iterable[dict[str, Any]]) -> Future[None]:
        """Queue the write of this process's reservations (as they are now) on the I/O thread;
        it is done before any later :meth:`release_load` returns. Safe on the event loop."""
        return _submit(self.publish, [dict(entry) for entry in entries])

    def publish(self, entries: Iterable[dict[str, Any]]) -> None:
        """Write this process's reservations (dropping those of dead processes). Blocking:
        call it off the event loop (:meth:`submit`)."""
        mine = [dict(entry) for entry in entries]
        try:
            # while another process writes, look again every millisecond (filelock's default
            # sleeps 50 ms, delaying the queued lock and file work behind this write)
            self._write_lock.acquire(poll_interval=WRITE_POLL_SECONDS)
            try:
                read = self._read()
                self._keep(read)  # the others as this write found them
                data = {owner: items for owner, items in read.items() if self._lives(owner)}
                if mine:
                    data[self.owner] = mine
                else:
                    data.pop(self.owner, None)
                temporary = self.path.with_suffix(f".{os.getpid()}.{time.monotonic_ns()}.tmp")
                temporary.write_text(json.dumps(data), encoding="utf-8")
                temporary.replace(self.path)
            finally:
                self._write_lock.release()
        except (OSError, Timeout):
            logger.warning("Could not write the shared device ledger %s", self.path, exc_info=True)
