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
