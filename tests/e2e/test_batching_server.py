"""End to end: a real server whose llama.cpp instance decodes its requests together (continuous
batching), reads shared prefixes from its cache and constrains output to a JSON schema."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AUTH, ServerProcess, running_server
from tests.e2e.sse import aiter_events, parse_events

pytestmark = pytest.mark.e2e

LLM = {"binding_name": "llm", "model_name": "tiny.gguf"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_folder: Path) -> Iterator[ServerProcess]:
    pools = {"default": {"limit": 4, "queue_size": 16, "queue_timeout": 60}}
    bindings = {
        "llm": {
            "type": "llamacpp_binding",
            "model_name": "tiny.gguf",
            "n_ctx": 1024,
            "n_threads": 2,
            "parallel": 4,
        }
    }
    with running_server(
        tmp_path_factory.mktemp("batching"),
        models_folder,
        resource_manager={"pools": pools},
        bindings=bindings,
    ) as s:
        yield s


def body(prompt: str, stream: bool = True, **parameters: Any) -> dict[str, Any]:
    return {
        "input_data": [{"type": "text", "role": "user_prompt", "data": prompt}],
        "stream": stream,
        "parameters": parameters,
        **LLM,
    }


async def streamed(client: httpx.AsyncClient, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    async with client.stream("POST", "/api/v1/generate", json=request) as response:
        assert response.status_code == 200
        text = ""
        async for event in aiter_events(response):
            if event["type"] == "chunk":
                text += event["content"]
            elif event["type"] == "final":
                return text, event["content"][0]["metadata"]
            elif event["type"] == "error":
                raise AssertionError(event)
    raise AssertionError("no final event")


async def test_four_clients_are_decoded_together_each_as_if_alone(server: ServerProcess) -> None:
    requests = [
        body(f"client {index} asks", max_tokens=150, ignore_eos=True, seed=index, temperature=0.9)
        for index in range(4)
    ]
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=120) as client:
        alone = [await streamed(client, request) for request in requests]
        together = await asyncio.gather(*(streamed(client, request) for request in requests))
    for (text, _), (batched, metadata) in zip(alone, together, strict=True):
        assert batched == text and metadata["usage"]["completion_tokens"] == 150
    timings = [metadata["sequence_timings"] for _, metadata in together]
    assert max(item["first_token"] for item in timings) < min(item["finished"] for item in timings)


def test_a_shared_prefix_is_read_from_the_cache(server: ServerProcess) -> None:
    history = "We talked about the mountains, the rivers, the sea and the weather there. " * 5
    first = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "llm", "messages": [{"role": "user", "content": history}], "max_tokens": 4},
        headers=AUTH,
        timeout=60,
    ).json()
    follow_up = {
        "model": "llm",
        "max_tokens": 4,
        "messages": [
            {"role": "user", "content": history},
            {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
            {"role": "user", "content": "And then?"},
        ],
    }
    second = httpx.post(server.url + "/v1/chat/completions", json=follow_up, headers=AUTH, timeout=60)
    assert second.status_code == 200, second.text
    usage = second.json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] >= first["usage"]["prompt_tokens"] // 2
    native = httpx.post(
        server.url + "/api/v1/generate", json=body(history, stream=False, max_tokens=2), headers=AUTH
    )
    assert native.json()["output"][0]["metadata"]["usage"]["cached_tokens"] > 0
    metrics = httpx.get(server.url + "/metrics", headers=AUTH, timeout=10).text
    assert 'lollms_prompt_tokens_total{binding="llm",cache="hit"}' in metrics


async def test_a_second_user_reads_a_busy_users_system_prompt_from_its_cells(server: ServerProcess) -> None:
    """The second of two users with one long system prompt, arriving while the first generates,
    gets its prompt from the first's cells (usage cached_tokens) and the answer it gets alone;
    /metrics counts the engine's steps, decode seconds and copied tokens."""
    system = " ".join(f"house rule {index}: answer the fox politely." for index in range(10))

    def chat(question: str, stream: bool, **parameters: Any) -> dict[str, Any]:
        request = body(question, stream=stream, temperature=0, ignore_eos=True, **parameters)
        request["input_data"].insert(0, {"type": "text", "role": "system_prompt", "data": system})
        return request

    async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=120) as client:
        alone = await client.post(
            "/api/v1/generate", json=chat("the second question", False, max_tokens=12, cache_prompt=False)
        )
        assert alone.status_code == 200, alone.text
        first_generating = asyncio.Event()

        async def first() -> None:
            async with client.stream(
                "POST", "/api/v1/generate", json=chat("the first question", True, max_tokens=300)
            ) as response:
                async for event in aiter_events(response):
                    if event["type"] == "chunk":
                        first_generating.set()

        task = asyncio.create_task(first())
        await first_generating.wait()
        second = await client.post("/api/v1/generate", json=chat("the second question", False, max_tokens=12))
        assert not task.done()  # the first still generates
        await task
        metrics = (await client.get("/metrics")).text
    assert second.status_code == 200, second.text
    output, expected = second.json()["output"][0], alone.json()["output"][0]
    usage = output["metadata"]["usage"]
    assert usage["prompt_tokens"] > 100 and expected["metadata"]["usage"]["cached_tokens"] == 0
    assert usage["cached_tokens"] >= 0.8 * usage["prompt_tokens"]
    assert output["data"] == expected["data"]
    counters = {
        line.split("{")[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("lollms_engine_") and 'model="tiny.gguf"' in line
    }
    assert counters["lollms_engine_steps_total"] > 0 and counters["lollms_engine_decode_seconds_total"] > 0
    assert counters["lollms_engine_shared_tokens_total"] >= usage["cached_tokens"]


SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA}},
        {"type": "json_object"},
    ],
)
def test_response_format_gives_valid_json_even_from_random_weights(
    server: ServerProcess, response_format: dict[str, Any]
) -> None:
    for seed in range(3):
        response = httpx.post(
            server.url + "/v1/chat/completions",
            json={
                "model": "llm",
                "messages": [{"role": "user", "content": "the weather?"}],
                "response_format": response_format,
                "max_tokens": 300,
                "seed": seed,
            },
            headers=AUTH,
            timeout=60,
        )
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        # the schema's grammar is bounded (city at most 20 characters): it always closes well
        # within 300 tokens; an open object could run on, but these seeds of the seeded tiny
        # model close theirs (each ends "stop"; most with "{}")
        assert choice["finish_reason"] == "stop", choice
        value = json.loads(choice["message"]["content"])
        assert isinstance(value, dict)
        if response_format["type"] == "json_schema":
            assert set(value) == {"city", "sunny"} and isinstance(value["sunny"], bool)


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "bogus"}}}},
            "json_schema",
        ),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ],
)
def test_invalid_response_formats_are_400(server: ServerProcess, payload: dict[str, Any], param: str) -> None:
    response = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "llm", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4, **payload},
        headers=AUTH,
        timeout=60,
    )
    assert response.status_code == 400, response.text
    assert param in (response.json()["error"]["param"] or "")


def test_native_grammar_and_its_errors(server: ServerProcess) -> None:
    grammar = 'root ::= "answer: " ("left" | "right")'
    response = httpx.post(
        server.url + "/api/v1/generate",
        json=body("go", stream=False, grammar=grammar, max_tokens=20),
        headers=AUTH,
    )
    assert response.status_code == 200, response.text
    assert response.json()["output"][0]["data"] in ("answer: left", "answer: right")
    bad = httpx.post(
        server.url + "/api/v1/generate",
        json=body("go", stream=False, grammar="root ::= (", max_tokens=5),
        headers=AUTH,
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "parameters.grammar"
    # streamed, the stream has begun (queue and load events): the error is its last event
    events = parse_events(
        httpx.post(
            server.url + "/api/v1/generate",
            json=body("go", stream=True, json_schema={"type": 7}, max_tokens=5),
            headers=AUTH,
        ).text
    )
    assert events[-1]["type"] == "error" and events[-1]["metadata"]["status"] == 400
