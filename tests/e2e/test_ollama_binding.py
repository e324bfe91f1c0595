"""ollama_binding against a local fake of Ollama's API (Ollama itself cannot be installed here)."""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import AUTH, REPO, ServerProcess, free_port, running_server
from tests.e2e.sse import parse_events

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fake_ollama() -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    fake = ServerProcess(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.fixtures.fake_ollama:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        url,
        url + "/api/tags",
        cwd=REPO,
    )
    try:
        fake.wait_ready()
        yield url
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, models_folder: Path, fake_ollama: str
) -> Iterator[ServerProcess]:
    with running_server(
        tmp_path_factory.mktemp("ollama"),
        models_folder,
        bindings={
            "ollama": {"type": "ollama_binding", "base_url": fake_ollama, "keep_alive": "1m", "pool": "fast"}
        },
        resource_manager={
            "housekeeping_interval": 0.1,
            "pools": {"default": {"limit": 1}, "fast": {"limit": 2, "idle_unload_seconds": 0.5}},
        },
    ) as process:
        yield process


def generate(server: ServerProcess, prompt: str, **extra: object) -> httpx.Response:
    body = {"prompt": prompt, "binding_name": "ollama", "model_name": "tiny", **extra}
    return httpx.post(server.url + "/api/v1/generate", json=body, headers=AUTH, timeout=60)


def test_chat_streamed_and_whole(server: ServerProcess) -> None:
    whole = generate(server, "one two three four", parameters={"max_tokens": 3})
    output = whole.json()["output"][0]
    assert output["data"] == "one two three " and output["metadata"]["finish_reason"] == "length"
    assert output["metadata"]["usage"] == {"prompt_tokens": 4, "completion_tokens": 3}
    events = parse_events(generate(server, "alpha beta", stream=True, parameters={"stop": ["beta"]}).text)
    assert [event["type"] for event in events] == ["info", "chunk", "final"]
    assert events[-1]["content"][0]["data"] == "alpha "


def test_models_info_and_errors(server: ServerProcess, fake_ollama: str) -> None:
    models = httpx.get(server.url + "/api/v1/list_available_models/ollama", headers=AUTH).json()["models"]
    assert {model["name"] for model in models} == {"tiny:latest", "embedder:latest"}
    info = httpx.get(
        server.url + "/api/v1/get_model_info/ollama", params={"model_name": "tiny"}, headers=AUTH
    )
    assert info.json()["context_size"] == 4096
    missing = generate(server, "x", model_name="ghost")
    assert missing.status_code == 404 and "Ollama answered 404" in missing.json()["error"]["message"]
    failing = parse_events(generate(server, "FAIL_MIDSTREAM now", stream=True).text)
    assert [event["type"] for event in failing] == ["info", "chunk", "error"]
    assert generate(server, "still fine").status_code == 200


def test_vision_images_and_idle_unload(server: ServerProcess, fake_ollama: str) -> None:
    pixel = base64.b64encode(
        bytes.fromhex(
            "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
            "1f15c4890000000d49444154789c6360000002000154a24f5c0000000049454e44ae426082"
        )
    ).decode()
    response = httpx.post(
        server.url + "/api/v1/generate",
        headers=AUTH,
        timeout=60,
        json={
            "binding_name": "ollama",
            "model_name": "tiny",
            "input_data": [
                {"type": "text", "role": "user_prompt", "data": "what is this"},
                {"type": "image", "role": "input_image", "data": pixel, "mime_type": "image/png"},
            ],
        },
    )
    assert response.json()["output"][0]["data"].strip().endswith("[1 image(s)]")
    deadline = time.monotonic() + 5
    while "tiny:latest" not in httpx.get(fake_ollama + "/fake/state").json()["unloaded"]:
        assert time.monotonic() < deadline, "idle model was not unloaded with keep_alive 0"
        time.sleep(0.1)


def test_embeddings_and_tools_through_v1(server: ServerProcess) -> None:
    vectors = httpx.post(
        server.url + "/v1/embeddings",
        headers=AUTH,
        json={"model": "ollama/embedder", "input": ["a", "b"], "encoding_format": "float"},
    ).json()
    assert len(vectors["data"]) == 2 and len(vectors["data"][0]["embedding"]) == 8
    reply = httpx.post(
        server.url + "/v1/chat/completions",
        headers=AUTH,
        json={
            "model": "ollama/tiny",
            "messages": [{"role": "user", "content": 'CALL {"city": "Paris"}'}],
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
            ],
        },
    ).json()
    call = reply["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather" and reply["choices"][0]["finish_reason"] == "tool_calls"
