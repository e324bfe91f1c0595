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
        "ping",
        "ping",  # while queued
        "content_block_start",
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


def test_thinking_then_text_blocks_with_increasing_indices() -> None:
    pieces = ["<thi", "nk>I ", "wonder</th", "ink>\n\n", "Hi", " there"]
    frames = render([*map(TextDelta, pieces), Finished({"finish_reason": "stop", "usage": {}}, [])])
    blocks = [
        (data["index"], data["content_block"]) for name, data in frames if name == "content_block_start"
    ]
    assert blocks == [
        (0, {"type": "thinking", "thinking": "", "signature": ""}),
        (1, {"type": "text", "text": ""}),
    ]
    deltas = [(data["index"], data["delta"]) for name, data in frames if name == "content_block_delta"]
    assert "".join(delta["thinking"] for index, delta in deltas if index == 0) == "I wonder"
    assert "".join(delta["text"] for index, delta in deltas if index == 1) == "Hi there"
    edges = [
        (name, data["index"])
        for name, data in frames
        if name in ("content_block_start", "content_block_stop")
    ]
    assert edges == [  # the thinking block closes before the text block opens
        ("content_block_start", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_stop", 1),
    ]


def test_an_empty_answer_still_has_its_text_block() -> None:
    frames = render([Finished({"finish_reason": "stop", "usage": {}}, [])])
    assert [name for name, _ in frames] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
