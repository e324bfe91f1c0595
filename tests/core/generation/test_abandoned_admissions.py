"""A client that leaves in the same turn as its slot is granted frees that slot (soak finding:
a slot and its instance gate held by nobody, so a settings change of the instance waited out
its time and the pool stayed busy after the last client)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from lollms_server.core.generation.queued import QueuedStream
from lollms_server.core.security import Principal
from lollms_server.core.types import GenerateRequest


def active_slots(generation: Any) -> int:
    return sum(pool["active"] for pool in generation.pools.snapshot()["pools"])


async def test_a_stream_opening_cancelled_as_its_slot_is_granted_frees_the_slot(
    app_client: Callable[..., Any],
) -> None:
    async with app_client() as client:
        generation = client.app.state.generation
        original = generation.admit
        opening: asyncio.Task[Any] | None = None

        async def admit_then_leave(*args: Any, **kwargs: Any) -> Any:
            admission = await original(*args, **kwargs)
            assert opening is not None
            opening.cancel()  # the client leaves in the very turn its slot is granted
            return admission

        generation.admit = admit_then_leave
        request = GenerateRequest(prompt="hello", binding_name="echo")
        opening = asyncio.ensure_future(generation.open_stream(request, Principal("user"), "r-1"))
        with pytest.raises(asyncio.CancelledError):
            await opening
        assert active_slots(generation) == 0
        assert generation.gates.of("echo").running == 0  # a settings change would not wait


async def test_a_queued_stream_closed_before_its_events_frees_a_slot_granted_meanwhile(
    app_client: Callable[..., Any],
) -> None:
    async with app_client() as client:
        generation = client.app.state.generation
        request = GenerateRequest(prompt="hello", binding_name="echo")
        granted = asyncio.ensure_future(generation.admit(request, Principal("user")))
        await granted
        assert active_slots(generation) == 1
        queued = QueuedStream(granted, (1, 0.5), asyncio.Queue(), lambda admission: None)  # type: ignore[arg-type,return-value]
        await queued.aclose()  # the response never started: its events were never read
        assert active_slots(generation) == 0
        assert generation.gates.of("echo").running == 0
        await queued.aclose()  # idempotent
        assert active_slots(generation) == 0
