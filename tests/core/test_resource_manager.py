"""Pools: FIFO hand-over, bounded queue, timeouts, cancellation; residency: idle unload, LRU."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lollms_server.core.bindings import Binding, BindingCard, BindingContext
from lollms_server.core.config import PoolConfig, ResourceManagerConfig
from lollms_server.core.errors import BindingError, ServiceUnavailableError
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
    manager = resources(limit=4, memory_budget_mb=100, queue_timeout=0.2)
    binding = SizedBinding()
    for model in ("a", "b"):
        async with manager.use_model(binding, "p", model):
            pass
    async with manager.use_model(binding, "p", "a"):
        pass  # b is now least recently used
    async with manager.use_model(binding, "p", "c"):
        assert binding.loaded == {"a", "c"}
        async with manager.use_model(binding, "p", "a"):
            # a and c busy: nothing to evict; it waits for memory until its deadline, then 503
            with pytest.raises(ServiceUnavailableError) as busy:
                async with manager.use_model(binding, "p", "d"):
                    pass
            assert getattr(busy.value, "reason", None) == "memory"
    assert manager.memory_used_mb("p") == 80


async def test_idle_unload() -> None:
    manager = resources(idle_unload_seconds=0.01)
    binding = SizedBinding()
    async with manager.use_model(binding, "p", "a"):
        assert await manager.unload_idle() == []  # in use
    await asyncio.sleep(0.02)
    assert await manager.unload_idle() == [("sized", "a")]
    assert binding.loaded == set()


class SlowBinding(SizedBinding):
    """Loads take ``seconds`` in a thread (like a real model load), 50 MB each."""

    def __init__(self, seconds: float = 0.2) -> None:
        super().__init__()
        self.seconds = seconds
        self.loads = 0
        self.loading = 0
        self.most_at_once = 0

    async def load_model(self, model_name: str) -> None:
        self.loads += 1
        self.loading += 1
        self.most_at_once = max(self.most_at_once, self.loading)
        try:
            await self.run_blocking(__import__("time").sleep, self.seconds)
        finally:
            self.loading -= 1
        self.loaded.add(model_name)

    def footprint_mb(self, model_name: str) -> float:
        return 50.0

    async def estimate_footprint_mb(self, model_name: str) -> float | None:
        return 50.0


async def test_two_loads_that_evict_each_other_do_not_deadlock() -> None:
    """Finding #4: C resident and idle; A and B load at once and both overflow the budget."""
    manager = resources(limit=2, memory_budget_mb=90)
    binding = SlowBinding(0.1)
    async with manager.use_model(binding, "p", "c"):
        pass

    async def use(model: str) -> None:
        async with manager.slot("p"), manager.use_model(binding, "p", model):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(asyncio.gather(use("a"), use("b")), timeout=5)
    assert manager.pool("p").active == 0
    assert len(manager._model_locks) == 0, "model locks were left behind"
    async with manager.use_model(binding, "p", "a"):  # and the pool still serves
        pass


async def test_a_load_whose_caller_left_keeps_its_slot_until_it_ends() -> None:
    """Finding #14: the client leaves during a load; the next request must not load it again
    while the first load still runs (a limit-1 pool never loads two models at once)."""
    manager = resources(limit=1)
    binding = SlowBinding(0.3)

    async def use() -> None:
        async with manager.slot("p"), manager.use_model(binding, "p", "a"):
            pass

    first = asyncio.create_task(use())
    await asyncio.sleep(0.05)
    first.cancel()
    await asyncio.sleep(0.05)
    assert manager.pool("p").active == 1, "the slot was given back while the load still ran"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert binding.loading == 0 and manager.pool("p").active == 0
    await use()  # the model loaded for the client that left is resident: no second load
    assert binding.loads == 1 and binding.most_at_once == 1


async def test_models_of_remote_apis_leave_no_residency_behind() -> None:
    """Finding #13: each unknown model name sent to a remote binding added a resident model."""
    manager = resources(limit=1)
    binding = SizedBinding()
    binding.resident_models = False
    for index in range(50):
        async with manager.use_model(binding, "p", f"junk-{index}"):
            pass
    assert manager.models == {} and len(manager._model_locks) == 0


async def test_failed_loads_leave_no_lock_behind() -> None:
    manager = resources(limit=1)
    binding = SizedBinding()

    async def failing(model_name: str) -> None:
        raise RuntimeError("no such model")

    binding.load_model = failing  # type: ignore[method-assign]
    for index in range(20):
        with pytest.raises(BindingError):
            async with manager.use_model(binding, "p", f"missing-{index}"):
                pass
    assert manager.models == {} and len(manager._model_locks) == 0
