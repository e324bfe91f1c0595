"""Admission control (DESIGN §6): pools, FIFO queues, timeouts, model residency.

A pool has ``limit`` slots. Loading a model and every generation (a whole stream included)
hold one slot. Waiters queue in strict FIFO order in a bounded queue; a full queue or a wait
past ``queue_timeout`` is a 503 with ``Retry-After``. A waiter that is cancelled (its client
left) leaves the queue at once. Loaded models are tracked per pool with their footprint and
last use, so idle ones can be unloaded after a while or evicted (least recently used first)
when a pool's memory budget must make room.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from lollms_server.core.config import PoolConfig, ResourceManagerConfig
from lollms_server.core.errors import BindingError, LollmsError, NotFoundError, ServiceUnavailableError
from lollms_server.core.streams import wait_through_cancellation

logger = logging.getLogger(__name__)


class ModelOwner(Protocol):
    """What residency needs of a binding: load, unload and measure its models.
    ``resident_models`` is false for a binding whose models live elsewhere (a remote API): the
    pool then tracks no residency for it (nothing here grows with the model names asked for)."""

    instance_name: str
    resident_models: bool

    async def load_model(self, model_name: str) -> None: ...

    async def unload_model(self, model_name: str) -> None: ...

    def footprint_mb(self, model_name: str) -> float: ...

    async def estimate_footprint_mb(self, model_name: str) -> float | None: ...


class Lease:
    """One held slot of a pool; ``release()`` is idempotent."""

    def __init__(self, pool: Pool, wait_seconds: float) -> None:
        self.pool = pool
        self.wait_seconds = wait_seconds
        self.acquired_at = time.monotonic()
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.pool._release(time.monotonic() - self.acquired_at)


class Pool:
    """A named set of ``limit`` slots with a bounded FIFO queue."""

    def __init__(self, name: str, config: PoolConfig) -> None:
        self.name = name
        self.config = config
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.served = 0
        self.rejected = 0
        self.timed_out = 0
        self.total_wait_seconds = 0.0
        self.max_wait_seconds = 0.0
        self._hold_average = 1.0

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def retry_after(self) -> int:
        """A rough guess of when a slot frees up, for the Retry-After header."""
        estimate = self._hold_average * (self.queued + 1) / self.config.limit
        return max(1, min(120, math.ceil(estimate)))

    async def acquire(self) -> Lease:
        if self.active < self.config.limit and not self._waiters:
            self.active += 1
            return self._granted(0.0)
        if len(self._waiters) >= self.config.queue_size:
            self.rejected += 1
            raise ServiceUnavailableError(
                f"Pool '{self.name}' is busy: the queue is full ({self.config.queue_size} waiting).",
                retry_after=self.retry_after(),
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        started = time.monotonic()
        try:
            done, _ = await asyncio.wait({future}, timeout=self.config.queue_timeout)
        except asyncio.CancelledError:
            self._abandon(future)
            raise
        if not done:
            self._abandon(future)
            if not (future.done() and not future.cancelled()):
                self.timed_out += 1
                raise ServiceUnavailableError(
                    f"Pool '{self.name}' is busy: no slot within {self.config.queue_timeout:g} s.",
                    retry_after=self.retry_after(),
                )
        return self._granted(time.monotonic() - started)

    def _granted(self, waited: float) -> Lease:
        self.served += 1
        self.total_wait_seconds += waited
        self.max_wait_seconds = max(self.max_wait_seconds, waited)
        return Lease(self, waited)

    def _abandon(self, future: asyncio.Future[None]) -> None:
        """A waiter leaves: if the slot was already handed to it, pass it on."""
        if future.done() and not future.cancelled():
            self._release(None)
            return
        future.cancel()
        try:
            self._waiters.remove(future)
        except ValueError:
            pass

    def _release(self, held_seconds: float | None) -> None:
        if held_seconds is not None:
            self._hold_average = 0.8 * self._hold_average + 0.2 * held_seconds
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)  # hand the slot over: ``active`` is unchanged
                return
        self.active -= 1


class KeyedLocks:
    """One lock per key, kept only while someone holds or waits for it (keys chosen by requests
    must not pile up)."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: tuple[str, str]) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def busy(self, key: tuple[str, str]) -> bool:
        """Whether someone holds or waits for the lock of ``key`` (a load or an unload runs)."""
        return key in self._locks

    def __len__(self) -> int:
        return len(self._locks)


@dataclass
class LoadedModel:
    instance: str
    model: str
    pool: str
    footprint_mb: float
    loaded_at: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    in_use: int = 0
    load_seconds: float = 0.0

    def public(self) -> dict[str, Any]:
        return {
            "binding": self.instance,
            "model": self.model,
            "pool": self.pool,
            "footprint_mb": round(self.footprint_mb, 3),
            "in_use": self.in_use,
            "idle_seconds": round(0.0 if self.in_use else time.monotonic() - self.last_used, 3),
            "load_seconds": round(self.load_seconds, 4),
        }


class ResourceManager:
    """The pools of this process plus the registry of their loaded models.

    ``pools`` names the pools it runs (default: every configured pool); pools hosted in a
    worker process or a Ray actor are run there, by that process's own resource manager.
    """

    def __init__(self, config: ResourceManagerConfig, pools: set[str] | None = None) -> None:
        self.config = config
        self.pools = {
            name: Pool(name, pool_config)
            for name, pool_config in config.pools.items()
            if pools is None or name in pools
        }
        self.models: dict[tuple[str, str], LoadedModel] = {}
        self._owners: dict[str, ModelOwner] = {}
        self._model_locks = KeyedLocks()
        self._housekeeper: asyncio.Task[None] | None = None

    def pool(self, name: str) -> Pool:
        pool = self.pools.get(name)
        if pool is None:
            raise NotFoundError(f"Pool '{name}' not found.")
        return pool

    async def acquire(self, pool_name: str) -> Lease:
        """Wait (FIFO) for a slot of ``pool_name`` (503 when the queue is full or too slow)."""
        return await self.pool(pool_name).acquire()

    @asynccontextmanager
    async def slot(self, pool_name: str) -> AsyncIterator[Lease]:
        lease = await self.acquire(pool_name)
        try:
            yield lease
        finally:
            lease.release()

    # ---- model residency ------------------------------------------------
    @asynccontextmanager
    async def use_model(self, binding: ModelOwner, pool_name: str, model: str) -> AsyncIterator[float]:
        """Make ``model`` resident (loading it if needed) and mark it busy; yields load seconds.

        Call it while holding a slot of ``pool_name``.
        """
        self.pool(pool_name)  # 404 for an unknown pool
        if not getattr(binding, "resident_models", True):  # a remote API: nothing to track here
            started = time.monotonic()
            await binding.load_model(model)
            yield time.monotonic() - started
            return
        key = (binding.instance_name, model)
        load_seconds = 0.0
        async with self._model_locks.hold(key):
            entry = self.models.get(key)
            if entry is None:
                load_seconds = await self._load(binding, pool_name, model)  # in use by us already
                entry = self.models[key]
            else:
                entry.in_use += 1
        try:
            yield load_seconds
        finally:
            entry.in_use -= 1
            entry.last_used = time.monotonic()

    async def _load(self, binding: ModelOwner, pool_name: str, model: str) -> float:
        pool = self.pool(pool_name)
        budget = pool.config.memory_budget_mb
        if budget is not None:
            estimate = await binding.estimate_footprint_mb(model) or 0.0
            if estimate > budget:
                raise BindingError(
                    f"Model '{model}' needs about {estimate:.0f} MB; pool '{pool_name}' has {budget:.0f} MB."
                )
            await self._make_room(pool_name, budget, estimate, exclude=(binding.instance_name, model))
        started = time.monotonic()
        # a load runs to its end even if its caller is cancelled (client gone): the slot and the
        # model lock stay held until it has, so a pool never loads the same model twice at once
        load = asyncio.ensure_future(binding.load_model(model))
        cancelled = False
        try:
            await wait_through_cancellation(load)
        except asyncio.CancelledError:
            cancelled = True
        try:
            load.result()
        except LollmsError:
            if cancelled:
                raise asyncio.CancelledError() from None
            raise
        except Exception as exc:
            logger.exception("Loading %s/%s failed", binding.instance_name, model)
            if cancelled:
                raise asyncio.CancelledError() from None
            raise BindingError(f"Loading model '{model}' failed ({type(exc).__name__}).") from exc
        elapsed = time.monotonic() - started
        self._owners[binding.instance_name] = binding
        footprint = float(binding.footprint_mb(model))
        entry = LoadedModel(
            instance=binding.instance_name,
            model=model,
            pool=pool_name,
            footprint_mb=footprint,
            load_seconds=elapsed,
            in_use=0 if cancelled else 1,  # in use by the caller: no concurrent load evicts it
        )
        self.models[(binding.instance_name, model)] = entry
        logger.info("Loaded %s/%s in %.3f s (%.1f MB)", binding.instance_name, model, elapsed, footprint)
        if cancelled:
            raise asyncio.CancelledError()
        if budget is not None:
            try:
                await self._make_room(pool_name, budget, 0.0, exclude=(binding.instance_name, model))
            except BaseException:
                entry.in_use -= 1
                raise
        return elapsed

    def with_residency(self, info: dict[str, Any], instance: str, model: str | None) -> dict[str, Any]:
        """``info`` about a model plus whether it is loaded here, and its residency entry."""
        loaded = self.models.get((instance, model or ""))
        return {**info, "loaded": loaded is not None, "residency": loaded.public() if loaded else None}

    def memory_used_mb(self, pool_name: str) -> float:
        return sum(entry.footprint_mb for entry in self.models.values() if entry.pool == pool_name)

    async def _make_room(
        self, pool_name: str, budget: float, needed: float, exclude: tuple[str, str]
    ) -> None:
        """Unload least recently used idle models of the pool until ``needed`` MB fit."""
        while self.memory_used_mb(pool_name) + needed > budget:
            idle = [
                entry
                for key, entry in self.models.items()
                # never one being loaded or unloaded: waiting on its lock could deadlock
                if entry.pool == pool_name
                and entry.in_use == 0
                and key != exclude
                and not self._model_locks.busy(key)
            ]
            if not idle:
                if needed > 0:
                    raise ServiceUnavailableError(
                        f"Pool '{pool_name}' has no memory free for another model right now.",
                        retry_after=self.pool(pool_name).retry_after(),
                    )
                return
            victim = min(idle, key=lambda entry: entry.last_used)
            logger.info(
                "Evicting %s/%s to fit the memory budget of %s", victim.instance, victim.model, pool_name
            )
            await self.unload(victim.instance, victim.model)

    async def unload(self, instance: str, model: str) -> bool:
        """Unload a model that nobody uses; returns whether it was unloaded."""
        key = (instance, model)
        async with self._model_locks.hold(key):
            entry = self.models.get(key)
            binding = self._owners.get(instance)
            if entry is None or binding is None or entry.in_use:
                return False
            self.models.pop(key, None)
            try:
                await binding.unload_model(model)
            except Exception:  # noqa: BLE001 - the entry is gone either way
                logger.exception("Unloading %s/%s failed", instance, model)
        return True

    async def unload_idle(self) -> list[tuple[str, str]]:
        """Unload models idle for longer than their pool's ``idle_unload_seconds``."""
        now = time.monotonic()
        unloaded = []
        for key, entry in list(self.models.items()):
            limit = self.pools[entry.pool].config.idle_unload_seconds
            if limit is None or entry.in_use or now - entry.last_used < limit:
                continue
            if self._model_locks.busy(key):
                continue
            if await self.unload(*key):
                logger.info("Unloaded idle model %s/%s", *key)
                unloaded.append(key)
        return unloaded

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.config.housekeeping_interval)
            try:
                await self.unload_idle()
            except Exception:  # noqa: BLE001 - keep the housekeeper alive
                logger.exception("Idle unload failed")

    def start(self) -> None:
        if self._housekeeper is None:
            self._housekeeper = asyncio.create_task(self._housekeeping(), name="lollms-housekeeping")

    async def stop(self) -> None:
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            try:
                await self._housekeeper
            except asyncio.CancelledError:
                pass
            self._housekeeper = None

    # ---- observability ----------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Queue depth, waits, slot use and loaded models of every pool."""
        pools = []
        for pool in self.pools.values():
            entry = {
                "name": pool.name,
                "isolation": pool.config.isolation,
                "limit": pool.config.limit,
                "active": pool.active,
                "queued": pool.queued,
                "queue_size": pool.config.queue_size,
                "served": pool.served,
                "rejected": pool.rejected,
                "timed_out": pool.timed_out,
                "average_wait_seconds": round(pool.total_wait_seconds / pool.served, 4)
                if pool.served
                else 0.0,
                "max_wait_seconds": round(pool.max_wait_seconds, 4),
                "memory_budget_mb": pool.config.memory_budget_mb,
                "memory_used_mb": round(self.memory_used_mb(pool.name), 3),
                "models": [entry.public() for entry in self.models.values() if entry.pool == pool.name],
            }
            pools.append(entry)
        return {"pools": pools}
