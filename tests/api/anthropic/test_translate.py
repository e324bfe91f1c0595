"""Anthropic Messages <-> native translation (``api.anthropic.translate``)."""

from __future__ import annotations

from typing import Any

import pytest

from lollms_server.api.anthropic import translate
from lollms_server.api.anthropic.protocol import MessagesRequest
from lollms_server.api.kit.chat import native_inputs
from lollms_server.core.errors import BadRequestError


def body(**fields: Any) -> MessagesRequest:
    return MessagesRequest(**{"model": "llm", "max_tokens": 8, **fields})


def test_system_forms_billing_header_and_late_system_messages() -> None:
    request = body(
        system=[
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1; cch=1a2b3;"},
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
        ],
        messages=[
            {"role": "system", "content": "Leading."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "system", "content": [{"type": "text", "text": "Tokens left: 900"}]},
        ],
    )
    inputs = native_inputs(translate.chat_turns(request))
    assert [(item.role, item.data) for item in inputs] == [
        ("system_context", "You are Claude Code."),
        ("system_context", "Leading."),
        ("user", "hi"),
        ("user_prompt", "<system-reminder>\nTokens left: 900\n</system-reminder>"),
    ]
    assert translate.system_text("plain") == "plain"


def test_tool_use_and_tool_result_blocks_with_images() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "aGk="}}
    request = body(
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}, image]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": ""},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "sunny"}],
                    },
                    {"type": "text", "text": "Thanks"},
                ],
            },
        ]
    )
    inputs = native_inputs(translate.chat_turns(request))
    assert [(item.type, item.role) for item in inputs] == [
        ("text", "user"),
        ("image", "input_image"),
        ("text", "assistant"),
        ("text", "user"),
        ("text", "user_prompt"),
    ]
    assert inputs[1].mime_type == "image/jpeg"
    assert inputs[2].data == (
        'Checking.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    )
    assert inputs[3].data == '<tool_result name="get_weather">sunny</tool_result>'
    assert inputs[4].data == "Thanks"


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}],
        [{"type": "video", "data": "x"}],
        [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "audio"}]}],
    ],
)
def test_unsupported_blocks_are_a_400(content: list[dict[str, Any]]) -> None:
    with pytest.raises(BadRequestError):
        translate.chat_turns(body(messages=[{"role": "user", "content": content}]))


def test_a_conversation_needs_a_user_message() -> None:
    with pytest.raises(BadRequestError):
        translate.chat_turns(body(messages=[{"role": "system", "content": "only system"}]))


def test_tools_and_tool_choice() -> None:
    request = body(
        messages=[{"role": "user", "content": "x"}],
        tools=[
            {"name": "get_weather", "description": "d", "input_schema": {"type": "object"}},
            {"type": "web_search_20250305", "name": "web_search"},  # a server tool: ignored
        ],
    )
    tools = translate.offered_tools(request.tools)
    assert tools == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object"}},
        }
    ]
    assert translate.tool_choice(request, tools) == ("auto", False)
    for choice, expected in (
        ({"type": "any"}, ("get_weather", False)),
        ({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}, ("get_weather", True)),
        ({"type": "none"}, ("none", False)),
    ):
        assert translate.tool_choice(request.model_copy(update={"tool_choice": choice}), tools) == expected
    for bad in ({"type": "tool", "name": "nope"}, {"type": "required"}):
        with pytest.raises(BadRequestError):
            translate.tool_choice(request.model_copy(update={"tool_choice": bad}), tools)


def test_parameters_usage_and_stop_reasons() -> None:
    request = body(messages=[{"role": "user", "content": "x"}], temperature=0, top_k=5, stop_sequences=["##"])
    assert translate.parameters(request) == {"max_tokens": 8, "temperature": 0, "top_k": 5, "stop": ["##"]}
    assert translate.usage({"prompt_tokens": 10, "cached_tokens": 7, "completion_tokens": 3}) == {
        "input_tokens": 3,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 7,
        "output_tokens": 3,
    }
    assert [translate.stop_reason(reason) for reason in ("length", "tool_calls", "stop", None)] == [
        "max_tokens",
        "tool_use",
        "end_turn",
        "end_turn",
    ]


def test_error_shape_and_statuses() -> None:
    server_body = {"error": {"type": "service_unavailable", "message": "busy"}, "detail": "busy"}
    assert translate.error_shape(503, server_body) == (
        529,
        {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
    )
    assert translate.error_shape(401, {"detail": "no key"})[1]["error"]["type"] == "authentication_error"
    assert translate.error_shape(404, None) == (
        404,
        {"type": "error", "error": {"type": "not_found_error", "message": "Request failed."}},
    )
    assert translate.error_shape(422, {})[1]["error"]["type"] == "invalid_request_error"
    assert translate.error_shape(502, {})[1]["error"]["type"] == "api_error"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>a b</think>\n\nHello", ("a b", "Hello")),
        ("  Hello <think>x</think>", (None, "  Hello <think>x</think>")),
        ("<think>cut by max_tokens", ("cut by max_tokens", "")),
        ("<thi", (None, "<thi")),
        ("", (None, "")),
    ],
)
def test_thinking_is_split_the_same_whole_or_piece_by_piece(
    text: str, expected: tuple[str | None, str]
) -> None:
    assert translate.split_thinking(text) == expected
    for size in (1, 2, 3, 5):
        splitter = translate.ThinkingSplitter()
        pieces = [
            part for start in range(0, len(text), size) for part in splitter.push(text[start : start + size])
        ]
        pieces += splitter.flush()
        thinking = "".join(piece for kind, piece in pieces if kind == "thinking")
        text_part = "".join(piece for kind, piece in pieces if kind == "text")
        assert ((thinking if splitter.thought else None), text_part) == expected


@pytest.mark.parametrize(
    ("raw", "final"),
    [
        ('  Let me look.\n<tool_call>{"name": "a", "arguments": {}}</tool_call>\nDone', "Let me look.\nDone"),
        ("no call at all  ", "no call at all"),
        ("a <tool_cal b", "a <tool_cal b"),  # looked like a call, was not
        ("<tool_call>{broken</tool_call>", "<tool_call>{broken</tool_call>"),
    ],
)
def test_text_shown_before_calls_is_always_the_start_of_the_final_text(raw: str, final: str) -> None:
    for size in (1, 2, 4, 7):
        before = translate.TextBeforeCalls()
        shown = ""
        for start in range(0, len(raw), size):
            shown += before.push(raw[start : start + size])
            assert final.startswith(shown), (shown, final)
    assert translate.turn_text(final) == (None, final)
