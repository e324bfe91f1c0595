"""The official anthropic SDK (and Claude Code's own requests) against a running lollms_server
(``/v1/messages``, ``/v1/messages/count_tokens``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, AUTH, ServerProcess, running_server

anthropic = pytest.importorskip("anthropic")
jsonschema = pytest.importorskip("jsonschema")
pytestmark = pytest.mark.e2e

WEATHER = {
    "name": "get_weather",
    "description": "The weather of a city.",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
            "celsius": {"type": "boolean"},
        },
        "required": ["city", "celsius"],
        "additionalProperties": False,
    },
}
HELLO = [{"role": "user", "content": "Hello there, how are you?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_folder: Path) -> Iterator[ServerProcess]:
    llama = {"type": "llamacpp_binding", "model_name": "tiny.gguf", "n_ctx": 4096, "n_threads": 1}
    with running_server(
        tmp_path_factory.mktemp("anthropic"),
        models_folder,
        bindings={
            "echo": {"type": "scripted_binding", "model_name": "echo"},
            "slow": {"type": "scripted_binding", "model_name": "echo", "delay": 0.2},
            "solo": {"type": "scripted_binding", "model_name": "echo", "delay": 0.2, "pool": "solo"},
            "llm": llama,
            "tools": {**llama, "chat_format": "chatml-function-calling"},
        },
        defaults={"ttt_binding": "llm", "ttt_model": "tiny.gguf"},
        resource_manager={
            "pools": {
                "default": {"limit": 2, "queue_size": 16, "queue_timeout": 60},
                "solo": {"limit": 1, "queue_size": 0},  # busy: a second request is refused (503)
            }
        },
        server={"auto_install_requirements": False, "public_metrics": True},
    ) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Any:
    return anthropic.Anthropic(base_url=server.url, api_key=ADMIN_KEY, max_retries=0, timeout=120)


def events_of(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of every SSE record; each record is one ``event:`` and one ``data:``
    line, and the name repeats the data's ``type``."""
    body = response.read().decode()
    assert body.endswith("\n\n"), "the stream must end at an event boundary"
    found = []
    for block in body.split("\n\n")[:-1]:
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        name, data = lines[0][len("event: ") :], json.loads(lines[1][len("data: ") :])
        assert data["type"] == name
        found.append((name, data))
    return found


def post_stream(server: ServerProcess, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    with httpx.stream(
        "POST", server.url + "/v1/messages", json={**body, "stream": True}, headers=AUTH, timeout=120
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return events_of(response)


# ---------------------------------------------------------------- text


def test_whole_and_streamed_answers_are_equal_at_temperature_0(client: Any) -> None:
    # this SDK no longer names the sampling fields (Claude's newest models fix them): extra_body
    common = {"model": "llm/tiny.gguf", "max_tokens": 12, "messages": HELLO, "extra_body": {"temperature": 0}}
    whole = client.messages.create(**common, system="Be brief.")
    with client.messages.stream(**common, system=[{"type": "text", "text": "Be brief."}]) as stream:
        texts = "".join(stream.text_stream)
        streamed = stream.get_final_message()
    assert whole.type == "message" and whole.role == "assistant" and whole.id.startswith("msg_")
    assert [block.type for block in whole.content] == ["text"] and whole.content[0].text
    assert streamed.content[0].text == whole.content[0].text == texts
    assert whole.stop_reason == streamed.stop_reason and whole.stop_reason in ("end_turn", "max_tokens")
    assert whole.usage.output_tokens == streamed.usage.output_tokens >= 1
    total = whole.usage.input_tokens + whole.usage.cache_read_input_tokens
    assert streamed.usage.input_tokens + streamed.usage.cache_read_input_tokens == total
    # the second reads the first's prompt from the prefix cache
    assert streamed.usage.cache_read_input_tokens > 0


def test_stream_events_are_exactly_anthropics(server: ServerProcess) -> None:
    body = {"model": "llm", "max_tokens": 8, "temperature": 0, "messages": HELLO}
    events = post_stream(server, body)
    names = [name for name, _ in events]
    deltas = names.count("content_block_delta")
    assert deltas >= 1
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["role"] == "assistant"
    assert isinstance(start["usage"]["input_tokens"], int) and start["usage"]["input_tokens"] > 0
    assert events[2][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert all(
        data["index"] == 0 and data["delta"]["type"] == "text_delta"
        for name, data in events
        if name == "content_block_delta"
    )
    end = events[-2][1]
    assert end["delta"]["stop_reason"] in ("end_turn", "max_tokens") and end["usage"]["output_tokens"] >= 1
    assert end["usage"]["input_tokens"] + end["usage"]["cache_read_input_tokens"] > 0


def test_a_reasoning_models_think_is_a_thinking_block(server: ServerProcess, client: Any) -> None:
    """The echo model answers what a reasoning model would: ``<think>...</think>`` then text."""
    said = "<think> pondering this deeply </think> The answer"
    common = {"model": "echo", "max_tokens": 64, "messages": [{"role": "user", "content": said}]}
    whole = client.messages.create(**common, thinking={"type": "enabled", "budget_tokens": 1024})
    assert [block.type for block in whole.content] == ["thinking", "text"]
    assert whole.content[0].thinking.strip() == "pondering this deeply" and whole.content[0].signature == ""
    assert whole.content[1].text.strip() == "The answer"
    events = post_stream(server, common)
    starts = [
        (data["index"], data["content_block"]["type"])
        for name, data in events
        if name == "content_block_start"
    ]
    assert starts == [(0, "thinking"), (1, "text")]
    kinds = {data["delta"]["type"] for name, data in events if name == "content_block_delta"}
    assert kinds == {"thinking_delta", "text_delta"}
    with client.messages.stream(**common) as stream:
        streamed = stream.get_final_message()
    assert [block.model_dump() for block in streamed.content] == [
        block.model_dump() for block in whole.content
    ]


def test_sampling_fields_and_accepted_extras(client: Any) -> None:
    reply = client.messages.create(
        model="echo",
        max_tokens=64,
        messages=[{"role": "user", "content": "one two ## three"}],
        stop_sequences=["##"],
        extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 20},
        cache_control={"type": "ephemeral"},
        metadata={"user_id": "someone"},
        thinking={"type": "enabled", "budget_tokens": 1024},
        extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14,prompt-caching-2024-07-31"},
    )
    assert reply.content[0].text.strip() == "one two"


# ---------------------------------------------------------------- tools


def test_forced_tool_inputs_validate_against_the_schema(client: Any) -> None:
    """Random weights, but a grammar from the tool's schema: every input is valid."""
    for seed_text in ("What is the weather?", "Tell me about Rome", "Oslo please"):
        reply = client.messages.create(
            model="tools/tiny.gguf",
            max_tokens=128,
            extra_body={"temperature": 1.0},
            messages=[{"role": "user", "content": seed_text}],
            tools=[WEATHER],
            tool_choice={"type": "tool", "name": "get_weather"},
        )
        assert reply.stop_reason == "tool_use"
        [call] = [block for block in reply.content if block.type == "tool_use"]
        assert call.name == "get_weather" and call.id
        jsonschema.validate(call.input, WEATHER["input_schema"])


def test_forced_tool_streamed_as_input_json_delta(server: ServerProcess, client: Any) -> None:
    body = {
        "model": "tools/tiny.gguf",
        "max_tokens": 128,
        "temperature": 0,
        "messages": HELLO,
        "tools": [WEATHER],
        "tool_choice": {"type": "any"},  # one tool: forced
    }
    events = post_stream(server, body)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    block = events[2][1]["content_block"]
    assert block["type"] == "tool_use" and block["name"] == "get_weather" and block["input"] == {}
    delta = events[3][1]["delta"]
    assert delta["type"] == "input_json_delta"
    jsonschema.validate(json.loads(delta["partial_json"]), WEATHER["input_schema"])
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    # the SDK accumulates the same
    sdk_body = {key: value for key, value in body.items() if key != "temperature"}
    with client.messages.stream(**sdk_body, extra_body={"temperature": 0}) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "tool_use" and final.content[0].input == json.loads(delta["partial_json"])


def test_a_tool_round_trip(client: Any) -> None:
    """The echo model "calls" the tool by repeating a call; the result reaches it named by the
    call's id, and it answers (echoes) it."""
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "celsius": true}}</tool_call>'
    first = client.messages.create(
        model="echo", max_tokens=64, messages=[{"role": "user", "content": call}], tools=[WEATHER]
    )
    assert first.stop_reason == "tool_use"
    [use] = first.content
    assert use.type == "tool_use" and use.input == {"city": "Paris", "celsius": True}
    assert use.id.startswith("toolu_")
    second = client.messages.create(
        model="echo",
        max_tokens=64,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": call},
            {"role": "assistant", "content": [block.model_dump() for block in first.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"}],
            },
        ],
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].text.strip() == '<tool_result name="get_weather">sunny, 21 C</tool_result>'


def test_a_streamed_tool_turn_shows_its_text_before_the_call(server: ServerProcess, client: Any) -> None:
    """Text-protocol tools stream: the text the model writes before its call arrives as text
    deltas while it writes, then the call as a tool_use block; the SDK gets the whole answer."""
    call = {"name": "get_weather", "arguments": {"city": "Oslo", "celsius": False}}
    said = f"Let me check the weather. <tool_call>{json.dumps(call)}</tool_call>"
    common = {
        "model": "slow",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": said}],
        "tools": [WEATHER],
    }
    whole = client.messages.create(**common)
    events = post_stream(server, common)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-5:] == [
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    texts = [
        data["delta"]["text"] for name, data in events if name == "content_block_delta" and data["index"] == 0
    ]
    assert len(texts) >= 3 and "".join(texts) == "Let me check the weather."  # word by word
    assert events[-5][1]["index"] == 1 and events[-5][1]["content_block"]["type"] == "tool_use"
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    with client.messages.stream(**common) as stream:
        streamed = stream.get_final_message()

    def without_ids(message: Any) -> list[dict[str, Any]]:
        return [{k: v for k, v in block.model_dump().items() if k != "id"} for block in message.content]

    assert without_ids(streamed) == without_ids(whole)
    text_block, use = without_ids(whole)
    assert text_block["type"] == "text" and text_block["text"] == "Let me check the weather."
    assert use["type"] == "tool_use" and use["name"] == "get_weather"
    assert use["input"] == {"city": "Oslo", "celsius": False}


def test_count_tokens_equals_the_answers_input_tokens(client: Any) -> None:
    for extra in ({}, {"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "get_weather"}}):
        model = "tools/tiny.gguf" if extra else "llm/tiny.gguf"
        messages = [{"role": "user", "content": "Count these words for me please"}]
        counted = client.messages.count_tokens(model=model, system="Be brief.", messages=messages, **extra)
        reply = client.messages.create(
            model=model, system="Be brief.", messages=messages, max_tokens=16, **extra
        )
        assert counted.input_tokens > 0
        assert counted.input_tokens == reply.usage.input_tokens + reply.usage.cache_read_input_tokens


# ---------------------------------------------------------------- errors


def test_error_shapes_and_statuses(server: ServerProcess, client: Any) -> None:
    url = server.url + "/v1/messages"
    missing = httpx.post(url, json={"model": "llm", "messages": HELLO}, headers=AUTH, timeout=30)
    assert missing.status_code == 400
    body = missing.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    with pytest.raises(anthropic.AuthenticationError) as caught:
        anthropic.Anthropic(base_url=server.url, api_key="wrong-key", max_retries=0).messages.create(
            model="llm", max_tokens=4, messages=HELLO
        )
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": caught.value.body["error"]["message"]},
    }
    with pytest.raises(anthropic.NotFoundError) as missing_model:
        client.messages.create(model="nothing-here/x", max_tokens=4, messages=HELLO)
    assert missing_model.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as bad_choice:
        client.messages.create(
            model="llm",
            max_tokens=4,
            messages=HELLO,
            tools=[WEATHER],
            tool_choice={"type": "tool", "name": "nope"},
        )
    assert bad_choice.value.body["error"]["type"] == "invalid_request_error"
    unknown = httpx.post(server.url + "/v1/messages/nothing", json={}, headers=AUTH, timeout=30)
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"
    # the other families keep their shapes
    openai_shape = httpx.post(server.url + "/v1/chat/completions", json={}, headers=AUTH, timeout=30)
    assert openai_shape.status_code == 400 and "param" in openai_shape.json()["error"]


def test_a_busy_pool_is_529_overloaded_and_a_failing_model_a_500(server: ServerProcess, client: Any) -> None:
    words = " ".join(f"w{i}" for i in range(40))
    body = {
        "model": "solo",
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": words}],
    }
    with httpx.stream("POST", server.url + "/v1/messages", json=body, headers=AUTH, timeout=60) as held:
        assert held.status_code == 200
        busy = httpx.post(
            server.url + "/v1/messages", json={**body, "stream": False}, headers=AUTH, timeout=30
        )
    assert busy.status_code == 529 and "retry-after" in busy.headers
    assert busy.json()["type"] == "error" and busy.json()["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.InternalServerError) as failed:
        client.messages.create(model="echo/broken", max_tokens=4, messages=HELLO)
    assert failed.value.body["type"] == "error" and failed.value.body["error"]["type"] == "api_error"
    assert "secret" not in failed.value.body["error"]["message"]


def test_bearer_and_x_api_key_are_both_accepted(server: ServerProcess) -> None:
    reply = anthropic.Anthropic(base_url=server.url, auth_token=ADMIN_KEY, max_retries=0).messages.create(
        model="echo", max_tokens=8, messages=[{"role": "user", "content": "bearer works"}]
    )
    assert reply.content[0].text.strip() == "bearer works"


# ---------------------------------------------------------------- Claude Code


CLAUDE_CODE_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,"
    "prompt-caching-scope-2026-01-05,effort-2025-11-24",
    "x-app": "cli",
    "user-agent": "claude-cli/2.1.278 (external, cli)",
    "anthropic-dangerous-direct-browser-access": "true",
    "x-api-key": "",  # ANTHROPIC_API_KEY= (empty) with ANTHROPIC_AUTH_TOKEN set, as launchers do
    "authorization": f"Bearer {ADMIN_KEY}",
}


def claude_code_turn(model: str) -> dict[str, Any]:
    """One main-loop turn as Claude Code sends it (wire details: agent-wire-details.md §2)."""
    return {
        "model": model,
        "max_tokens": 32000,
        "stream": True,
        "temperature": 1,
        "metadata": {"user_id": "user_abc_account__session_0123"},
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "medium"},
        "system": [
            {
                "type": "text",
                "text": "x-anthropic-billing-header: cc_version=2.1.278.abc; cc_entrypoint=cli; cch=5f3a1;",
            },
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "<system-reminder>\nAs you answer, use the tools.\n</system-reminder>",
                    },
                    {"type": "text", "text": "List the files", "cache_control": {"type": "ephemeral"}},
                ],
            },
            {"role": "system", "content": "Tokens left: 190000"},
        ],
        "tools": [
            {
                "name": "Bash",
                "description": "Run a shell command.",
                "input_schema": {
                    "type": "object",
                    "properties": {"command": {"type": "string"}, "description": {"type": "string"}},
                    "required": ["command"],
                    "additionalProperties": False,
                    "$schema": "http://json-schema.org/draft-07/schema#",
                },
            },
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        ],
        "tool_choice": {"type": "auto"},
    }


def test_a_claude_code_turn_with_its_side_requests(server: ServerProcess) -> None:
    """The main turn (streamed, ``?beta=true``, a claude model name mapped to the default model),
    its ``count_tokens`` and the haiku-model title request, with Claude Code's headers."""
    with httpx.Client(base_url=server.url, headers=CLAUDE_CODE_HEADERS, timeout=120) as http:
        turn = claude_code_turn("claude-sonnet-4-5-20250929")
        counted = http.post(
            "/v1/messages/count_tokens?beta=true",
            json={key: turn[key] for key in ("model", "system", "messages", "tools")},
        )
        assert counted.status_code == 200, counted.text
        assert counted.json()["input_tokens"] > 0
        with http.stream("POST", "/v1/messages?beta=true", json=turn) as response:
            assert response.status_code == 200, response.read()
            events = events_of(response)
        names = [name for name, _ in events]
        assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
        assert events[0][1]["message"]["usage"]["input_tokens"] is not None
        indices = [data["index"] for name, data in events if name == "content_block_start"]
        assert indices == list(range(len(indices)))
        stops = [data["index"] for name, data in events if name == "content_block_stop"]
        assert stops == indices
        assert events[-2][1]["delta"]["stop_reason"] in ("end_turn", "max_tokens", "tool_use")
        # the next turn: the tool's result, Claude Code's token reminder after it
        turn["messages"] = [
            *turn["messages"],
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should list them.", "signature": "c2ln"},
                    {"type": "tool_use", "id": "toolu_01", "name": "Bash", "input": {"command": "ls"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01",
                        "content": [{"type": "text", "text": "a.txt\nb.txt"}],
                        "cache_control": {"type": "ephemeral"},
                    }
                ],
            },
            {"role": "system", "content": "Tokens left: 189000"},
        ]
        with http.stream("POST", "/v1/messages?beta=true", json=turn) as response:
            assert response.status_code == 200, response.read()
            names = [name for name, _ in events_of(response)]
        assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
        title = http.post(
            "/v1/messages?beta=true",
            json={
                "model": "claude-haiku-4-5-20251001",
                "max_tokens": 512,
                "system": [
                    {"type": "text", "text": "Summarize this coding conversation in under 50 characters."}
                ],
                "messages": [{"role": "user", "content": "List the files"}],
                "temperature": 0,
                "stream": False,
            },
        )
        assert title.status_code == 200, title.text
        assert title.json()["type"] == "message" and title.json()["content"][0]["type"] == "text"


# ---------------------------------------------------------------- slots and metrics


def active(server: ServerProcess) -> int:
    response = httpx.get(server.url + "/api/v1/status", headers=AUTH, timeout=10)
    assert response.status_code == 200
    return sum(int(pool["active"]) for pool in response.json()["pools"])


@pytest.mark.parametrize("tools", [None, [WEATHER]], ids=["text", "tool turn"])
def test_a_client_leaving_a_stream_frees_its_slot(server: ServerProcess, tools: Any) -> None:
    words = " ".join(f"w{i}" for i in range(200))  # 0.2 s a word: 40 s in all
    body: dict[str, Any] = {
        "model": "slow",
        "max_tokens": 400,
        "stream": True,
        "messages": [{"role": "user", "content": words}],
    }
    if tools:
        body["tools"] = tools
    with httpx.stream("POST", server.url + "/v1/messages", json=body, headers=AUTH, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if "text_delta" in line:
                break
        assert active(server) == 1
    left = time.monotonic()
    while active(server) != 0:
        assert time.monotonic() - left < 2.0, "slot not freed"
        time.sleep(0.05)


def test_metrics_label_the_routes(server: ServerProcess) -> None:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    assert 'route="/v1/messages"' in text and 'route="/v1/messages/count_tokens"' in text
