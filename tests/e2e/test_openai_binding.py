"""openai_binding against real OpenAI-compatible servers on 127.0.0.1: llama-cpp-python's own
server, and a second lollms_server (one lollms_server fronting another)."""

from __future__ import annotations

import base64
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, AUTH, ServerProcess, free_port, media_instance, running_server
from tests.e2e.sse import parse_events

pytestmark = pytest.mark.e2e
PEER_KEY = "peer-key-0123456789"


def generate(server: ServerProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + "/api/v1/generate", json=body, headers=AUTH, timeout=120)


@pytest.fixture(scope="module")
def llama_peer(models_folder: Path) -> Iterator[str]:
    pytest.importorskip("sse_starlette")
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    peer = ServerProcess(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(models_folder / "llamacpp_binding" / "tiny.gguf"),
            "--model_alias",
            "tiny",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--n_threads",
            "1",
            "--api_key",
            PEER_KEY,
        ],
        url,
        url + "/models",
        headers={"Authorization": f"Bearer {PEER_KEY}"},
    )
    try:
        peer.wait_ready()
        yield url
    finally:
        peer.stop()


def test_against_llama_cpp_python_server(tmp_path: Path, models_folder: Path, llama_peer: str) -> None:
    remote = {"type": "openai_binding", "base_url": llama_peer, "api_key": PEER_KEY, "max_retries": 1}
    with running_server(tmp_path, models_folder, bindings={"remote": remote}) as server:
        models = httpx.get(server.url + "/api/v1/list_available_models/remote", headers=AUTH).json()["models"]
        assert [model["name"] for model in models] == ["tiny"]
        body = {
            "prompt": "Hello",
            "binding_name": "remote",
            "model_name": "tiny",
            "parameters": {"max_tokens": 8, "seed": 1},
        }
        whole = generate(server, body)
        assert whole.status_code == 200, whole.text
        assert whole.json()["output"][0]["metadata"]["finish_reason"] in ("stop", "length")
        events = parse_events(generate(server, {**body, "stream": True}).text)
        assert events[0]["type"] == "info" and events[-1]["type"] == "final"
        listing = httpx.get(server.url + "/api/v1/list_bindings", headers=AUTH).json()
        assert listing["binding_instances"]["remote"]["settings"]["api_key"] == "********"
        assert PEER_KEY not in httpx.get(server.url + "/api/v1/list_bindings", headers=AUTH).text


def test_wrong_remote_key_is_a_clean_error(tmp_path: Path, models_folder: Path, llama_peer: str) -> None:
    remote = {
        "type": "openai_binding",
        "base_url": llama_peer,
        "api_key": "wrong-remote-key",
        "max_retries": 0,
    }
    with running_server(tmp_path, models_folder, bindings={"remote": remote}) as server:
        response = generate(server, {"prompt": "x", "binding_name": "remote", "model_name": "tiny"})
        assert response.status_code == 500 and "401" in response.json()["error"]["message"]
        assert "wrong-remote-key" not in response.text


@pytest.fixture(scope="module")
def backend(
    tmp_path_factory: pytest.TempPathFactory, models_folder: Path, media_models_folder: Path
) -> Iterator[ServerProcess]:
    with running_server(
        tmp_path_factory.mktemp("backend"),
        models_folder,
        bindings={
            "echo": {"type": "scripted_binding"},
            "llm": {"type": "llamacpp_binding", "n_ctx": 2048, "n_threads": 1},
            "images": {**media_instance("diffusers_binding", media_models_folder), "default_steps": 2},
            "hf": media_instance("transformers_binding", media_models_folder),
            "audio": media_instance("transformers_audio_binding", media_models_folder),
        },
    ) as process:
        yield process


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, models_folder: Path, backend: ServerProcess
) -> Iterator[ServerProcess]:
    remote = {
        "type": "openai_binding",
        "base_url": backend.url + "/v1",
        "api_key_env": "BACKEND_KEY",
        "max_retries": 0,
    }
    import os

    os.environ["BACKEND_KEY"] = ADMIN_KEY  # the key comes from the environment, not the config file
    try:
        with running_server(
            tmp_path_factory.mktemp("gateway"), models_folder, bindings={"remote": remote}
        ) as s:
            yield s
    finally:
        os.environ.pop("BACKEND_KEY", None)


def test_lollms_server_fronts_another(gateway: ServerProcess) -> None:
    body = {
        "prompt": "Hello",
        "binding_name": "remote",
        "model_name": "llm/tiny.gguf",
        "parameters": {"max_tokens": 6, "seed": 3},
        "stream": True,
    }
    events = parse_events(generate(gateway, body).text)
    assert (
        events[-1]["type"] == "final"
        and events[-1]["content"][0]["metadata"]["usage"]["completion_tokens"] >= 1
    )
    # the backend imports each binding (diffusers, transformers...) to list its models: slow
    listed = httpx.get(gateway.url + "/api/v1/list_available_models/remote", headers=AUTH, timeout=120)
    names = {model["name"] for model in listed.json()["models"]}
    assert {"llm", "echo/echo", "images/tiny-sd"} <= names
    missing = generate(gateway, {**body, "stream": False, "model_name": "ghost/model"})
    assert (
        missing.status_code == 404
        and "Remote server of 'remote' answered 404" in missing.json()["error"]["message"]
    )


def test_media_and_embeddings_through_the_gateway(gateway: ServerProcess) -> None:
    from PIL import Image

    image = generate(
        gateway,
        {
            "generation_type": "tti",
            "binding_name": "remote",
            "model_name": "images/tiny-sd",
            "input_data": [{"type": "text", "role": "user_prompt", "data": "a cat"}],
            "parameters": {"width": 64, "height": 64},
        },
    )
    assert image.status_code == 200, image.text
    picture = Image.open(io.BytesIO(base64.b64decode(image.json()["output"][0]["data"])))
    assert picture.size == (64, 64)
    speech = generate(
        gateway,
        {
            "generation_type": "tts",
            "binding_name": "remote",
            "model_name": "audio/tiny-vits",
            "input_data": [{"type": "text", "role": "user_prompt", "data": "hello"}],
        },
    )
    assert speech.status_code == 200, speech.text
    wav = speech.json()["output"][0]["data"]
    heard = generate(
        gateway,
        {
            "generation_type": "stt",
            "binding_name": "remote",
            "model_name": "audio/tiny-whisper",
            "input_data": [{"type": "audio", "role": "input_audio", "data": wav}],
        },
    )
    assert heard.status_code == 200 and isinstance(heard.json()["output"][0]["data"], str)
    vectors = httpx.post(
        gateway.url + "/v1/embeddings",
        headers=AUTH,
        timeout=60,
        json={"model": "remote/hf/tiny-embedder", "input": ["a", "b"], "encoding_format": "float"},
    )
    assert vectors.status_code == 200, vectors.text
    assert len(vectors.json()["data"]) == 2 and len(vectors.json()["data"][0]["embedding"]) == 32


def test_tool_call_through_the_gateway(gateway: ServerProcess) -> None:
    call = '<tool_call>{"name": "testfns.add", "arguments": {"a": 1, "b": 2}}</tool_call>'
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        headers=AUTH,
        timeout=60,
        json={
            "model": "remote/echo/echo",
            "messages": [{"role": "user", "content": call}],
            "tools": [
                {"type": "function", "function": {"name": "testfns.add", "parameters": {"type": "object"}}}
            ],
        },
    )
    assert response.status_code == 200, response.text
    tool_calls = response.json()["choices"][0]["message"]["tool_calls"]
    assert tool_calls[0]["function"]["name"] == "testfns.add"
