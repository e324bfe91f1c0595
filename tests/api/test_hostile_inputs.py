"""Hostile and malformed inputs, each with the exact status it must get; faults injected into a
binding give clean errors, free the slot, and the next request succeeds."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import pytest

from tests.conftest import AUTH

GEN = "/api/v1/generate"


def png_b64(width: int = 8, height: int = 8) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def item(data: str, **extra: Any) -> dict[str, Any]:
    return {"type": "text", "role": "user_prompt", "data": data, **extra}


HOSTILE: list[tuple[str, str, str, Any, int]] = [
    # (name, method, path, json body, expected status)
    ("traversal in model_name", "POST", GEN, {"prompt": "x", "model_name": "../../etc/passwd"}, 400),
    ("absolute model_name", "POST", GEN, {"prompt": "x", "model_name": "/etc/passwd"}, 400),
    ("backslash model_name", "POST", GEN, {"prompt": "x", "model_name": "..\\..\\win.ini"}, 400),
    ("nul in model_name", "POST", GEN, {"prompt": "x", "model_name": "a\u0000b"}, 400),
    ("header injection in model_name", "POST", GEN, {"prompt": "x", "model_name": "a\r\nX-Evil: 1"}, 400),
    ("traversal in binding_name", "POST", GEN, {"prompt": "x", "binding_name": "../echo"}, 404),
    ("header injection in binding_name", "POST", GEN, {"prompt": "x", "binding_name": "e\r\nX-Evil: 1"}, 404),
    (
        "traversal in personality",
        "POST",
        GEN,
        {"prompt": "x", "personality": "../../zoos/personalities/lollms"},
        404,
    ),
    ("traversal in function name", "POST", GEN, {"prompt": "x", "functions": ["../../os.system"]}, 404),
    ("traversal in path parameter", "GET", "/api/v1/get_model_info/echo?model_name=../../x", None, 400),
    ("unknown binding in path", "GET", "/api/v1/list_available_models/..%2F..%2Fetc", None, 404),
    ("wrong type", "POST", GEN, {"prompt": 5}, 422),
    ("wrong nested type", "POST", GEN, {"input_data": [{"type": "text", "data": ["x"]}]}, 422),
    ("unknown generation type", "POST", GEN, {"prompt": "x", "generation_type": "mind_reading"}, 422),
    ("empty input", "POST", GEN, {"input_data": []}, 422),
    ("extra field", "POST", GEN, {"prompt": "x", "evil": True}, 422),
    ("negative max_tokens", "POST", GEN, {"prompt": "x", "parameters": {"max_tokens": -1}}, 400),
    ("string temperature", "POST", GEN, {"prompt": "x", "parameters": {"temperature": "hot"}}, 400),
    ("too many items", "POST", GEN, {"input_data": [item("x")] * 300}, 400),
    ("prompt over the limit", "POST", GEN, {"prompt": "x" * 1_000_001}, 400),
    (
        "invalid base64 image",
        "POST",
        GEN,
        {
            "generation_type": "i2i",
            "binding_name": "echo",
            "input_data": [item("x"), {"type": "image", "role": "input_image", "data": "%%%notbase64"}],
        },
        400,
    ),
]


@pytest.mark.parametrize(
    ("name", "method", "path", "body", "status"), HOSTILE, ids=[case[0] for case in HOSTILE]
)
async def test_hostile_inputs(
    app_client: Any, name: str, method: str, path: str, body: Any, status: int
) -> None:
    async with app_client() as client:
        response = await client.request(method, path, json=body, headers=AUTH)
        assert response.status_code == status, response.text
        assert "x-evil" not in response.headers
        if status >= 400:
            assert set(response.json()) == {"error", "detail"}


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ('{"prompt": "\\u202e\\ud83d\\ude00 \\u0000 \\uffff zero\\u200bwidth"}', 200),  # RTL, emoji, NUL
        ('{"prompt": "lone \\ud800 surrogate"}', 422),
        ('{"prompt": "x", "parameters": {"stop": ["\\udfff"]}}', 422),
    ],
)
async def test_unicode_edge_cases_never_break_the_answer(app_client: Any, raw: str, status: int) -> None:
    async with app_client() as client:
        for stream in (False, True):
            body = raw[:-1] + (', "stream": true}' if stream else "}")
            response = await client.post(
                GEN, content=body.encode(), headers={**AUTH, "content-type": "application/json"}
            )
            assert response.status_code == status, response.text
            response.content.decode("utf-8")  # valid UTF-8 whatever came in


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            [{"type": "image", "role": "input_image", "data": png_b64()[:40]}],
            "not a valid image",
        ),  # truncated
        (
            [{"type": "image", "role": "input_image", "data": png_b64(), "mime_type": "image/jpeg"}],
            "mime_type says",
        ),
        (
            [
                {
                    "type": "audio",
                    "role": "input_audio",
                    "data": base64.b64encode(b"RIFF\x00\x00\x00\x00WAVE").decode(),
                    "mime_type": "audio/mpeg",
                }
            ],
            "mime_type says",
        ),
        (
            [{"type": "audio", "role": "input_audio", "data": base64.b64encode(b"\x00" * 64).decode()}],
            "unsupported audio format",
        ),
    ],
)
async def test_truncated_and_mislabelled_media(
    app_client: Any, inputs: list[dict[str, Any]], message: str
) -> None:
    from lollms_server.core.errors import BadRequestError
    from lollms_server.core.generation.media_inputs import build_media_request

    kind = "stt" if inputs[0]["type"] == "audio" else "i2i"
    from lollms_server.core.types import InputData

    with pytest.raises(BadRequestError, match=message):
        build_media_request(kind, [InputData(**item("x")), *(InputData(**i) for i in inputs)], {})


async def test_limits_on_media_parameters() -> None:
    from lollms_server.core.config import LimitsConfig
    from lollms_server.core.errors import BadRequestError
    from lollms_server.core.generation.media_inputs import build_media_request
    from lollms_server.core.types import InputData

    limits = LimitsConfig(max_image_side=512, max_steps=10)
    for parameters in ({"width": 1024}, {"steps": 11}):
        with pytest.raises(BadRequestError, match="limit"):
            build_media_request("tti", [InputData(**item("a cat"))], parameters, limits)


async def test_binding_failing_at_start_is_a_clean_500_and_others_keep_working(app_client: Any) -> None:
    async with app_client(
        bindings={
            "echo": {"type": "scripted_binding"},
            "broken": {"type": "scripted_binding", "fail_on_start": True},
        }
    ) as client:
        for _ in range(2):
            broken = await client.post(
                GEN, json={"prompt": "x", "binding_name": "broken", "model_name": "echo"}, headers=AUTH
            )
            assert broken.status_code == 500 and "failed to start" in broken.json()["error"]["message"]
            assert "secret" not in broken.text
        ok = await client.post(GEN, json={"prompt": "still here", "binding_name": "echo"}, headers=AUTH)
        assert ok.status_code == 200


async def test_hang_past_the_generation_timeout(app_client: Any) -> None:
    from tests.e2e.sse import parse_events

    async with app_client(
        resource_manager={"generation_timeout": 0.3, "pools": {"default": {"limit": 1}}}
    ) as client:
        slow = {"prompt": "a b c d e f g h", "binding_name": "echo", "parameters": {"delay": 0.2}}
        timed_out = await client.post(GEN, json=slow, headers=AUTH)
        assert timed_out.status_code == 504 and timed_out.json()["error"]["type"] == "generation_timeout"
        streamed = parse_events((await client.post(GEN, json={**slow, "stream": True}, headers=AUTH)).text)
        assert streamed[-1]["type"] == "error" and streamed[-1]["metadata"]["status"] == 504
        status = (await client.get("/api/v1/status", headers=AUTH)).json()["pools"][0]
        assert status["active"] == 0
        ok = await client.post(GEN, json={"prompt": "quick", "binding_name": "echo"}, headers=AUTH)
        assert ok.status_code == 200


async def test_a_scripted_default_personality_does_not_run_itself_again(app_client: Any) -> None:
    """Finding #5: [defaults] personality = artbot made its sub-generations re-enter artbot."""
    async with app_client(
        defaults={
            "ttt_binding": "echo",
            "ttt_model": "echo",
            "tti_binding": "paint",
            "personality": "artbot",
        },
        bindings={
            "echo": {"type": "scripted_binding"},
            "paint": {"type": "scripted_media_binding", "model_name": "steps", "steps": 1, "step_seconds": 0},
        },
    ) as client:
        response = await asyncio.wait_for(
            client.post("/api/v1/generate", json={"prompt": "a cat"}, headers=AUTH), timeout=30
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["personality"] == "artbot"
        assert [item["type"] for item in body["output"]] == ["text", "image"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {
                "messages": [
                    {"role": "assistant", "content": "", "tool_calls": [{"id": "1", "function": "x"}]}
                ]
            },
        ),
        (
            "/v1/chat/completions",
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": 5}}],
                    },
                ]
            },
        ),
        ("/v1/chat/completions", {"model": "x" * 300, "messages": [{"role": "user", "content": "hi"}]}),
        (
            "/v1/chat/completions",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": "data:" + "a" * 200 + ";base64,AAAA"}],
                    }
                ]
            },
        ),
        ("/v1/images/generations", {"model": "x" * 300, "prompt": "a cat"}),
        ("/v1/completions", {"model": "x" * 300, "prompt": "a cat"}),
    ],
)
async def test_schema_valid_v1_bodies_that_used_to_answer_500_get_400(
    app_client: Any, path: str, body: dict[str, Any]
) -> None:
    """Finding #15: each of these answered 500 internal_error with a traceback in the log."""
    async with app_client() as client:
        response = await client.post(path, json={"model": "echo", **body}, headers=AUTH)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"


async def test_a_tool_call_with_object_arguments_is_accepted(app_client: Any) -> None:
    async with app_client() as client:
        messages = [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": {"a": 1}}}],
            },
            {"role": "tool", "tool_call_id": "1", "content": "done"},
            {"role": "user", "content": "thanks"},
        ]
        body = {"model": "echo", "messages": messages}
        response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
        assert response.status_code == 200, response.text


def test_sizes_and_durations_take_ascii_digits_only() -> None:
    """``"²".isdigit()`` is true but ``int("²")`` fails: such sizes are a 400, not a 500."""
    from lollms_server.api.openai_compat.translate import size_parameters
    from lollms_server.core.errors import BadRequestError

    for size in ("²x²", "5١2x512", "x512", "512x"):
        with pytest.raises(BadRequestError):
            size_parameters(size)
    assert size_parameters("64x48") == {"width": 64, "height": 48}


LONG_STOPS = ["x" + "0123456789" * 30] * 300  # T3-03 shrunk: past the count and length bounds


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (GEN, {"prompt": "x", "binding_name": "echo", "parameters": {"stop": LONG_STOPS}}),
        (GEN, {"prompt": "x", "binding_name": "echo", "parameters": {"stop": "s" * 257}}),
        (
            "/v1/chat/completions",
            {"model": "echo", "messages": [{"role": "user", "content": "x"}], "stop": LONG_STOPS},
        ),
        ("/v1/completions", {"model": "echo", "prompt": "x", "stop": LONG_STOPS}),
        ("/api/generate", {"model": "echo", "prompt": "x", "options": {"stop": LONG_STOPS}}),
        (
            "/api/chat",
            {
                "model": "echo",
                "messages": [{"role": "user", "content": "x"}],
                "options": {"stop": LONG_STOPS},
            },
        ),
    ],
    ids=["native", "native-one-long", "v1-chat", "v1-completions", "ollama-generate", "ollama-chat"],
)
async def test_stop_lists_past_their_bounds_are_400_on_every_route(
    app_client: Any, path: str, body: dict[str, Any]
) -> None:
    """T3-03: 30,000 stops of 300 characters stalled the model's decode thread ~1 s per token."""
    async with app_client() as client:
        response = await client.post(path, json=body, headers=AUTH)
        assert response.status_code == 400, response.text
        assert "stop" in response.text
