"""The worker wire: every contract value survives its JSON form (through real JSON text)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lollms_server.core.bindings import MediaOutput, MediaRequest, TextChunk, TextRequest, TextResult
from lollms_server.core.pools import wire

PNG = b"\x89PNG\r\n\x1a\n\x00\x01\xff"


def through_json(data: Any) -> Any:
    """What the other side of the wire reads."""
    return json.loads(json.dumps(data))


def test_text_request_round_trip() -> None:
    request = TextRequest(
        messages=[
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "q"}]},
        ],
        parameters={"stop": ["</s>"], "temperature": 0.5, "seed": 3},
        prompt_format={"user_prefix": "U:", "ai_prefix": "A:", "link_text": "\n"},
    )
    assert wire.text_request_from_json(through_json(wire.text_request_to_json(request))) == request


def test_raw_prompt_text_request_round_trip() -> None:
    request = TextRequest(messages=[{"role": "user", "content": "once"}], prompt="once")
    back = wire.text_request_from_json(through_json(wire.text_request_to_json(request)))
    assert back == request and back.prompt == "once"


def test_text_request_from_minimal_json() -> None:
    back = wire.text_request_from_json({"messages": [], "parameters": None, "prompt_format": None})
    assert back == TextRequest(messages=[])


@pytest.mark.parametrize(
    "chunk",
    [
        TextChunk("piece"),
        TextChunk("", "stop", {"completion_tokens": 4}, {"timings": {"load": 0.1}}),
    ],
)
def test_chunk_round_trip(chunk: TextChunk) -> None:
    assert wire.chunk_from_json(through_json(wire.chunk_to_json(chunk))) == chunk


def test_chunk_from_empty_json() -> None:
    assert wire.chunk_from_json({}) == TextChunk()


@pytest.mark.parametrize(
    "result",
    [
        TextResult("whole text", "length", {"prompt_tokens": 2, "completion_tokens": 5}, {"seed": 1}),
        TextResult(""),
    ],
)
def test_result_round_trip(result: TextResult) -> None:
    assert wire.result_from_json(through_json(wire.result_to_json(result))) == result


def test_result_with_null_usage_and_metadata() -> None:
    back = wire.result_from_json({"text": "t", "usage": None, "metadata": None})
    assert back == TextResult("t") and back.usage == {} and back.metadata == {}


def test_media_request_round_trip_with_every_input() -> None:
    request = MediaRequest(
        generation_type="i2i",
        prompt="a cat",
        parameters={"steps": 4, "width": 64},
        images=[PNG, b"\x00second\xff"],
        mask=b"\x00\x01mask",
        audio=b"RIFF\x00\x00WAVE",
        audio_format="wav",
    )
    data = through_json(wire.media_request_to_json(request))
    assert all(isinstance(image, str) for image in data["images"]), "bytes travel as base64 text"
    assert wire.media_request_from_json(data) == request


def test_media_request_round_trip_without_mask_and_audio() -> None:
    request = MediaRequest(generation_type="tti", prompt="a dog")
    data = through_json(wire.media_request_to_json(request))
    assert data["mask"] is None and data["audio"] is None and data["images"] == []
    back = wire.media_request_from_json(data)
    assert back == request and back.mask is None and back.audio is None


def test_media_request_from_minimal_json() -> None:
    assert wire.media_request_from_json({"generation_type": "tts"}) == MediaRequest(generation_type="tts")


def test_media_outputs_round_trip_bytes_and_text() -> None:
    outputs = [
        MediaOutput("image", PNG, "image/png", {"seed": 5}),
        MediaOutput("text", "a transcript", "text/plain"),
        MediaOutput("json", {"segments": [1, 2]}, "application/json"),
        MediaOutput("audio", b"", "audio/wav"),
    ]
    items = through_json(wire.outputs_to_json(outputs))
    assert [item["binary"] for item in items] == [True, False, False, True]
    assert wire.outputs_from_json(items) == outputs


def test_text_that_looks_like_base64_stays_text() -> None:
    outputs = [MediaOutput("text", "aGVsbG8=", "text/plain")]
    assert wire.outputs_from_json(through_json(wire.outputs_to_json(outputs))) == outputs


def test_bytearray_output_comes_back_as_bytes() -> None:
    back = wire.outputs_from_json(
        through_json(wire.outputs_to_json([MediaOutput("video", bytearray(b"\x00mp4"), "video/mp4")]))
    )
    assert back[0].data == b"\x00mp4" and isinstance(back[0].data, bytes)


def test_outputs_from_json_fills_missing_mime_type_and_metadata() -> None:
    back = wire.outputs_from_json([{"type": "text", "data": "t", "mime_type": None, "metadata": None}])
    assert back == [MediaOutput("text", "t", "", {})]


def test_no_outputs_round_trip() -> None:
    assert wire.outputs_from_json(through_json(wire.outputs_to_json([]))) == []
