"""Devices and their memory arbiter: one :class:`DeviceArbiter` per device (``cpu``,
``cuda:0``, ``cuda:1``..., ``mps``), shared by every pool and binding instance of this process
that puts models on it. Pools keep their slots and fair queues; memory is a device concern.

The arbiter keeps a **ledger** of reservations (instance, model, MB, state) and reads a
**probe** of the device's real free memory; what it may hand out is the smaller of the two
(Ollama's rule: it sees other programs and trusts neither number alone)::

    usable = min(limit - sum(ledger), probe_free - reserve - sum(reservations still loading))

where ``limit`` is ``max_memory_mb`` when configured, else the device's total minus its
reserve. A load reserves its estimate *before* it runs, one load per device at a time
(:meth:`DeviceArbiter.loading`); when the reservation does not fit, :meth:`DeviceArbiter.reserve`
evicts idle models of the device whatever their pool (past their idle time first, then least
recently used, pinned ones last; never one generating or loading), waits for the probe to show
the memory back, and else waits for busy models to finish until the deadline: then 503
``reason = "memory"``. A model larger than the device is a 422 ``model_too_large`` at once.

It sits below pools, bindings and the resource manager: it imports none of them, and learns
about models only through the :class:`Candidate` list and eviction callback the resource
manager hands it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from lollms_server.core.config import DeviceConfig
from lollms_server.core.device_share import SharedLedger
from lollms_server.core.errors import BadRequestError, ConfigError
from lollms_server.core.scheduler import PoolBusyError

__all__ = [
    "Candidate",
    "CpuProbe",
    "CudaProbe",
    "DeviceArbiter",
    "Devices",
    "FOOTPRINTS_FILE",
    "FootprintStore",
    "MemoryProbe",
    "ModelTooLargeError",
    "Reservation",
    "device_name",
    "footprint_key",
]

logger = logging.getLogger(__name__)

MB = 2**20
DEVICE_NAME = re.compile(r"^(cpu|mps|cuda:\d{1,2})$")
SECRET_SETTING = re.compile(r"token|key|secret|password", re.IGNORECASE)
State = Literal["loading", "resident", "in_use", "evicting"]
RECLAIM_SHARE = 0.75
"""Share of an evicted model's memory the probe must show back before the arbiter goes on."""
WAIT_POLL_SECONDS = 0.25
"""How often a request waiting for memory looks at the probe again (other programs free memory
without telling us)."""
SHARE_REFRESH_SECONDS = 1.0
"""How often the other server processes' reservations on a shared device are read again (for
the status and the metrics; loads and waits read them afresh)."""
FOOTPRINTS_FILE = "footprints.json"
"""Measured footprints, in the runtime folder."""
MAX_REMEMBERED = 1024
"""Footprints remembered at most (oldest forgotten first)."""


def device_name(setting: str | None) -> str:
    """The device name of a binding's ``device`` setting: ``cuda`` is ``cuda:0``; ``auto`` or
    nothing is ``cpu`` here (bindings resolve ``auto`` themselves before asking)."""
    name = (setting or "cpu").strip().lower()
    if name in ("cuda", "gpu"):
        return "cuda:0"
    if name == "auto":
        return "cpu"
    if not DEVICE_NAME.match(name):
        raise ConfigError(f"Unknown device '{setting}' (cpu, mps, cuda:0, cuda:1...).")
    return name


class ModelTooLargeError(BadRequestError):
    """The model (or a request's working memory) needs more than the device can ever give."""

    status_code = 422
    error_type = "model_too_large"


# ---- probes -------------------------------------------------------------------------------
class MemoryProbe(Protocol):
    """The device's real memory, in MB, as its driver or the OS reports it now."""

    def total_mb(self) -> float: ...

    def free_mb(self) -> float: ...


class CpuProbe:
    """RAM: psutil's ``available`` (what can be used without swapping)."""

    def total_mb(self) -> float:
        import psutil

        return float(psutil.virtual_memory().total) / MB

    def free_mb(self) -> float:
        import psutil

        return float(psutil.virtual_memory().available) / MB


class CudaProbe:
    """A CUDA GPU: the driver's free memory (``torch.cuda.mem_get_info``, which sees every
    process) plus what PyTorch holds reserved but unused in this process (it hands that back to
    our own allocations first)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def total_mb(self) -> float:
        import torch

        return float(torch.cuda.mem_get_info(self.index)[1]) / MB

    def free_mb(self) -> float:
        import torch

        free = torch.cuda.mem_get_info(self.index)[0]
        cached = torch.cuda.memory_reserved(self.index) - torch.cuda.memory_allocated(self.index)
        return float(free + max(0, cached)) / MB


class UnknownProbe:
    """A device nothing here can measure (no torch for a CUDA card): only the configured cap
    bounds it."""

    def total_mb(self) -> float:
        return float("inf")

    def free_mb(self) -> float:
        return float("inf")


def default_probe(name: str) -> MemoryProbe:
    if name.startswith("cuda:"):
        try:
            import torch

            if torch.cuda.is_available():
                return CudaProbe(int(name.split(":", 1)[1]))
        except ImportError:
            pass
        logger.warning(
            "Device %s cannot be measured here (no CUDA torch): only max_memory_mb bounds it", name
        )
        return UnknownProbe()
    return CpuProbe()  # cpu, and mps (unified memory)


# ---- the ledger ---------------------------------------------------------------------------
@dataclass
class Reservation:
    """Memory one model holds (or is about to hold) on a device."""

    instance: str
    model: str
    pool: str
    mb: float
    estimate_mb: float
    state: State = "loading"
    measured_mb: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.instance, self.model)

    def public(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "model": self.model,
            "pool": self.pool,
            "mb": round(self.mb, 3),
            "estimate_mb": round(self.estimate_mb, 3),
            "measured_mb": None if self.measured_mb is None else round(self.measured_mb, 3),
            "state": self.state,
        }


@dataclass(frozen=True)
class Candidate:
    """A resident model the resource manager could unload now (nobody uses or loads it)."""

    key: tuple[str, str]
    last_used: float
    idle_expired: bool = False
    """Unused for longer than its pool's ``idle_unload_seconds``: evicted first."""
    keep_loaded: bool = False
    """Pinned by configuration: evicted last."""


Evict = Callable[[tuple[str, str]], Awaitable[bool]]


@dataclass
class DeviceStats:
    evictions: dict[str, int] = field(default_factory=lambda: {"idle": 0, "lru": 0, "pinned": 0})
    memory_waits: int = 0
    memory_wait_seconds: float = 0.0
    rejections: dict[str, int] = field(default_factory=lambda: {"memory": 0, "too_large": 0})
    reclaim_leaks: int = 0


class DeviceArbiter:
    """The memory of one device for every pool of this process (see the module docstring)."""

    def __init__(
        self,
        name: str,
        config: DeviceConfig | None = None,
        probe: MemoryProbe | None = None,
        *,
        reclaim_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedLedger | None = None,
    ) -> None:
        self.name = name
        self.shared = shared
        """The other server processes' reservations on this device (None: this process only)."""
        self.config = config or DeviceConfig()
        self.probe = probe or default_probe(name)
        self.reclaim_timeout = (
            reclaim_timeout if reclaim_timeout is not None else (0.5 if name == "cpu" else 5.0)
        )
        self._clock = clock
        self.ledger: dict[tuple[str, str], Reservation] = {}
        self._load_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self.waiting = 0
        self.stats = DeviceStats()
        self._quotas: dict[str, float] = {}
        total = self.probe.total_mb()
        self.total_mb = total
        if self.config.reserve_mb is not None:
            self.reserve_mb = float(self.config.reserve_mb)
        elif total == float("inf"):
            self.reserve_mb = 0.0
        elif name in ("cpu", "mps"):  # RAM: the OS and other programs use it, page cache is freed
            self.reserve_mb = min(1024.0, 0.05 * total)
        else:
            self.reserve_mb = min(max(1024.0, 0.05 * total), total / 2)

    # ---- numbers ------------------------------------------------------------------------
    @property
    def limit_mb(self) -> float:
        """What this server may hold on the device at most."""
        cap = self.config.max_memory_mb
        room = self.total_mb - self.reserve_mb
        return min(float(cap), room) if cap is not None else room

    def reserved_mb(self) -> float:
        """What this process's ledger and the other processes of the host hold."""
        own = sum(item.mb for item in self.ledger.values())
        return own + (self.shared.others_mb() if self.shared is not None else 0.0)

    def _publish(self) -> None:
        """Queue the write of the ledger to the shared one (on its I/O thread, in order; done
        before the host-wide load lock is next released)."""
        if self.shared is not None:
            self.shared.submit(
                {"instance": item.instance, "model": item.model, "mb": item.mb}
                for item in self.ledger.values()
            )

    async def refresh(self) -> None:
        """Read the other processes' reservations again (off the loop; :meth:`free_mb` and
        :meth:`snapshot` show the last reading)."""
        if self.shared is not None:
            await self.shared.refresh()

    def free_mb(self, probe_free: float | None = None) -> float:
        """What a new reservation may take now: min(ledger, probe) (``probe_free``: the probe's
        reading when the caller has one)."""
        by_ledger = self.limit_mb - self.reserved_mb()
        pending = sum(item.mb for item in self.ledger.values() if item.state == "loading")
        by_probe = (self.probe.free_mb() if probe_free is None else probe_free) - self.reserve_mb - pending
        return min(by_ledger, by_probe)

    # ---- reservations -------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def loading(self) -> AsyncIterator[None]:
        """One load per device at a time (its reservation, the load and the measurement), on
        the whole host when the ledger is shared."""
        async with self._load_lock:
            if self.shared is None:
                yield
                return
            await self.shared.acquire_load()
            try:
                yield
            finally:
                await self.shared.release_load()  # after the writes queued inside

    def too_large(self, mb: float, what: str) -> None:
        """422 when ``mb`` can never fit the device, whatever is evicted."""
        if mb > self.limit_mb:
            self.stats.rejections["too_large"] += 1
            raise ModelTooLargeError(
                f"{what} needs about {mb:.0f} MB; device {self.name} can hold "
                f"{max(0.0, self.limit_mb):.0f} MB "
                f"(total {self.total_mb:.0f} MB, reserve {self.reserve_mb:.0f} MB"
                + (
                    f", max_memory_mb {self.config.max_memory_mb:.0f}"
                    if self.config.max_memory_mb is not None
                    else ""
                )
                + ").",
                param="model_name",
            )

    async def try_reserve(self, reservation: Reservation) -> bool:
        """Put ``reservation`` on the ledger at once when it fits now without evicting anything,
        without waiting for :meth:`loading`: a request waiting for memory holds that lock while
        busy models hold the memory, and the request that fits may be the one whose end frees
        it. False: it does not fit now, or a load runs on the device (its measurement must see
        only itself; here or in another process of the host); then :meth:`reserve` under
        :meth:`loading`."""
        if self._load_lock.locked() and not self.waiting:  # held by a load, not by a waiter
            return False
        if reservation.mb > self.free_mb():
            return False
        if self.shared is None:
            reservation.state = "loading"
            self.ledger[reservation.key] = reservation
            return True
        if not await self.shared.try_acquire():
            return False
        taken = False
        try:
            await self.shared.refresh()  # again, with the host's other processes held off
            if (self._load_lock.locked() and not self.waiting) or reservation.mb > self.free_mb():
                return False
            reservation.state = "loading"
            self.ledger[reservation.key] = reservation
            taken = True
            self._publish()
            return True
        finally:
            try:
                await self.shared.release_load()
            except BaseException:  # cancelled meanwhile: the caller never gets the reservation
                if taken:
                    self.release(reservation.key)
                raise

    async def reserve(
        self,
        reservation: Reservation,
        *,
        deadline: float,
        candidates: Callable[[], list[Candidate]],
        evict: Evict,
        retry_after: int = 5,
        on_wait: Callable[[float], None] | None = None,
    ) -> Reservation:
        """Put ``reservation`` on the ledger once it fits, evicting idle models of any pool and
        waiting for busy ones to finish until ``deadline`` (a ``clock`` time); 422 when it can
        never fit, 503 ``reason = "memory"`` at the deadline. Hold :meth:`loading` around it.
        ``on_wait(eta_seconds)`` hears once that the reservation waits for busy models."""
        what = f"Model '{reservation.model}'"
        self.too_large(reservation.mb, what)
        waited_since: float | None = None
        try:
            while True:
                await self.refresh()
                if reservation.mb <= self.free_mb():
                    reservation.state = "loading"
                    self.ledger[reservation.key] = reservation
                    self._publish()
                    return reservation
                if await self._evict_one(reservation.mb, candidates, evict):
                    continue
                # only busy models (or other programs) hold the memory: wait for a change
                now = self._clock()
                if waited_since is None:
                    waited_since = now
                    self.waiting += 1
                    self.stats.memory_waits += 1
                    if on_wait is not None:
                        on_wait(float(retry_after))
                if now >= deadline:
                    self.stats.rejections["memory"] += 1
                    holders = ", ".join(self._holders()) or "other programs"
                    raise PoolBusyError(
                        f"{what} needs about {reservation.mb:.0f} MB on {self.name}; "
                        f"{max(0.0, self.free_mb()):.0f} MB are free and the rest is in use ({holders}).",
                        retry_after=retry_after,
                        reason="memory",
                    )
                self._changed.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(WAIT_POLL_SECONDS, deadline - now))
        finally:
            if waited_since is not None:
                self.waiting -= 1
                self.stats.memory_wait_seconds += self._clock() - waited_since

    def _holders(self) -> list[str]:
        held = [f"{item.instance}/{item.model}" for item in self.ledger.values()]
        if self.shared is not None:
            held += [f"{e['instance']}/{e['model']} (process {e['owner']})" for e in self.shared.others()]
        return held

    async def _evict_one(
        self, needed: float, candidates: Callable[[], list[Candidate]], evict: Evict
    ) -> bool:
        """Unload one idle model of this device (the best victim); whether one went."""
        idle = [c for c in candidates() if c.key in self.ledger and self.ledger[c.key].state == "resident"]
        if not idle:
            return False
        shortfall = needed - self.free_mb()
        # past their idle time first, then least recently used; pinned ones last
        idle.sort(key=lambda c: (c.keep_loaded, not c.idle_expired, c.last_used))
        victim = idle[0]
        entry = self.ledger[victim.key]
        reason = "pinned" if victim.keep_loaded else "idle" if victim.idle_expired else "lru"
        logger.info(
            "Evicting %s/%s (%.0f MB, %s) from %s to make room for %.0f MB",
            entry.instance,
            entry.model,
            entry.mb,
            reason,
            self.name,
            shortfall,
        )
        before = self.probe.free_mb()
        entry.state = "evicting"
        if not await evict(victim.key):
            if victim.key in self.ledger:
                self.ledger[victim.key].state = "resident"
            return False
        self.stats.evictions[reason] += 1
        if self.ledger.pop(victim.key, None) is not None:
            self._publish()
        await self._await_reclaim(before, entry.mb)
        return True

    async def _await_reclaim(self, before: float, mb: float) -> None:
        """Wait until the probe shows most of an unloaded model's memory back (allocators and
        drivers give it back late), at most ``reclaim_timeout``; then trust the probe."""
        if mb <= 0 or before == float("inf"):
            return
        goal = before + RECLAIM_SHARE * mb
        stop = time.monotonic() + self.reclaim_timeout
        while self.probe.free_mb() < goal:
            if time.monotonic() >= stop:
                self.stats.reclaim_leaks += 1
                logger.warning(
                    "%s: %.0f MB unloaded but the device shows %.0f MB back after %.1f s; trusting the probe",
                    self.name,
                    mb,
                    max(0.0, self.probe.free_mb() - before),
                    self.reclaim_timeout,
                )
                return
            await asyncio.sleep(0.05)

    def settle(self, key: tuple[str, str], measured_mb: float, state: State = "in_use") -> None:
        """The load of ``key`` is done and holds ``measured_mb``: the ledger keeps that."""
        entry = self.ledger.get(key)
        if entry is not None:
            entry.mb = max(0.0, measured_mb)
            entry.measured_mb = measured_mb
            entry.state = state
            self._publish()

    def mark(self, key: tuple[str, str], state: State) -> None:
        entry = self.ledger.get(key)
        if entry is not None and entry.state != "evicting":
            entry.state = state
            if state == "resident":
                self._changed.set()

    def release(self, key: tuple[str, str]) -> None:
        """``key`` is unloaded (or its load failed): its memory is free again."""
        if self.ledger.pop(key, None) is not None:
            self._publish()
            self._changed.set()

    def note_quota(self, pool: str, budget_mb: float | None) -> None:
        """A pool with a ``memory_budget_mb`` loads on this device: warn once when the quotas of
        the pools seen here together exceed the device (the device's memory then decides)."""
        if budget_mb is None or pool in self._quotas:
            return
        self._quotas[pool] = float(budget_mb)
        total = sum(self._quotas.values())
        if total > self.limit_mb:
            logger.warning(
                "The memory_budget_mb of pools %s (%.0f MB together) exceed what device %s can hold "
                "(%.0f MB): the device's memory decides",
                ", ".join(sorted(self._quotas)),
                total,
                self.name,
                self.limit_mb,
            )

    def over_limit_mb(self) -> float:
        """How far the ledger is past the limit (after an underestimated load)."""
        return max(0.0, self.reserved_mb() - self.limit_mb)

    def snapshot(self) -> dict[str, Any]:
        try:
            probe_free = self.probe.free_mb()
        except Exception:  # noqa: BLE001 - a status page must not fail on a driver hiccup
            probe_free = float("nan")
        finite = math.isfinite(probe_free)  # not when unknown (inf) or unreadable (nan)
        return {
            "total_mb": round(self.total_mb, 1) if self.total_mb != float("inf") else None,
            "limit_mb": round(self.limit_mb, 1) if self.limit_mb != float("inf") else None,
            "reserve_mb": round(self.reserve_mb, 1),
            "reserved_mb": round(self.reserved_mb(), 3),
            "free_mb": round(self.free_mb(probe_free), 1) if finite else None,
            "probe_free_mb": round(probe_free, 1) if finite else None,
            "waiting": self.waiting,
            "models": [item.public() for item in self.ledger.values()],
            "other_processes": self.shared.others() if self.shared is not None else [],
            "evictions": dict(self.stats.evictions),
            "memory_waits": self.stats.memory_waits,
            "memory_wait_seconds": round(self.stats.memory_wait_seconds, 3),
            "rejections": dict(self.stats.rejections),
            "reclaim_leaks": self.stats.reclaim_leaks,
        }


# ---- estimates remembered -----------------------------------------------------------------
def footprint_key(binding_type: str, model: str, settings: Mapping[str, Any], device: str) -> str:
    """The key of a measured footprint: same binding type, model, settings and device."""
    kept = {k: v for k, v in settings.items() if not SECRET_SETTING.search(str(k))}  # no tokens on disk
    digest = hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()
    return f"{binding_type}|{model}|{digest[:16]}|{device}"


class FootprintStore:
    """Measured footprints by :func:`footprint_key`, kept in a JSON file of the runtime folder
    so that the next estimate after a restart is ``max(measured, formula)``."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                self._values = {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float))}
            except (OSError, ValueError, AttributeError):
                logger.warning("Ignoring unreadable footprint file %s", path)

    def get(self, key: str) -> float | None:
        return self._values.get(key)

    def remember(self, key: str, mb: float) -> None:
        """Keep ``mb`` for ``key`` (call from a worker thread: it writes the file)."""
        with self._lock:
            self._values.pop(key, None)
            self._values[key] = round(float(mb), 3)
            while len(self._values) > MAX_REMEMBERED:
                self._values.pop(next(iter(self._values)))
            if self.path is None:
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
                temporary.write_text(json.dumps(self._values, indent=1), encoding="utf-8")
                temporary.replace(self.path)
            except OSError:
                logger.warning("Could not write footprint file %s", self.path, exc_info=True)


class Devices:
    """The arbiters of this process, one per device, created on first use."""

    def __init__(
        self,
        configs: Mapping[str, DeviceConfig] | None = None,
        store: FootprintStore | None = None,
        probes: Mapping[str, MemoryProbe] | None = None,
        *,
        reclaim_timeout: float | None = None,
        shared_folder: Path | None = None,
        owner: str | None = None,
    ) -> None:
        self.configs = {device_name(name): config for name, config in (configs or {}).items()}
        self._shared_folder = shared_folder
        """Where the ledgers shared by the server processes of this host live (None: not shared)."""
        self._owner = owner
        self.store = store or FootprintStore(None)
        self._probes = dict(probes or {})
        self._reclaim_timeout = reclaim_timeout
        self.arbiters: dict[str, DeviceArbiter] = {}
        self._refresher: asyncio.Task[None] | None = None

    def get(self, name: str) -> DeviceArbiter:
        name = device_name(name)
        arbiter = self.arbiters.get(name)
        if arbiter is None:
            arbiter = DeviceArbiter(
                name,
                self.configs.get(name),
                self._probes.get(name),
                reclaim_timeout=self._reclaim_timeout,
                shared=SharedLedger(self._shared_folder, name, self._owner)
                if self._shared_folder is not None
                else None,
            )
            self.arbiters[name] = arbiter
        return arbiter

    def snapshot(self) -> dict[str, Any]:
        return {name: arbiter.snapshot() for name, arbiter in sorted(self.arbiters.items())}

    async def refresh(self) -> None:
        """Read the other processes' reservations of every shared device again (off the loop)."""
        for arbiter in list(self.arbiters.values()):
            await arbiter.refresh()

    def start(self) -> None:
        """Refresh the shared ledgers every ``SHARE_REFRESH_SECONDS``: what the status and the
        metrics show of the other processes is at most that old (plus one file read)."""
        if self._shared_folder is not None and self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_forever(), name="lollms-device-share")

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(SHARE_REFRESH_SECONDS)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - keep refreshing
                logger.exception("Reading the shared device ledgers failed")
