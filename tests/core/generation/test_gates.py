"""Instance gates: a settings change waits for the running generations; new ones wait for it."""

from __future__ import annotations

import asyncio

import pytest

from lollms_server.core.generation.gates import InstanceGates


async def test_a_change_waits_for_running_generations_and_holds_new_ones() -> None:
    gate = InstanceGates(["a"]).of("a")
    events: list[str] = []
    leave = await gate.enter()

    async def change() -> None:
        async with gate.changing():
            events.append("changed")
            await asyncio.sleep(0.01)
        events.append("change done")

    async def later_generation() -> None:
        exit_later = await gate.enter()
        events.append("later generation")
        exit_later()

    changer = asyncio.ensure_future(change())
    await asyncio.sleep(0.05)
    assert events == [] and gate.running == 1  # the running generation holds the change back
    later = asyncio.ensure_future(later_generation())
    await asyncio.sleep(0.05)
    assert events == []  # a pending change holds new generations back
    leave()
    leave()  # idempotent
    await asyncio.wait_for(asyncio.gather(changer, later), 5)
    assert events == ["changed", "change done", "later generation"]
    assert gate.running == 0


async def test_a_cancelled_change_releases_the_gate() -> None:
    gate = InstanceGates([]).of("b")
    leave = await gate.enter()

    async def change() -> None:
        async with gate.changing():
            pass

    changer = asyncio.ensure_future(change())
    await asyncio.sleep(0.02)
    changer.cancel()
    await asyncio.gather(changer, return_exceptions=True)
    leave()
    exit_next = await asyncio.wait_for(gate.enter(), 5)  # not blocked by the abandoned change
    exit_next()


async def test_a_change_holds_new_generations_back_only_until_its_timeout() -> None:
    from lollms_server.core.generation.gates import ChangeWaitTimeout

    gate = InstanceGates(["c"]).of("c")
    leave = await gate.enter()  # a long generation runs on
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def change() -> None:
        async with gate.changing(timeout=0.3):
            raise AssertionError("the change must not happen while the generation runs")

    changer = asyncio.ensure_future(change())
    await asyncio.sleep(0.05)
    later = asyncio.ensure_future(gate.enter())
    await asyncio.sleep(0.05)
    assert not later.done()  # held back while the change waits
    with pytest.raises(ChangeWaitTimeout):
        await changer
    exit_later = await asyncio.wait_for(later, 5)  # let through once the change gave up
    assert loop.time() - started < 2
    assert gate.running == 2
    exit_later()
    leave()
    assert gate.running == 0
