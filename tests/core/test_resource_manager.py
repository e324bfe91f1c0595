"""Pools: FIFO hand-over, bounded queue, timeouts, cancellation; residency: idle unload, LRU."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lollms_server.core.bindings import Binding, BindingCard, BindingContext
from lollms_server.core.config import PoolConfig, ResourceManagerConfig
from lollms_server.core.errors import ServiceUnavailableError
from lollms_server.core.resource_manager import ResourceManager


def resources(**pool: Any) -> ResourceManager:
    return ResourceManager(ResourceManagerConfig(pools={"p": PoolConfig(**pool)}, default_pool="p"))


async def test_fifo_hand_over_one_at_a_time() -> None:
    manager = resources(limit=1, queue_size=10)
    order: list[int] = []
    running = 0

    async def job(index: int) -> None:
        nonlocal running
        async with manager.slot("p"):
            running += 1
            assert running == 1
            order.append(index)
            await asyncio.sleep(0.002)
            running -= 1

    tasks = []
    for index in range(8):
        tasks.append(asyncio.create_task(job(index)))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == list(range(8))
    snapshot = manager.snapshot()["pools"][0]
    assert snapshot["served"] == 8 and snapshot["active"] == 0 and snapshot["max_wait_seconds"] > 0


async def test_full_queue_and_timeout_are_503_with_retry_after() -> None:
    manager = resources(limit=1, queue_size=1, queue_timeout=0.05)
    held = await manager.acquire("p")
    waiter = asyncio.create_task(manager.acquire("p"))
    await asyncio.sleep(0)
    with pytest.raises(ServiceUnavailableError) as overflow:
        await manager.acquire("p")
    assert int(overflow.value.headers["Retry-After"]) >= 1
    with pytest.raises(ServiceUnavailableError, match="no slot within"):
        await waiter
    held.release()
    held.release()  # idempotent
    assert manager.pool("p").active == 0


async def test_cancelled_waiter_leaves_the_queue_at_once() -> None:
    manager = resources(limit=1)
    held = await manager.acquire("p")
    waiter = asyncio.create_task(manager.acquire("p"))
    await asyncio.sleep(0)
    assert manager.pool("p").queued == 1
    waiter.cancel()
    await asyncio.sleep(0)
    assert manager.pool("p").queued == 0
    held.release()
    assert manager.pool("p").active == 0


class SizedBinding(Binding):
    def __init__(self) -> None:
        card = BindingCard(type_name="sized")
        super().__init__(
            BindingContext("sized", card, {}, models_folder=__import__("pathlib").Path("."), pool="p")
        )
        self.loaded: set[str] = set()

    async def load_model(self, model_name: str) -> None:
        self.loaded.add(model_name)

    async def unload_model(self, model_name: str) -> None:
        self.loaded.discard(model_name)

    def footprint_mb(self, model_name: str) -> float:
        return 40.0

    async def estimate_footprint_mb(self, model_name: str) -> float | None:
        return 40.0


async def test_lru_eviction_under_budget_and_busy_models_are_kept() -> None:
    manager = resources(limit=4, memory_budget_mb=100)
    binding = SizedBinding()
    for model in ("a", "b"):
        async with manager.use_model(binding, "p", model):
            pass
    async with manager.use_model(binding, "p", "a"):
        pass  # b is now least recently used
    async with manager.use_model(binding, "p", "c"):
        assert binding.loaded == {"a", "c"}
        async with manager.use_model(binding, "p", "a"):
            with pytest.raises(ServiceUnavailableError):  # a and c busy: nothing to evict
                async with manager.use_model(binding, "p", "d"):
                    pass
    assert manager.memory_used_mb("p") == 80


async def test_idle_unload() -> None:
    manager = resources(idle_unload_seconds=0.01)
    binding = SizedBinding()
    async with manager.use_model(binding, "p", "a"):
        assert await manager.unload_idle() == []  # in use
    await asyncio.sleep(0.02)
    assert await manager.unload_idle() == [("sized", "a")]
    assert binding.loaded == set()
