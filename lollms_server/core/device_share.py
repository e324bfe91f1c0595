"""One device's ledger shared by the server processes of a host (``--workers N``, worker
processes of ``isolation = "process"`` pools): every process writes its own reservations to
``runtime_folder/device-<name>.json`` and counts the others' (those of live processes) against
the device, and loads are serialized host-wide by ``device-<name>.lock``. A process evicts
only its own idle models; memory another process holds is waited for like a busy model's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from lollms_server.utils.processes import pid_alive

__all__ = ["SharedLedger"]

logger = logging.getLogger(__name__)

LOCK_POLL_SECONDS = 0.05
WRITE_TIMEOUT_SECONDS = 5.0
WRITE_POLL_SECONDS = 0.001
MAX_ENTRIES = 4096
"""Entries read from the file at most (a corrupt or hostile file cannot grow memory)."""


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
        self.owner = owner or str(os.getpid())
        """``<pid>`` or ``<pid>:<tag>``: whose entries these are (the pid tells whether it lives)."""
        self._alive = alive
        self._load_lock = FileLock(str(folder / f"{stem}.lock"), thread_local=False)
        self._write_lock = FileLock(str(folder / f"{stem}.json.lock"), timeout=WRITE_TIMEOUT_SECONDS)

    # ---- the host-wide load lock --------------------------------------------------------
    async def acquire_load(self) -> None:
        """Wait (without blocking the loop) until no other process of the host loads a model
        on this device."""
        while not self.try_acquire_load():
            await asyncio.sleep(LOCK_POLL_SECONDS)

    def try_acquire_load(self) -> bool:
        """Take the host-wide load lock if no other process holds it (never waits; this
        process's own holder does not stop it: the lock counts its holders)."""
        try:
            self._load_lock.acquire(blocking=False)
        except Timeout:
            return False
        return True

    def release_load(self) -> None:
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
        try:
            return self._alive(int(owner.split(":", 1)[0]))
        except ValueError:
            return False

    def others(self) -> list[dict[str, Any]]:
        """The reservations of the other live processes: ``{owner, instance, model, mb}``."""
        found = []
        for owner, entries in self._read().items():
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
        return found

    def others_mb(self) -> float:
        return sum(entry["mb"] for entry in self.others())

    def publish(self, entries: Iterable[dict[str, Any]]) -> None:
        """Write this process's reservations (dropping those of dead processes)."""
        mine = [dict(entry) for entry in entries]
        try:
            # it runs on the event loop: while another process writes, look again every
            # millisecond (filelock's default sleeps 50 ms, stalling every stream of the loop)
            self._write_lock.acquire(poll_interval=WRITE_POLL_SECONDS)
            try:
                data = {owner: items for owner, items in self._read().items() if self._lives(owner)}
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
