"""Admission control (DESIGN §6): the pools of this process (scheduling in
:mod:`lollms_server.core.scheduler`) and model residency: loaded models are tracked per pool
with their footprint and last use, so idle ones can be unloaded after a while or evicted (least
recently used first) when a pool's memory budget must make room. A slot is never released under
a busy model: a load runs to its end, and eviction never waits on a model being loaded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from lollms_server.core.config import ResourceManagerConfig
from lollms_server.core.errors import BindingError, LollmsError, NotFoundError, ServiceUnavailableError
from lollms_server.core.scheduler import (
    IDLE_WINDOW_SECONDS,
    MAX_IDLE_KEYS,
    Clock,
    Lease,
    Pool,
    PoolBusyError,
    PositionListener,
    Ticket,
)
from lollms_server.core.streams import wait_through_cancellation

__all__ = [
    "IDLE_WINDOW_SECONDS",
    "MAX_IDLE_KEYS",
    "Clock",
    "KeyedLocks",
    "Lease",
    "LoadedModel",
    "ModelOwner",
    "Pool",
    "PoolBusyError",
    "PositionListener",
    "ResourceManager",
    "Ticket",
]

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

    def __init__(
        self,
        config: ResourceManagerConfig,
        pools: set[str] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.config = config
        self.pools = {
            name: Pool(name, pool_config, clock)
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

    async def acquire(
        self,
        pool_name: str,
        ticket: Ticket = Ticket(),
        on_position: PositionListener | None = None,
    ) -> Lease:
        """Wait for a slot of ``pool_name``, ordered among the waiters by the pool's policy
        (503 when the queue is full or too slow); ``on_position(position, eta_seconds)`` hears
        the waiter's place in the queue whenever it changes."""
        return await self.pool(pool_name).acquire(ticket, on_position)

    @asynccontextmanager
    async def slot(self, pool_name: str, ticket: Ticket = Ticket()) -> AsyncIterator[Lease]:
        lease = await self.acquire(pool_name, ticket)
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
    def _public(self, entry: LoadedModel) -> dict[str, Any]:
        """A loaded model as the snapshot shows it, with its engine's counters when it has some."""
        public = entry.public()
        counters = getattr(self._owners.get(entry.instance), "engine_counters", None)
        if counters is not None:
            try:
                engine = counters(entry.model)
            except Exception:  # noqa: BLE001 - a scrape never fails for a binding's counters
                logger.exception("Engine counters of %s/%s failed", entry.instance, entry.model)
                engine = {}
            if engine:
                public["engine"] = engine
        return public

    def snapshot(self) -> dict[str, Any]:
        """Queue depth, waits, slot use and loaded models of every pool, with its waiting requests
        in serve order and the use of each key seen lately."""
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
                "models": [self._public(entry) for entry in self.models.values() if entry.pool == pool.name],
                "policy": pool.config.policy,
                "waiting": pool.waiting(),
                "keys": pool.usage(),
            }
            pools.append(entry)
        return {"pools": pools}
