"""The kit's typed events and what the families share to build and deliver answers."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import pytest

from lollms_server.api.kit.chat import arguments, data_url_image
from lollms_server.api.kit.deliver import rendered
from lollms_server.api.kit.events import Event, Finished, TextDelta, typed
from lollms_server.api.kit.native import given, structured_output
from lollms_server.core.errors import BadRequestError
from lollms_server.core.types import StreamChunk
from lollms_server.utils.nesting import MAX_TOOL_ARGUMENT_DEPTH

OUTPUT = {"type": "text", "data": "ab", "metadata": {"finish_reason": "stop"}}
FINAL = StreamChunk(type="final", content=[OUTPUT])


async def chunks(*items: StreamChunk) -> AsyncGenerator[StreamChunk, None]:
    for item in items:
        yield item


async def test_finished_carries_the_time_to_the_first_token() -> None:
    started = StreamChunk(type="info", content="started", metadata={"binding": "echo", "model": "echo"})
    text = StreamChunk(type="chunk", content="a")
    events = [event async for event in typed(chunks(started, text, text, FINAL))]
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.text == "ab" and finished.finish_reason == "stop"
    assert finished.first_token_seconds is not None and finished.first_token_seconds >= 0
    no_text = [event async for event in typed(chunks(started, FINAL))][-1]
    assert isinstance(no_text, Finished) and no_text.first_token_seconds is None


async def test_rendered_closes_the_events_when_a_renderer_stops_early() -> None:
    closed: list[bool] = []

    async def events() -> AsyncGenerator[Event, None]:
        try:
            for _ in range(10):
                yield TextDelta("x")
        finally:
            closed.append(True)

    async def first_only(source: AsyncGenerator[Event, None]) -> AsyncGenerator[bytes, None]:
        async for _ in source:
            yield b"one"
            return

    assert [frame async for frame in rendered(first_only, events())] == [b"one"]
    assert closed == [True]


def test_given_keeps_what_the_client_set_in_order() -> None:
    found = given(max_tokens=5, temperature=None, top_p=0.0, stop=[])
    assert found == {"max_tokens": 5, "top_p": 0.0, "stop": []}
    assert list(given(b=1, a=2)) == ["b", "a"]


def test_structured_output() -> None:
    assert structured_output(None) is None and structured_output({"type": "text"}) is None
    assert structured_output({"type": "json_object"}) == {"type": "object"}
    schema = {"type": "object", "properties": {}}
    assert structured_output({"type": "json_schema", "json_schema": {"schema": schema}}) == schema
    for bad in ({"type": "json_schema", "json_schema": {}}, {"type": "xml"}):
        with pytest.raises(BadRequestError):
            structured_output(bad)


def test_replayed_call_arguments() -> None:
    assert arguments(None) == {} and arguments("") == {} and arguments("not json") == {}
    assert arguments('{"a": 1}') == {"a": 1} and arguments({"a": 1}) == {"a": 1}
    deep: Any = 1
    for _ in range(MAX_TOOL_ARGUMENT_DEPTH + 1):
        deep = [deep]
    for bad in (deep, 3):
        with pytest.raises(BadRequestError):
            arguments(bad)


def test_data_url_image() -> None:
    image = data_url_image("data:image/jpeg;base64,aGk=")
    assert (image.data, image.mime_type) == ("aGk=", "image/jpeg")
    assert data_url_image("data:;base64,aGk=").mime_type == "image/png"
