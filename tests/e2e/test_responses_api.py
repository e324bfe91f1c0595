"""OpenAI's Responses API (/v1/responses) with the official openai SDK and raw HTTP, against a
running lollms_server on the tiny models: the scripted echo binding (answers that end, exact
event sequences, tool calls it echoes) and the tiny llama.cpp model (random weights, grammars,
the prefix cache)."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.conftest import ADMIN_KEY, AUTH, GOOD_KEY, ServerProcess, running_server

openai = pytest.importorskip("openai")
zstandard = pytest.importorskip("zstandard")
pytestmark = pytest.mark.e2e

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather of a city.",
    "strict": True,
    "parameters": {
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]}, "days": {"type": "integer"}},
        "required": ["city", "days"],
        "additionalProperties": False,
    },
}
TEXT_EVENTS = ["response.output_text.delta"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_folder: Path) -> Iterator[ServerProcess]:
    slow_echo = {"type": "scripted_binding", "delay": 0.2}  # a word every 0.2 s
    with running_server(
        tmp_path_factory.mktemp("responses"), models_folder, bindings={"slow_echo": slow_echo}
    ) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Any:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=120)


def raw_events(response: httpx.Response) -> list[dict[str, Any]]:
    """The events of a whole SSE body; each is ``event: <type>`` then ``data: <json>`` of that type."""
    events = []
    for block in response.text.split("\n\n"):
        if not block:
            continue
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), block
        event = json.loads(data[len("data: ") :])
        assert event["type"] == name[len("event: ") :]
        events.append(event)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    return events


def pool_active(server: ServerProcess) -> int:
    found = httpx.get(server.url + "/api/v1/status", headers=AUTH, timeout=10).json()
    return int(found["pools"][0]["active"])


def streamed(client: Any, **body: Any) -> tuple[list[Any], Any]:
    """(every event, the response of the terminal event) of a streamed create."""
    events = list(client.responses.create(stream=True, **body))
    assert events[-1].type in ("response.completed", "response.incomplete", "response.failed")
    return events, events[-1].response


def test_whole_and_streamed_text_are_equal_at_temperature_0(client: Any) -> None:
    body = {"model": "llm/tiny.gguf", "input": "Hello there", "temperature": 0, "max_output_tokens": 12}
    whole = client.responses.create(**body)
    events, final = streamed(client, **body)
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert whole.output_text and whole.output_text == deltas == final.output_text
    assert whole.usage.input_tokens == final.usage.input_tokens > 0
    assert whole.usage.output_tokens == final.usage.output_tokens
    assert whole.status in ("completed", "incomplete") and whole.object == "response"


def test_an_auto_turn_streams_token_by_token_as_its_whole_answer(client: Any) -> None:
    """Streamed, the tools are taught in the same system turn as the whole answer's tool loop."""
    body = {
        "model": "llm/tiny.gguf",
        "input": "Hi",
        "tools": [WEATHER],
        "temperature": 0,
        "max_output_tokens": 12,
    }
    whole = client.responses.create(**body)
    events, final = streamed(client, **body)
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == whole.output_text == final.output_text
    assert whole.usage.input_tokens == final.usage.input_tokens


def test_the_stream_events_exactly(server: ServerProcess, client: Any) -> None:
    body = {"model": "echo", "input": "one two three", "stream": True, "store": False}
    response = httpx.post(server.url + "/v1/responses", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = raw_events(response)
    assert [event["type"] for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *TEXT_EVENTS * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    done = events[-1]["response"]
    assert done["status"] == "completed" and done["store"] is False
    assert done["output"][0]["content"][0]["text"] == "one two three "
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    with client.responses.stream(model="echo", input="four five") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert final.output_text == "four five " and kinds[-1] == "response.completed"


def test_a_forced_function_call_validates_against_its_schema(client: Any) -> None:
    body = {"model": "llm/tiny.gguf", "input": "Weather?", "tools": [WEATHER], "max_output_tokens": 120}
    body["tool_choice"] = {"type": "function", "name": "get_weather"}
    for seed in (1, 2, 3):
        whole = client.responses.create(temperature=1, extra_body={"seed": seed}, **body)
        (call,) = whole.output
        assert call.type == "function_call" and call.name == "get_weather" and call.call_id
        if whole.status == "completed":
            jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
            break
    else:
        pytest.fail("no forced call finished within 120 tokens")
    events, final = streamed(client, **body)
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert deltas == done.arguments == final.output[0].arguments
    jsonschema.validate(json.loads(done.arguments), WEATHER["parameters"])
    assert "response.content_part.added" not in [event.type for event in events]


def test_auto_tool_calls_come_back_as_function_and_custom_calls(client: Any) -> None:
    """The echo binding answers with the user's text: a tool call in the server's protocol."""
    apply_patch = {
        "type": "custom",
        "name": "apply_patch",
        "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"},
    }
    namespace = {
        "type": "namespace",
        "name": "mcp_files",
        "description": "Files.",
        "tools": [{"type": "function", "name": "read", "parameters": {"type": "object"}}],
    }
    tools = [WEATHER, apply_patch, namespace, {"type": "web_search"}, {"type": "local_shell"}]
    said = '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome", "days": 2}}</tool_call>'
    reply = client.responses.create(model="echo", input=said, tools=tools)
    (call,) = reply.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Rome", "days": 2}
    patch = '<tool_call>{"name": "apply_patch", "arguments": {"input": "*** Begin Patch"}}</tool_call>'
    reply = client.responses.create(model="echo", input=patch, tools=tools)
    assert reply.output[0].type == "custom_tool_call" and reply.output[0].input == "*** Begin Patch"
    member = '<tool_call>{"name": "mcp_files.read", "arguments": {"path": "a"}}</tool_call>'
    events, final = streamed(client, model="echo", input=member, tools=tools)
    call = final.output[0]
    assert call.type == "function_call" and call.name == "read" and call.namespace == "mcp_files"
    assert [e.type for e in events][2:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]


def test_a_tool_round_trip_reaches_the_model(client: Any) -> None:
    tools = [WEATHER]
    call = {
        "type": "function_call",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city": "Oslo", "days": 1}',
    }
    output = {
        "type": "function_call_output",
        "call_id": "call_1",
        "output": [{"type": "input_text", "text": "sunny 22C"}],
    }
    history = [{"role": "user", "content": "Weather in Oslo?"}, call, output]
    reply = client.responses.create(model="echo", input=history, tools=tools, instructions="Be brief.")
    assert reply.output_text.split() == ["<tool_result", 'name="get_weather">sunny', "22C</tool_result>"]
    string_output = [*history[:2], {**output, "output": "cloudy"}]
    reply = client.responses.create(model="echo", input=string_output, tools=tools)
    assert "cloudy" in reply.output_text
    real = client.responses.create(model="llm/tiny.gguf", input=history, tools=tools, max_output_tokens=8)
    assert real.usage.input_tokens > 0 and real.status in ("completed", "incomplete")


def test_input_tokens_equal_the_answer_s_input_tokens(client: Any) -> None:
    for extra in ({}, {"tools": [WEATHER]}, {"tools": [WEATHER], "tool_choice": "required"}):
        body = {"model": "llm/tiny.gguf", "input": "Count me", "instructions": "You count.", **extra}
        counted = client.responses.input_tokens.count(**body)
        answer = client.responses.create(max_output_tokens=4, **body)
        assert counted.object == "response.input_tokens"
        assert counted.input_tokens == answer.usage.input_tokens > 0, extra


def test_error_shapes(server: ServerProcess, client: Any) -> None:
    with pytest.raises(openai.NotFoundError) as unknown_model:
        client.responses.create(model="no-such-binding", input="hi")
    assert unknown_model.value.body["type"] == "not_found_error"
    with pytest.raises(openai.BadRequestError) as bad_role:
        client.responses.create(model="echo", input=[{"role": "robot", "content": "hi"}])
    assert bad_role.value.body["param"] == "input[0].role"
    with pytest.raises(openai.BadRequestError):
        client.responses.create(
            model="echo", input="hi", tools=[WEATHER], tool_choice={"type": "function", "name": "nope"}
        )
    with pytest.raises(openai.BadRequestError):  # a schema error: 400 in OpenAI's shape, not 422
        client.responses.create(model="echo", input="hi", max_output_tokens=0)
    bad = httpx.post(
        server.url + "/v1/responses",
        content=b"{not json",
        headers={**AUTH, "content-type": "application/json"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_a_client_that_leaves_frees_its_slot(server: ServerProcess) -> None:
    body = {
        "model": "llm/slow.gguf",
        "input": "Talk",
        "stream": True,
        "max_output_tokens": 4000,
        "temperature": 1,
    }
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as http:
        with http.stream("POST", "/v1/responses", json=body) as response:
            deltas = 0
            for line in response.iter_lines():
                if line == "event: response.output_text.delta":
                    deltas += 1
                    if deltas == 3:
                        assert pool_active(server) == 1
                        break
    left = time.monotonic()
    while pool_active(server) != 0:
        assert time.monotonic() - left < 2.0, "slot not freed"
        time.sleep(0.02)


def test_previous_response_id_continues_from_the_prefix_cache(server: ServerProcess, client: Any) -> None:
    first = client.responses.create(
        model="llm/tiny.gguf", input="Tell me a story", temperature=0, max_output_tokens=8
    )
    second = client.responses.create(
        model="llm/tiny.gguf",
        previous_response_id=first.id,
        input="And then?",
        temperature=0,
        max_output_tokens=8,
    )
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens > 0
    assert client.responses.retrieve(first.id).output_text == first.output_text
    with pytest.raises(openai.NotFoundError) as unknown:
        client.responses.create(model="llm/tiny.gguf", previous_response_id="resp_nope", input="x")
    assert unknown.value.status_code == 404 and unknown.value.body["type"] == "not_found_error"
    other = openai.OpenAI(base_url=server.url + "/v1", api_key=GOOD_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):  # another key's response is nobody's
        other.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model="echo", previous_response_id=first.id, input="x")
    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)
    unstored = client.responses.create(model="echo", input="a b", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_the_conversation_of_a_previous_response_is_the_input_s_prefix(client: Any) -> None:
    first = client.responses.create(model="echo", input="alpha beta", instructions="Old rules.")
    second = client.responses.create(model="echo", previous_response_id=first.id, input="gamma")
    assert second.output_text == "gamma "
    tools = [WEATHER]
    said = '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome", "days": 2}}</tool_call>'
    asked = client.responses.create(model="echo", input=said, tools=tools)
    result = {"type": "function_call_output", "call_id": asked.output[0].call_id, "output": "rainy"}
    answered = client.responses.create(
        model="echo", previous_response_id=asked.id, input=[result], tools=tools
    )
    assert answered.output_text.split() == ["<tool_result", 'name="get_weather">rainy</tool_result>']


@pytest.mark.parametrize("encoding", ["zstd", "gzip"])
def test_compressed_bodies_and_a_decompression_bomb(server: ServerProcess, encoding: str) -> None:
    def pack(data: bytes) -> bytes:
        return zstandard.ZstdCompressor().compress(data) if encoding == "zstd" else gzip.compress(data)

    headers = {**AUTH, "content-type": "application/json", "content-encoding": encoding}
    body = json.dumps({"model": "echo", "input": "packed words", "store": False}).encode()
    answer = httpx.post(server.url + "/v1/responses", content=pack(body), headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["output"][0]["content"][0]["text"] == "packed words "
    bomb = pack(b'{"model": "echo", "input": "' + b" " * (64 * 1024 * 1024) + b'"}')
    assert len(bomb) < 1024 * 1024
    refused = httpx.post(server.url + "/v1/responses", content=bomb, headers=headers, timeout=60)
    assert refused.status_code == 413, refused.text
    assert refused.json()["error"]["type"] == "payload_too_large"
    broken = httpx.post(server.url + "/v1/responses", content=b"not packed", headers=headers, timeout=60)
    assert broken.status_code == 400


CODEX_HEADERS = {
    "authorization": f"Bearer {ADMIN_KEY}",
    "openai-beta": "responses=experimental",
    "originator": "codex_cli_rs",
    "user-agent": "codex_cli_rs/0.160.0 (Debian 12; x86_64) xterm-256color",
    "version": "0.160.0",
    "session_id": "0199a213-81c0-7800-8aa1-bbab2a035a53",
    "conversation_id": "0199a213-81c0-7800-8aa1-bbab2a035a53",
    "accept": "text/event-stream",
    "content-type": "application/json",
    "content-encoding": "zstd",
}
APPLY_PATCH_GRAMMAR = (
    'start: begin_patch hunk+ end_patch\nbegin_patch: "*** Begin Patch" LF\nend_patch: "*** End Patch" LF?\n'
)


def codex_turn(user_text: str) -> dict[str, Any]:
    """One turn as Codex CLI sends it over HTTP (agent-wire-details.md §3)."""
    return {
        "model": "echo",
        "instructions": "You are Codex, a coding agent based on GPT-5.",
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "<permissions>workspace-write</permissions>"}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "<environment_context>cwd=/repo</environment_context>"}
                ],
            },
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": user_text}]},
        ],
        "tools": [
            {
                "type": "function",
                "name": "shell",
                "description": "Runs a command.",
                "strict": False,
                "parameters": {
                    "type": "object",
                    "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                    "required": ["command"],
                    "additionalProperties": False,
                },
            },
            {
                "type": "custom",
                "name": "apply_patch",
                "description": "Edit files.",
                "format": {"type": "grammar", "syntax": "lark", "definition": APPLY_PATCH_GRAMMAR},
            },
            {
                "type": "namespace",
                "name": "mcp__docs__",
                "description": "Docs server.",
                "tools": [
                    {
                        "type": "function",
                        "name": "search",
                        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
                    }
                ],
            },
            {"type": "web_search", "external_web_access": False},
            {"type": "local_shell"},
            {"type": "image_generation", "output_format": "png"},
            {"type": "tool_search"},
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0199a213-81c0-7800-8aa1-bbab2a035a53",
        "text": {"verbosity": "medium"},
    }


def test_a_codex_turn_as_codex_sends_it(server: ServerProcess) -> None:
    packed = zstandard.ZstdCompressor().compress(json.dumps(codex_turn("fix the bug please")).encode())
    answer = httpx.post(server.url + "/v1/responses", content=packed, headers=CODEX_HEADERS, timeout=60)
    assert answer.status_code == 200, answer.text
    events = raw_events(answer)
    assert events[-1]["type"] == "response.completed"
    response = events[-1]["response"]
    assert response["output"][0]["content"][0]["text"] == "fix the bug please "
    assert response["store"] is False and response["usage"]["output_tokens"] >= 1
    patch_text = "*** Begin Patch\n*** End Patch"
    patch = (
        f'<tool_call>{{"name": "apply_patch", "arguments": {json.dumps({"input": patch_text})}}}</tool_call>'
    )
    packed = zstandard.ZstdCompressor().compress(json.dumps(codex_turn(patch)).encode())
    events = raw_events(
        httpx.post(server.url + "/v1/responses", content=packed, headers=CODEX_HEADERS, timeout=60)
    )
    (item,) = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert item["type"] == "custom_tool_call" and item["name"] == "apply_patch"
    assert item["input"].split() == ["***", "Begin", "Patch", "***", "End", "Patch"]  # the echo's spacing
    assert [e["type"] for e in events][-2:] == ["response.output_item.done", "response.completed"]
    probe = {"model": "echo", "input": [], "max_output_tokens": 1, "store": False, "stream": True}
    assert (
        httpx.post(
            server.url + "/v1/responses",
            json=probe,
            headers=CODEX_HEADERS | {"content-encoding": "identity"},
            timeout=60,
        ).status_code
        == 200
    )


def test_cancel_stops_a_streamed_response_and_metrics_name_the_route(server: ServerProcess) -> None:
    body = {
        "model": "llm/slow.gguf",
        "input": "Talk",
        "stream": True,
        "max_output_tokens": 4000,
        "temperature": 1,
    }
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as http:
        with http.stream("POST", "/v1/responses", json=body) as response:
            lines = response.iter_lines()
            created = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
            response_id = created["response"]["id"]
            assert next(line for line in lines if line == "event: response.output_text.delta")
            cancelled = httpx.post(
                f"{server.url}/v1/responses/{response_id}/cancel", headers=AUTH, timeout=10
            )
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
            last = [json.loads(line[6:]) for line in lines if line.startswith("data: ")][-1]
    assert last["type"] == "response.failed" and last["response"]["status"] == "cancelled"
    left = time.monotonic()
    while pool_active(server) != 0:
        assert time.monotonic() - left < 2.0, "slot not freed"
        time.sleep(0.02)
    done = httpx.post(server.url + "/v1/responses", json={"model": "echo", "input": "x"}, headers=AUTH).json()
    finished = httpx.post(f"{server.url}/v1/responses/{done['id']}/cancel", headers=AUTH, timeout=10)
    assert finished.status_code == 400
    assert httpx.post(f"{server.url}/v1/responses/resp_nope/cancel", headers=AUTH).status_code == 404
    counted = httpx.post(
        server.url + "/v1/responses/input_tokens", json={"model": "echo", "input": "x"}, headers=AUTH
    )
    assert counted.status_code == 200
    metrics = httpx.get(server.url + "/metrics", headers=AUTH, timeout=10).text
    assert 'route="/v1/responses"' in metrics and 'route="/v1/responses/input_tokens"' in metrics


def wait_for_status(client: Any, response_id: str, done: tuple[str, ...]) -> Any:
    deadline = time.monotonic() + 60
    while (found := client.responses.retrieve(response_id)).status not in done:
        assert time.monotonic() < deadline, found.status
        time.sleep(0.1)
    return found


def test_background_responses_run_as_jobs(server: ServerProcess, client: Any) -> None:
    queued = client.responses.create(model="echo", input="in the back", background=True)
    assert queued.status in ("queued", "in_progress") and queued.background is True
    done = wait_for_status(client, queued.id, ("completed",))
    assert done.output_text == "in the back " and done.background is True
    assert client.responses.retrieve(queued.id).output[0].id == done.output[0].id  # built once
    job = httpx.get(f"{server.url}/api/v1/jobs/{queued.id}", headers=AUTH, timeout=10).json()
    assert job["status"] == "succeeded"
    follow = client.responses.create(model="echo", previous_response_id=queued.id, input="next")
    assert follow.output_text == "next "
    said = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo", "days": 3}}</tool_call>'
    called = client.responses.create(model="echo", input=said, tools=[WEATHER], background=True)
    call = wait_for_status(client, called.id, ("completed",)).output[0]
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Oslo", "days": 3}
    running = client.responses.create(model="slow_echo/echo", input="word " * 200, background=True)
    wait_for_status(client, running.id, ("in_progress",))
    assert client.responses.cancel(running.id).status == "cancelled"
    assert wait_for_status(client, running.id, ("cancelled", "failed")).status == "cancelled"
    client.responses.delete(running.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(running.id)


HOSTILE = [
    {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": 5}]},
    {"input": [{"type": "function_call_output", "call_id": "c", "output": 5}]},
    {"input": [{"role": "assistant", "content": [5]}]},
    {"input": [{"role": "user", "content": {"text": "x"}}]},
    {"input": "x", "tools": [{"type": "function"}]},
    {"input": "x", "tools": [{"type": "namespace", "name": "n", "tools": "x"}, "x"]},
    {"input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function"}},
    {"input": "x", "text": {"format": {"type": "json_schema", "schema": "no"}}},
    {"input": "x", "text": {"format": {"type": "xml"}}},
    {"input": "x", "tools": [{"type": "function", "name": "f" * 300}]},
    {"input": "x", "previous_response_id": "../../etc/passwd"},
]
LLAMA_ONLY = [  # the echo binding reads no schema: llama.cpp's grammar converter refuses these
    {"input": "x", "text": {"format": {"type": "json_schema", "schema": {"type": "nope"}}}},
    {
        "input": "x",
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "nope"}}],
        "tool_choice": "required",
    },
]


@pytest.mark.parametrize(
    ("models", "body"),
    [(("echo", "llm/tiny.gguf"), body) for body in HOSTILE]
    + [(("llm/tiny.gguf",), body) for body in LLAMA_ONLY],
)
def test_hostile_bodies_get_a_4xx_in_openai_s_shape(
    server: ServerProcess, models: tuple[str, ...], body: dict[str, Any]
) -> None:
    for model in models:
        answer = httpx.post(
            server.url + "/v1/responses", json={"model": model, **body}, headers=AUTH, timeout=60
        )
        assert 400 <= answer.status_code < 500, (model, answer.status_code, answer.text)
        assert answer.json()["error"]["message"]


def test_a_lone_surrogate_is_a_400(server: ServerProcess) -> None:
    raw = b'{"model": "echo", "input": [{"role": "user", "content": "\\ud800"}]}'
    answer = httpx.post(
        server.url + "/v1/responses", content=raw, headers={**AUTH, "content-type": "application/json"}
    )
    assert answer.status_code == 400 and "surrogate" in answer.json()["error"]["message"]
