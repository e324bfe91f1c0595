"""Admission control (DESIGN §6): the pools of this process (scheduling in
:mod:`lollms_server.core.scheduler`) and model residency: loaded models are tracked with their
device, footprint and last use, so idle ones can be unloaded after a while or evicted (least
recently used first). Memory is a device concern (:mod:`lollms_server.core.devices`): a load
reserves its estimate on its device's arbiter before it runs, one load per device at a time,
evicting idle models of that device whatever their pool; a pool's ``memory_budget_mb`` is an
optional quota inside it. A slot is never released under a busy model: a load runs to its end,
and eviction never waits on a model being loaded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from lollms_server.core.config import ResourceManagerConfig
from lollms_server.core.devices import Candidate, DeviceArbiter, Devices, Reservation, footprint_key
from lollms_server.core.devices import ModelTooLargeError as ModelTooLargeError
from lollms_server.core.errors import BindingError, LollmsError, NotFoundError
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

MEMORY_POLL_SECONDS = 0.05
"""How often a load waiting for its pool's quota looks again."""


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

    def memory_device(self, model_name: str) -> str: ...


def is_out_of_memory(exc: BaseException) -> bool:
    """A device allocation failed (``torch.OutOfMemoryError``, ``torch.cuda.OutOfMemoryError``
    and the like, told by name: torch is not imported here)."""
    return any("OutOfMemory" in cls.__name__ for cls in type(exc).__mro__)


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
    device: str = "cpu"
    estimate_mb: float = 0.0

    def public(self) -> dict[str, Any]:
        return {
            "binding": self.instance,
            "model": self.model,
            "pool": self.pool,
            "device": self.device,
            "footprint_mb": round(self.footprint_mb, 3),
            "estimate_mb": round(self.estimate_mb, 3),
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
        devices: Devices | None = None,
    ) -> None:
        self.config = config
        self.devices = devices or Devices()
        """One memory arbiter per device, shared by every pool here."""
        self.pools = {
            name: Pool(name, pool_config, clock)
            for name, pool_config in config.pools.items()
            if pools is None or name in pools
        }
        self.models: dict[tuple[str, str], LoadedModel] = {}
        self._owners: dict[str, ModelOwner] = {}
        self._model_locks = KeyedLocks()
        self._jobs = 0
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
    async def use_model(
        self,
        binding: ModelOwner,
        pool_name: str,
        model: str,
        on_wait: Callable[[float], None] | None = None,
    ) -> AsyncIterator[float]:
        """Make ``model`` resident (loading it if needed) and mark it busy; yields load seconds.
        ``on_wait(eta_seconds)`` hears when the load waits for memory that busy models hold.

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
                load_seconds = await self._load(binding, pool_name, model, on_wait)  # in use by us already
                entry = self.models[key]
            else:
                entry.in_use += 1
                self.devices.get(entry.device).mark(key, "in_use")
        try:
            yield load_seconds
        finally:
            entry.in_use -= 1
            entry.last_used = time.monotonic()
            if entry.in_use == 0:  # evictable again: a request waiting for memory may go on
                self.devices.get(entry.device).mark(key, "resident")

    @staticmethod
    def device_of(binding: ModelOwner, model: str) -> str:
        """The device ``model`` of ``binding`` puts its memory on (``cpu`` if it does not say)."""
        resolve = getattr(binding, "memory_device", None)
        return str(resolve(model)) if callable(resolve) else "cpu"

    async def estimate_mb(self, binding: ModelOwner, model: str, device: str) -> float:
        """The binding's estimate, or what this model measured last time with these settings on
        this device when that was more (``max(measured, formula)``)."""
        formula = await binding.estimate_footprint_mb(model) or 0.0
        remembered = self.devices.store.get(self._footprint_key(binding, model, device)) or 0.0
        return max(float(formula), remembered)

    @staticmethod
    def _footprint_key(binding: ModelOwner, model: str, device: str) -> str:
        card = getattr(binding, "card", None)
        kind = getattr(card, "type_name", None) or type(binding).__name__
        return footprint_key(kind, model, getattr(binding, "settings", None) or {}, device)

    def _candidates(self, device: str, exclude: tuple[str, str]) -> list[Candidate]:
        """Models of ``device`` (any pool) nobody uses, loads or unloads now."""
        now = time.monotonic()
        found = []
        for key, entry in self.models.items():
            if entry.device != device or entry.in_use or key == exclude or self._model_locks.busy(key):
                continue
            pool = self.pools.get(entry.pool)
            limit = pool.config.idle_unload_seconds if pool is not None else None
            expired = limit is not None and now - entry.last_used >= limit
            found.append(Candidate(key, entry.last_used, idle_expired=expired))
        return found

    @asynccontextmanager
    async def working_memory(
        self, binding: ModelOwner, pool_name: str, model: str, mb: float, shape: str
    ) -> AsyncIterator[float]:
        """Reserve ``mb`` MB of working memory for one generation of the resident ``model`` (or
        what such a ``shape`` of request needed last time, when more) on its device, for the
        block; idle models of the device make room, busy ones are waited for until the pool's
        queue deadline (503 ``reason = "memory"``); 422 when it can never fit. A device
        out-of-memory error inside the block doubles what that shape reserves next time."""
        device = self.device_of(binding, model)
        arbiter = self.devices.get(device)
        shape_key = self._footprint_key(binding, f"{model} [{shape}]", device)
        need = max(float(mb), self.devices.store.get(shape_key) or 0.0)
        if need <= 0:
            yield 0.0
            return
        pool = self.pool(pool_name)
        self._jobs += 1
        key = (binding.instance_name, f"{model}#job-{self._jobs}")
        reservation = Reservation(binding.instance_name, key[1], pool_name, need, need)
        if not await arbiter.try_reserve(reservation):  # what fits goes at once, past a waiting request
            async with arbiter.loading():
                await arbiter.reserve(
                    reservation,
                    deadline=time.monotonic() + pool.config.queue_timeout,
                    candidates=lambda: self._candidates(arbiter.name, exclude=(binding.instance_name, model)),
                    evict=self._evict,
                    retry_after=pool.retry_after(),
                )
        arbiter.mark(key, "in_use")
        try:
            yield need
        except Exception as exc:
            if is_out_of_memory(exc):
                raised = 2 * need
                logger.warning(
                    "%s/%s [%s] ran out of memory with %.0f MB; next time %.0f MB", *key, shape, need, raised
                )
                await asyncio.to_thread(self.devices.store.remember, shape_key, raised)
            raise
        finally:
            arbiter.release(key)

    async def _evict(self, key: tuple[str, str]) -> bool:
        return await self.unload(*key)

    async def _load(
        self, binding: ModelOwner, pool_name: str, model: str, on_wait: Callable[[float], None] | None = None
    ) -> float:
        device = self.device_of(binding, model)
        arbiter = self.devices.get(device)
        async with arbiter.loading():  # one load per device at a time
            return await self._load_on(binding, pool_name, model, arbiter, on_wait)

    async def _load_on(
        self,
        binding: ModelOwner,
        pool_name: str,
        model: str,
        arbiter: DeviceArbiter,
        on_wait: Callable[[float], None] | None = None,
    ) -> float:
        pool = self.pool(pool_name)
        key = (binding.instance_name, model)
        budget = pool.config.memory_budget_mb
        deadline = time.monotonic() + pool.config.queue_timeout  # a wait for memory ends there
        estimate = await self.estimate_mb(binding, model, arbiter.name)
        fit = getattr(binding, "fit_to_memory", None)
        if callable(fit):  # partial offload: what fits once the idle models of the device are gone
            evictable = sum(
                arbiter.ledger[c.key].mb
                for c in self._candidates(arbiter.name, key)
                if c.key in arbiter.ledger
            )
            await arbiter.refresh()  # the other processes' reservations, read off the loop
            available = max(0.0, min(arbiter.free_mb() + evictable, arbiter.limit_mb))
            fitted = await fit(model, available) if estimate > available else await fit(model, None)
            if fitted is not None:
                logger.info(
                    "%s/%s: %.0f MB do not fit %s (%.0f MB available): loading %.0f MB there",
                    *key,
                    estimate,
                    arbiter.name,
                    available,
                    fitted,
                )
                estimate = float(fitted)
        arbiter.note_quota(pool_name, budget)
        if budget is not None:  # the pool's quota inside its device
            if estimate > budget:
                raise ModelTooLargeError(
                    f"Model '{model}' needs about {estimate:.0f} MB; pool '{pool_name}' has a "
                    f"memory budget of {budget:.0f} MB.",
                    param="model_name",
                )
            await self._make_room(pool_name, budget, estimate, exclude=key, deadline=deadline)
        await arbiter.reserve(
            Reservation(binding.instance_name, model, pool_name, estimate, estimate),
            deadline=deadline,
            candidates=lambda: self._candidates(arbiter.name, exclude=key),
            evict=self._evict,
            retry_after=pool.retry_after(),
            on_wait=on_wait,
        )
        try:
            return await self._load_reserved(binding, pool_name, model, arbiter, estimate)
        except BaseException:
            if key not in self.models:
                arbiter.release(key)
            raise

    async def _load_reserved(
        self, binding: ModelOwner, pool_name: str, model: str, arbiter: DeviceArbiter, estimate: float
    ) -> float:
        pool = self.pool(pool_name)
        budget = pool.config.memory_budget_mb
        probe_before = arbiter.probe.free_mb()
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
        except Exception as exc:
            if cancelled:
                raise asyncio.CancelledError() from None
            if is_out_of_memory(exc):  # the estimate was short: remember more, and say "memory"
                raised = max(2 * estimate, 1.0)
                logger.warning(
                    "Loading %s/%s ran out of memory on %s (estimated %.0f MB; next time %.0f MB)",
                    binding.instance_name,
                    model,
                    arbiter.name,
                    estimate,
                    raised,
                )
                arbiter.stats.rejections["memory"] += 1
                remembered = self._footprint_key(binding, model, arbiter.name)
                await asyncio.to_thread(self.devices.store.remember, remembered, raised)  # a file write
                raise PoolBusyError(
                    f"Model '{model}' did not fit on {arbiter.name} (out of memory while loading).",
                    retry_after=pool.retry_after(),
                    reason="memory",
                ) from None
            if isinstance(exc, LollmsError):
                raise
            logger.exception("Loading %s/%s failed", binding.instance_name, model)
            raise BindingError(f"Loading model '{model}' failed ({type(exc).__name__}).") from exc
        elapsed = time.monotonic() - started
        self._owners[binding.instance_name] = binding
        footprint = float(binding.footprint_mb(model))
        if arbiter.name != "cpu":  # loads are serialized per device: the drop is this model's
            footprint = max(footprint, probe_before - arbiter.probe.free_mb())
        key = (binding.instance_name, model)
        entry = LoadedModel(
            instance=binding.instance_name,
            model=model,
            pool=pool_name,
            footprint_mb=footprint,
            load_seconds=elapsed,
            in_use=0 if cancelled else 1,  # in use by the caller: no concurrent load evicts it
            device=arbiter.name,
            estimate_mb=estimate,
        )
        self.models[key] = entry
        arbiter.settle(key, footprint, "resident" if cancelled else "in_use")
        logger.info(
            "Loaded %s/%s on %s in %.3f s (%.1f MB, estimated %.1f MB)",
            binding.instance_name,
            model,
            arbiter.name,
            elapsed,
            footprint,
            estimate,
        )
        if cancelled:
            raise asyncio.CancelledError()
        try:  # the caller holds the model from here: give it back if anything below fails
            if footprint > 0:
                await asyncio.to_thread(
                    self.devices.store.remember, self._footprint_key(binding, model, arbiter.name), footprint
                )
            await arbiter.refresh()
            if arbiter.over_limit_mb() > 0:  # underestimated: idle models of the device make room
                await self._trim(arbiter, exclude=key)
            if budget is not None:
                await self._make_room(pool_name, budget, 0.0, exclude=key)
        except BaseException:
            entry.in_use -= 1
            entry.last_used = time.monotonic()
            if entry.in_use == 0:
                arbiter.mark(key, "resident")
            raise
        return elapsed

    def with_residency(self, info: dict[str, Any], instance: str, model: str | None) -> dict[str, Any]:
        """``info`` about a model plus whether it is loaded here, and its residency entry."""
        loaded = self.models.get((instance, model or ""))
        return {**info, "loaded": loaded is not None, "residency": loaded.public() if loaded else None}

    async def _trim(self, arbiter: DeviceArbiter, exclude: tuple[str, str]) -> None:
        """Evict idle models of the device (LRU) while its ledger is past its limit."""
        while arbiter.over_limit_mb() > 0:
            idle = self._candidates(arbiter.name, exclude)
            if not idle:
                logger.warning(
                    "%s holds %.0f MB past its limit (busy models)", arbiter.name, arbiter.over_limit_mb()
                )
                return
            victim = min(idle, key=lambda candidate: candidate.last_used)
            if not await self.unload(*victim.key):
                return

    def memory_used_mb(self, pool_name: str) -> float:
        return sum(entry.footprint_mb for entry in self.models.values() if entry.pool == pool_name)

    async def _make_room(
        self,
        pool_name: str,
        budget: float,
        needed: float,
        exclude: tuple[str, str],
        deadline: float | None = None,
    ) -> None:
        """Unload least recently used idle models of the pool until ``needed`` MB fit its
        quota; when only busy models hold it, wait for one to finish until ``deadline``, then
        503 ``reason = "memory"``."""
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
                if needed <= 0:
                    return
                if deadline is None or time.monotonic() >= deadline:
                    raise PoolBusyError(
                        f"Pool '{pool_name}' has no memory free for another model right now "
                        f"(its memory_budget_mb is {budget:.0f} MB, busy models hold "
                        f"{self.memory_used_mb(pool_name):.0f} MB).",
                        retry_after=self.pool(pool_name).retry_after(),
                        reason="memory",
                    )
                await asyncio.sleep(MEMORY_POLL_SECONDS)
                continue
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
            finally:
                self.devices.get(entry.device).release(key)
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
        self.devices.start()

    async def stop(self) -> None:
        await self.devices.stop()
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
        return {"pools": pools, "devices": self.devices.snapshot()}
