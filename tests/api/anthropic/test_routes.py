"""The Anthropic stream renderer (``api.anthropic.routes._frames``) on typed core events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

from lollms_server.api.anthropic.routes import _frames
from lollms_server.api.kit.events import Event, Failed, Finished, Queued, TextDelta


def render(events: list[Event]) -> list[tuple[str, dict[str, Any]]]:
    async def source() -> AsyncGenerator[Event, None]:
        for event in events:
            yield event

    async def collect() -> list[bytes]:
        return [frame async for frame in _frames(source(), "msg_1", "llm", 7)]

    found = []
    for frame in asyncio.run(collect()):
        name, data = frame.decode().removesuffix("\n\n").split("\n")
        found.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return found


def test_a_queued_then_finished_stream() -> None:
    usage = {"prompt_tokens": 9, "cached_tokens": 4, "completion_tokens": 2}
    finished = Finished({"finish_reason": "length", "usage": usage}, [])
    frames = render([Queued(position=1), TextDelta("a"), TextDelta(""), TextDelta("b"), finished])
    assert [name for name, _ in frames] == [
        "message_start",
        "content_block_start",
        "ping",
        "ping",  # while queued
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert frames[0][1]["message"]["usage"]["input_tokens"] == 7  # the estimate
    assert frames[7][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
        "usage": {
            "input_tokens": 5,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 4,
            "output_tokens": 2,
        },
    }


def test_a_failure_is_an_error_event_in_anthropics_shape() -> None:
    frames = render([TextDelta("a"), Failed("service_unavailable", "The queue wait timed out.", 503)])
    assert frames[-1] == (
        "error",
        {"type": "error", "error": {"type": "overloaded_error", "message": "The queue wait timed out."}},
    )
    assert "message_stop" not in [name for name, _ in frames]
