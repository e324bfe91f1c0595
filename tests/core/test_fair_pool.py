"""Fair pools: weighted fair share across keys (virtual clock on slot-seconds), FIFO within a
key, batch behind interactive with aging, queue positions, the admin view, and that nothing is
left behind for a key that is gone. The FIFO policy and a single key keep strict FIFO."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, Literal

import pytest

from lollms_server.core.config import PoolConfig, ResourceManagerConfig
from lollms_server.core.errors import ServiceUnavailableError
from lollms_server.core.resource_manager import (
    IDLE_WINDOW_SECONDS,
    Lease,
    PoolBusyError,
    ResourceManager,
    Ticket,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def resources(clock: FakeClock | None = None, **pool: Any) -> ResourceManager:
    config = ResourceManagerConfig(pools={"p": PoolConfig(**pool)}, default_pool="p")
    if clock is None:
        return ResourceManager(config)
    return ResourceManager(config, clock=clock)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


class Recorder:
    """Waiters that note who got each slot and hand their leases over to the test."""

    def __init__(self, manager: ResourceManager) -> None:
        self.manager = manager
        self.order: list[str] = []
        self.leases: asyncio.Queue[Lease] = asyncio.Queue()
        self.tasks: list[asyncio.Task[None]] = []

    def add(self, label: str, ticket: Ticket, **kwargs: Any) -> asyncio.Task[None]:
        async def wait() -> None:
            lease = await self.manager.acquire("p", ticket, **kwargs)
            self.order.append(label)
            await self.leases.put(lease)

        task = asyncio.create_task(wait())
        self.tasks.append(task)
        return task

    async def serve(self, clock: FakeClock, count: int, hold: float | dict[str, float] = 1.0) -> None:
        """Grant ``count`` slots one after the other, each held ``hold`` seconds."""
        for _ in range(count):
            lease = await asyncio.wait_for(self.leases.get(), 2)
            seconds = hold if isinstance(hold, float) else hold[lease.ticket.key]
            clock.advance(seconds)
            lease.release()
            await settle()


@pytest.mark.parametrize("policy", ["fair", "fifo"])
async def test_flood_a_light_key_is_served_right_after_the_running_request(
    policy: Literal["fair", "fifo"],
) -> None:
    clock = FakeClock()
    manager = resources(clock, limit=1, queue_size=64, policy=policy)
    recorder = Recorder(manager)
    flood = Ticket("flood")
    held = await manager.acquire("p", flood)
    for index in range(20):
        recorder.add(f"flood-{index}", flood)
    await settle()
    clock.advance(0.5)
    recorder.add("light", Ticket("light"))
    await settle()
    assert manager.pool("p").queued == 21
    clock.advance(0.5)
    held.release()
    await settle()
    await recorder.serve(clock, 21, 1.0)
    await asyncio.gather(*recorder.tasks)
    if policy == "fair":
        assert recorder.order[0] == "light", recorder.order
        assert recorder.order[1:] == [f"flood-{index}" for index in range(20)]
    else:
        assert recorder.order == [f"flood-{index}" for index in range(20)] + ["light"]
    assert manager.pool("p").active == 0


async def test_slot_shares_follow_weights_within_one_grant() -> None:
    clock = FakeClock()
    manager = resources(clock, limit=1, queue_size=200)
    recorder = Recorder(manager)
    weights = {"w1": 1.0, "w2": 2.0, "w4": 4.0}
    for key, weight in weights.items():  # every key always backlogged: 30 waiters each
        for _ in range(30):
            recorder.add(key, Ticket(key, weight))
    await settle()
    await recorder.serve(clock, 30, 1.0)
    counts = Counter(recorder.order[:30])
    total = sum(weights.values())
    for key, weight in weights.items():
        ideal = 30 * weight / total
        assert abs(counts[key] - ideal) <= 1, (counts, key, ideal)
    usage = manager.pool("p").usage()
    virtual = [usage[key]["virtual_time"] for key in weights]
    assert max(virtual) - min(virtual) <= 1.0 + 1e-9, usage  # within one grant of one another
    for task in recorder.tasks:
        task.cancel()
    await asyncio.gather(*recorder.tasks, return_exceptions=True)
    while not recorder.leases.empty():
        recorder.leases.get_nowait().release()
    assert manager.pool("p").queued == 0 and manager.pool("p").active == 0


async def test_shares_count_slot_seconds_not_requests() -> None:
    """A key whose requests hold the slot four times as long gets a quarter of the grants."""
    clock = FakeClock()
    manager = resources(clock, limit=1, queue_size=200)
    recorder = Recorder(manager)
    for _ in range(20):
        recorder.add("long", Ticket("long"))
        recorder.add("short", Ticket("short"))
    await settle()
    await recorder.serve(clock, 20, {"long": 4.0, "short": 1.0})
    counts = Counter(recorder.order[:20])
    assert counts["short"] == 16 and counts["long"] == 4, counts
    for task in recorder.tasks:
        task.cancel()
    await asyncio.gather(*recorder.tasks, return_exceptions=True)
    while not recorder.leases.empty():
        recorder.leases.get_nowait().release()


async def test_fifo_within_one_key() -> None:
    clock = FakeClock()
    manager = resources(clock, limit=1)
    recorder = Recorder(manager)
    held = await manager.acquire("p", Ticket("x"))
    for index in range(5):
        recorder.add(f"a{index}", Ticket("a", 2.0))
        recorder.add(f"b{index}", Ticket("b"))
    await settle()
    clock.advance(1)
    held.release()
    await recorder.serve(clock, 10, 1.0)
    await asyncio.gather(*recorder.tasks)
    assert [label for label in recorder.order if label[0] == "a"] == [f"a{i}" for i in range(5)]
    assert [label for label in recorder.order if label[0] == "b"] == [f"b{i}" for i in range(5)]


async def test_batch_waits_behind_interactive_then_ages_in() -> None:
    clock = FakeClock()
    manager = resources(clock, limit=1, batch_max_wait=5.0)
    recorder = Recorder(manager)
    held = await manager.acquire("p", Ticket("holder"))
    recorder.add("batch", Ticket("bulk", priority="batch"))
    for index in range(3):
        recorder.add(f"chat-{index}", Ticket("chat"))
    await settle()
    assert [item["key"] for item in manager.pool("p").waiting()] == ["chat", "chat", "chat", "bulk"]
    clock.advance(1)
    held.release()  # the batch request came first and its key has no use: still behind
    await settle()
    await recorder.serve(clock, 1, 1.0)  # chat-0 held 1 s (batch waited 2 s)
    assert recorder.order == ["chat-0", "chat-1"]
    await recorder.serve(clock, 1, 6.0)  # chat-1 held 6 s: the batch request waited 8 s > 5
    assert recorder.order == ["chat-0", "chat-1", "batch"]
    await recorder.serve(clock, 2, 1.0)
    await asyncio.gather(*recorder.tasks)
    assert recorder.order == ["chat-0", "chat-1", "batch", "chat-2"]


async def test_batch_is_served_when_no_interactive_request_waits() -> None:
    clock = FakeClock()
    manager = resources(clock, limit=1, batch_max_wait=1000.0)
    recorder = Recorder(manager)
    held = await manager.acquire("p", Ticket("chat"))
    recorder.add("batch-0", Ticket("bulk", priority="batch"))
    recorder.add("batch-1", Ticket("other", priority="batch"))
    recorder.add("chat", Ticket("chat"))  # its key used the slot: the batch keys have less
    await settle()
    clock.advance(1)
    held.release()
    await recorder.serve(clock, 3, 1.0)
    await asyncio.gather(*recorder.tasks)
    assert recorder.order == ["chat", "batch-0", "batch-1"]


async def test_the_fifo_policy_ignores_keys_and_priorities() -> None:
    clock = FakeClock()
    manager = resources(clock, limit=1, policy="fifo", batch_max_wait=1.0)
    recorder = Recorder(manager)
    held = await manager.acquire("p", Ticket("a"))
    recorder.add("0", Ticket("a", priority="batch"))
    recorder.add("1", Ticket("a"))
    recorder.add("2", Ticket("b", 100.0))
    await settle()
    clock.advance(1)
    held.release()
    await recorder.serve(clock, 3, 1.0)
    await asyncio.gather(*recorder.tasks)
    assert recorder.order == ["0", "1", "2"]


@pytest.mark.parametrize("policy", ["fair", "fifo"])
@pytest.mark.parametrize("keys", [("a",), ("a", "b")])
async def test_positions_decrease_to_one_then_admission(
    policy: Literal["fair", "fifo"], keys: tuple[str, ...]
) -> None:
    clock = FakeClock()
    manager = resources(clock, limit=1, policy=policy)
    pool = manager.pool("p")
    recorder = Recorder(manager)
    heard: dict[int, list[tuple[int, float]]] = {index: [] for index in range(6)}
    admitted_at: dict[int, int] = {}
    held = await manager.acquire("p", Ticket("a"))
    for index in range(6):
        recorder.add(
            str(index),
            Ticket(keys[index % len(keys)]),
            on_position=lambda position, eta, index=index: heard[index].append((position, eta)),
        )
    await settle()
    enqueued = {index: len(calls) for index, calls in heard.items()}
    # while others arrive, another key's request may move ahead (fair); never with one key
    if len(keys) == 1 or policy == "fifo":
        assert all(count == 1 for count in enqueued.values()), heard
    clock.advance(1)
    held.release()
    for _ in range(6):
        lease = await asyncio.wait_for(recorder.leases.get(), 2)
        index = int(recorder.order[-1])
        admitted_at[index] = len(heard[index])
        clock.advance(1)
        lease.release()
        await settle()
    await asyncio.gather(*recorder.tasks)
    assert pool._listeners == 0
    for index, calls in heard.items():
        assert len(calls) == admitted_at[index], "called after admission"
        positions = [position for position, _ in calls[enqueued[index] - 1 :]]
        assert positions[-1] == 1, (index, calls)
        assert all(later < earlier for earlier, later in zip(positions, positions[1:], strict=False)), (
            index,
            calls,
        )
        etas = [eta for _, eta in calls[enqueued[index] - 1 :]]
        assert all(eta > 0 for eta in etas) and etas[-1] == pytest.approx(pool._hold_average, rel=0.5)
    if policy == "fifo" or len(keys) == 1:
        assert recorder.order == [str(index) for index in range(6)]


async def test_a_new_key_moves_ahead_and_positions_follow() -> None:
    clock = FakeClock()
    manager = resources(clock, limit=1)
    heard: list[tuple[int, float]] = []
    held = await manager.acquire("p", Ticket("flood"))
    tasks = [asyncio.create_task(manager.acquire("p", Ticket("flood"))) for _ in range(3)]
    await settle()
    light = asyncio.create_task(
        manager.acquire("p", Ticket("light"), lambda position, eta: heard.append((position, eta)))
    )
    await settle()
    assert heard == [(1, pytest.approx(manager.pool("p").eta(1)))]
    waiting = manager.pool("p").waiting()
    assert [(item["key"], item["position"]) for item in waiting] == [
        ("light", 1),
        ("flood", 2),
        ("flood", 3),
        ("flood", 4),
    ]
    assert set(waiting[0]) == {"key", "priority", "waited_seconds", "position"}
    clock.advance(1)
    held.release()
    lease = await asyncio.wait_for(light, 1)
    assert lease.ticket.key == "light"
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    lease.release()
    assert manager.pool("p").active == 0 and manager.pool("p").queued == 0


async def test_cancelled_waiter_leaves_at_once_under_fair() -> None:
    manager = resources(limit=1)
    held = await manager.acquire("p", Ticket("a"))
    heard: list[int] = []
    first = asyncio.create_task(manager.acquire("p", Ticket("b")))
    second = asyncio.create_task(manager.acquire("p", Ticket("c"), lambda p, _: heard.append(p)))
    await settle()
    assert manager.pool("p").queued == 2 and heard == [2]
    first.cancel()
    await settle()
    assert manager.pool("p").queued == 1 and heard == [2, 1]
    assert "b" not in manager.pool("p")._active
    held.release()
    lease = await asyncio.wait_for(second, 1)
    lease.release()
    assert manager.pool("p").active == 0


async def test_a_granted_then_cancelled_waiter_passes_the_slot_on() -> None:
    manager = resources(limit=1)
    held = await manager.acquire("p", Ticket("a"))
    first = asyncio.create_task(manager.acquire("p", Ticket("b")))
    second = asyncio.create_task(manager.acquire("p", Ticket("c")))
    await settle()
    held.release()  # the slot goes to ``first``...
    first.cancel()  # ...which leaves before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    lease = await asyncio.wait_for(second, 1)
    assert manager.pool("p").active == 1
    lease.release()
    assert manager.pool("p").active == 0
    assert manager.pool("p").usage()["b"]["running"] == 0


async def test_timeout_and_overflow_under_fair_are_503_with_position() -> None:
    manager = resources(limit=1, queue_size=2, queue_timeout=0.05)
    held = await manager.acquire("p", Ticket("a"))
    early = asyncio.create_task(manager.acquire("p", Ticket("a")))
    late = asyncio.create_task(manager.acquire("p", Ticket("b")))
    await settle()
    with pytest.raises(PoolBusyError) as overflow:
        await manager.acquire("p", Ticket("c"))
    assert isinstance(overflow.value, ServiceUnavailableError)
    assert overflow.value.queue_position == 3 and int(overflow.value.headers["Retry-After"]) >= 1
    assert "queue is full" in overflow.value.message
    errors = await asyncio.gather(early, late, return_exceptions=True)
    positions = {}
    for error in errors:
        assert isinstance(error, PoolBusyError) and "no slot within" in error.message
        assert int(error.headers["Retry-After"]) == error.retry_after >= 1
        positions[error.queue_position] = error
    assert sorted(positions) == [1, 2]  # "b" went ahead of "a"'s second request
    held.release()
    pool = manager.pool("p")
    assert pool.active == 0 and pool.queued == 0 and pool.timed_out == 2 and pool.rejected == 1


async def test_a_key_that_is_gone_leaves_no_state() -> None:
    clock = FakeClock()
    manager = resources(clock, limit=2)
    pool = manager.pool("p")
    for index in range(50):
        async with manager.slot("p", Ticket(f"key-{index}")):
            clock.advance(0.01)
    held = await manager.acquire("p", Ticket("x"))
    other = await manager.acquire("p", Ticket("y"))
    waiter = asyncio.create_task(manager.acquire("p", Ticket("z")))
    await settle()
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    held.release()
    other.release()
    assert "key-0" in pool.usage()  # idle within the window: remembered
    clock.advance(IDLE_WINDOW_SECONDS + 1)
    assert pool.usage() == {} and manager.snapshot()["pools"][0]["keys"] == {}
    assert pool._active == {} and pool._idle == {} and pool._waiters == {}
    assert pool.active == 0 and pool._listeners == 0


async def test_a_key_arriving_to_an_idle_pool_is_not_penalised_for_past_use() -> None:
    clock = FakeClock()
    manager = resources(clock, limit=1)
    pool = manager.pool("p")
    recorder = Recorder(manager)
    held = await manager.acquire("p", Ticket("heavy"))
    recorder.add("light", Ticket("light"))
    await settle()
    clock.advance(10)  # heavy holds 10 s while light waits
    held.release()
    await recorder.serve(clock, 1, 1.0)
    usage = pool.usage()
    assert usage["heavy"]["virtual_time"] - usage["light"]["virtual_time"] == pytest.approx(9)
    clock.advance(1)  # the pool is idle now
    held = await manager.acquire("p", Ticket("heavy"))
    assert pool.usage()["heavy"]["virtual_time"] == pytest.approx(pool.virtual_time)
    assert pool.usage()["heavy"]["virtual_time"] < 10
    held.release()
    await asyncio.gather(*recorder.tasks)


async def test_a_debt_is_kept_across_a_short_gap_and_forgiven_after_the_window() -> None:
    clock = FakeClock()
    manager = resources(clock, limit=2)
    pool = manager.pool("p")
    light = Ticket("light", 100.0)
    background = await manager.acquire("p", light)  # light stays active throughout
    heavy = await manager.acquire("p", Ticket("heavy"))
    clock.advance(10)
    heavy.release()  # heavy is 10 s ahead
    clock.advance(0.5)
    other = await manager.acquire("p", Ticket("other"))
    recorder = Recorder(manager)
    recorder.add("heavy", Ticket("heavy"))  # back after half a second: the debt is kept
    recorder.add("light", light)
    await settle()
    assert pool.usage()["heavy"]["virtual_time"] == pytest.approx(10)
    clock.advance(0.5)
    other.release()
    await recorder.serve(clock, 2, 1.0)
    assert recorder.order == ["light", "heavy"]
    assert pool.usage()["heavy"]["virtual_time"] == pytest.approx(11)
    clock.advance(IDLE_WINDOW_SECONDS + 1)  # heavy idle past the window, the pool busy
    heavy = await manager.acquire("p", Ticket("heavy"))
    usage = pool.usage()
    assert usage["heavy"]["virtual_time"] == pytest.approx(pool.virtual_time)
    assert usage["heavy"]["virtual_time"] < 1  # forgiven
    heavy.release()
    background.release()
    await asyncio.gather(*recorder.tasks)
    assert pool.active == 0 and pool.queued == 0


async def test_snapshot_keeps_its_fields_and_adds_the_queue() -> None:
    manager = resources(limit=1)
    held = await manager.acquire("p", Ticket("a", 2.0))
    waiter = asyncio.create_task(manager.acquire("p", Ticket("b", priority="batch")))
    await settle()
    entry = manager.snapshot()["pools"][0]
    for name in ("name", "limit", "active", "queued", "served", "rejected", "timed_out", "models"):
        assert name in entry
    assert entry["policy"] == "fair"
    assert [(item["key"], item["priority"], item["position"]) for item in entry["waiting"]] == [
        ("b", "batch", 1)
    ]
    assert entry["keys"]["a"]["running"] == 1 and entry["keys"]["b"]["running"] == 0
    held.release()
    lease = await asyncio.wait_for(waiter, 1)
    lease.release()
    assert manager.snapshot()["pools"][0]["waiting"] == []


def test_tickets_and_pool_errors() -> None:
    import pickle

    with pytest.raises(ValueError):
        Ticket("a", 0.0)
    error = pickle.loads(
        pickle.dumps(PoolBusyError("busy", retry_after=7, queue_position=3, eta_seconds=2.5))
    )
    assert (error.message, error.retry_after, error.queue_position, error.eta_seconds) == ("busy", 7, 3, 2.5)
    assert error.headers["Retry-After"] == "7" and error.status_code == 503
