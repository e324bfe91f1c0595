"""A small SSE reader for the tests: parses ``data: <json>`` events as they arrive."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx


def parse_events(body: str) -> list[dict[str, Any]]:
    """Parse a whole SSE body; every event must be exactly one ``data:`` line."""
    events = []
    for block in body.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: ") and "\n" not in block, f"bad SSE framing: {block!r}"
        events.append(json.loads(block[len("data: ") :]))
    assert body.endswith("\n\n"), "stream must end at an event boundary"
    return events


def iter_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    buffer = ""
    for text in response.iter_text():
        buffer += text
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            yield json.loads(block[len("data: ") :])


async def aiter_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    buffer = ""
    async for text in response.aiter_text():
        buffer += text
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            yield json.loads(block[len("data: ") :])


async def staggered_streams(
    urls: list[str], bodies: list[dict[str, Any]], gaps: list[float]
) -> list[dict[str, Any]]:
    """Open one stream per ``urls[i]`` (each on its own connection) in order, ``gaps[i]`` seconds
    apart, and return the pool host's ``worker_timings`` of each final event."""
    import asyncio

    from tests.conftest import AUTH

    async def one(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
        async with client.stream("POST", "/api/v1/generate", json=body) as response:
            async for event in aiter_events(response):
                if event["type"] == "final":
                    timings: dict[str, Any] = event["content"][0]["metadata"]["worker_timings"]
                    return timings
        raise AssertionError("no final event")

    clients = [httpx.AsyncClient(base_url=url, headers=AUTH, timeout=120) for url in urls]
    try:
        tasks = []
        for client, body, gap in zip(clients, bodies, gaps, strict=True):
            tasks.append(asyncio.create_task(one(client, body)))
            await asyncio.sleep(gap)
        return list(await asyncio.gather(*tasks))
    finally:
        for client in clients:
            await client.aclose()


def assert_served_in_arrival_order(results: list[dict[str, Any]]) -> None:
    """Slots granted in arrival order, one generation at a time (pool-side timestamps)."""
    granted = [timings["slot_granted_at"] for timings in results]
    assert granted == sorted(granted), "not served in arrival order"
    for earlier, later in zip(results, results[1:], strict=False):
        assert earlier["compute_finished_at"] <= later["slot_granted_at"], "generations overlapped"


def events_killing_midway(
    url: str, payload: dict[str, Any], pid: int, after: int = 3
) -> list[dict[str, Any]]:
    """Stream ``payload`` from ``url``; SIGKILL ``pid`` once ``after`` events arrived; all events."""
    import os
    import signal

    from tests.conftest import AUTH

    lines = []
    with httpx.Client(base_url=url, headers=AUTH, timeout=120) as client:
        with client.stream("POST", "/api/v1/generate", json=payload) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    lines.append(line)
                    if len(lines) == after:
                        os.kill(pid, signal.SIGKILL)
    return parse_events("".join(line + "\n\n" for line in lines))
