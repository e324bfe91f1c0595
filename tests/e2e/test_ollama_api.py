"""The official ``ollama`` Python client, and replays of what Continue and Open WebUI send,
against a running lollms_server (Ollama's native API under /api)."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AUTH, GOOD_KEY, LIMITED_KEY, ServerProcess
from tests.e2e.ollama_server import BEARER, IDLE_UNLOAD_SECONDS, ollama_test_server

ollama = pytest.importorskip("ollama")
pytestmark = pytest.mark.e2e

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_folder: Path) -> Iterator[ServerProcess]:
    with ollama_test_server(tmp_path_factory, models_folder) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Any:
    return ollama.Client(host=server.url, headers=BEARER, timeout=120)


def pool_status(server: ServerProcess) -> dict[str, Any]:
    response = httpx.get(server.url + "/api/v1/status", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    pool: dict[str, Any] = response.json()["pools"][0]
    return pool


def loaded_names(client: Any) -> set[str]:
    return {model.model for model in client.ps().models}


# ---------------------------------------------------------------- listings


def test_list_show_and_ps(client: Any, models_folder: Path) -> None:
    listed = {model.model: model for model in client.list().models}
    assert {
        "llm:latest",
        "llm/tiny.gguf:latest",
        "llm/slow.gguf:latest",
        "echo:latest",
        "echo/other:latest",
        "eyes:latest",
        "hf/tiny-embedder:latest",
    } <= set(listed)
    tiny = listed["llm/tiny.gguf:latest"]
    assert tiny.size == (models_folder / "llamacpp_binding" / "tiny.gguf").stat().st_size
    assert tiny.details.format == "gguf" and len(tiny.digest) == 64
    assert tiny.modified_at is not None and listed["llm:latest"].digest == tiny.digest

    shown = client.show("llm/tiny.gguf")
    assert {"completion", "tools"} <= set(shown.capabilities) and "vision" not in shown.capabilities
    context = [value for key, value in shown.modelinfo.items() if key.endswith(".context_length")]
    assert context == [2048] and "num_ctx 2048" in shown.parameters
    assert ".Suffix" not in shown.template  # no fill-in-the-middle: Continue will not send suffix
    eyes = client.show("eyes")
    assert {"vision", "insert"} <= set(eyes.capabilities) and ".Suffix" in eyes.template
    assert "embedding" in client.show("hf/tiny-embedder").capabilities

    client.generate(model="llm/tiny.gguf", prompt="Hi", options={"num_predict": 2, "seed": 1})
    running = {model.model: model for model in client.ps().models}
    assert "llm/tiny.gguf:latest" in running
    entry = running["llm/tiny.gguf:latest"]
    assert entry.size > 10_000 and entry.size_vram == 0  # n_gpu_layers "auto" with a CPU build: on the CPU
    seconds_left = entry.expires_at.timestamp() - time.time()
    assert IDLE_UNLOAD_SECONDS - 300 < seconds_left <= IDLE_UNLOAD_SECONDS + 1


def test_limited_key_sees_only_its_bindings(server: ServerProcess) -> None:
    limited = ollama.Client(host=server.url, headers={"Authorization": f"Bearer {LIMITED_KEY}"})
    names = {model.model for model in limited.list().models}
    assert names == {"echo:latest", "echo/echo:latest", "echo/other:latest"}
    with pytest.raises(ollama.ResponseError) as caught:
        limited.chat(model="llm", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 403 and isinstance(caught.value.error, str)


# ---------------------------------------------------------------- generation


def test_chat_streamed_and_not_give_the_same_text(client: Any) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    options = {"seed": 5, "num_predict": 12, "temperature": 0.9, "top_k": 30, "repeat_penalty": 1.1}
    whole = client.chat(model="llm/tiny.gguf", messages=messages, options=options, stream=False)
    assert whole.done and whole.done_reason in ("stop", "length") and whole.message.role == "assistant"
    assert whole.eval_count >= 1 and whole.prompt_eval_count > 0 and whole.total_duration > 0
    parts = list(client.chat(model="llm", messages=messages, options=options, stream=True))
    assert [part.done for part in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(part.message.content for part in parts) == whole.message.content  # same seed
    final = parts[-1]
    assert final.eval_count == whole.eval_count and final.eval_duration > 0 and final.load_duration >= 0


def test_generate_and_raw_generate(server: ServerProcess, client: Any) -> None:
    options = {"seed": 9, "num_predict": 8}
    generated = client.generate(model="llm/tiny.gguf", prompt="Once upon", options=options)
    as_chat = client.chat(
        model="llm/tiny.gguf", messages=[{"role": "user", "content": "Once upon"}], options=options
    )
    assert generated.response == as_chat.message.content and generated.done
    raw = client.generate(model="llm/tiny.gguf", prompt="Once upon", raw=True, options=options)
    completion = httpx.post(
        server.url + "/v1/completions",
        json={"model": "llm/tiny.gguf", "prompt": "Once upon", "max_tokens": 8, "seed": 9},
        headers=BEARER,
        timeout=60,
    ).json()
    assert raw.response == completion["choices"][0]["text"]  # raw: the prompt as written
    streamed = "".join(
        part.response
        for part in client.generate(
            model="llm/tiny.gguf", prompt="Once upon", raw=True, options=options, stream=True
        )
    )
    assert streamed == raw.response


def test_embed_both_routes(client: Any) -> None:
    result = client.embed(model="hf/tiny-embedder", input=["hello", "world again"])
    assert len(result.embeddings) == 2 and len(result.embeddings[0]) == 32
    single = client.embed(model="hf/tiny-embedder", input="hello")
    assert single.embeddings[0] == pytest.approx(result.embeddings[0], abs=1e-5)
    older = client.embeddings(model="hf/tiny-embedder", prompt="hello")
    assert list(older.embedding) == pytest.approx(result.embeddings[0], abs=1e-5)
    assert "hf/tiny-embedder:latest" in loaded_names(client)
    client.embed(model="hf/tiny-embedder", input="bye", keep_alive=0)
    assert "hf/tiny-embedder:latest" not in loaded_names(client)


def test_tool_call_round_trip(client: Any) -> None:
    call_text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    messages: list[Any] = [{"role": "user", "content": call_text}]
    first = client.chat(model="echo/echo", messages=messages, tools=[WEATHER_TOOL])
    [call] = first.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    messages += [first.message, {"role": "tool", "content": "sunny, 21 C", "tool_name": "get_weather"}]
    second = client.chat(model="echo/echo", messages=messages, tools=[WEATHER_TOOL])
    assert not second.message.tool_calls and "sunny, 21 C" in second.message.content
    streamed = list(client.chat(model="echo/echo", messages=messages[:1], tools=[WEATHER_TOOL], stream=True))
    assert streamed[-1].done and any(part.message.tool_calls for part in streamed)


def test_format_json_schema_gives_valid_json(client: Any) -> None:
    import jsonschema

    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    reply = client.chat(
        model="llm/tiny.gguf",
        messages=[{"role": "user", "content": "Describe a person as JSON."}],
        format=schema,
        options={"seed": 3, "num_predict": 200},
    )
    jsonschema.validate(json.loads(reply.message.content), schema)


def test_images_reach_a_vision_binding(client: Any) -> None:
    from PIL import Image

    picture = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(picture, format="PNG")
    reply = client.chat(
        model="eyes", messages=[{"role": "user", "content": "What is this?", "images": [picture.getvalue()]}]
    )
    assert reply.message.content == "image 64x48 image/png; What is this?"
    generated = client.generate(model="eyes", prompt="And this?", images=[picture.getvalue()])
    assert generated.response == "image 64x48 image/png; And this?"
    filled = client.generate(model="eyes", prompt="def f(", suffix="return 1")  # insert capability
    assert filled.response == "def f(; suffix return 1"
    with pytest.raises(ollama.ResponseError) as caught:
        client.generate(model="eyes", prompt="x", images=["bm90IGFuIGltYWdl"])  # "not an image"
    assert caught.value.status_code == 400


def test_keep_alive_zero_unloads(client: Any) -> None:
    client.generate(model="llm/tiny2.gguf", prompt="Hi", options={"num_predict": 2}, keep_alive=0)
    assert "llm/tiny2.gguf:latest" not in loaded_names(client)
    loading = client.generate(model="llm/tiny3.gguf", prompt="")  # an empty prompt loads
    assert loading.done_reason == "load" and "llm/tiny3.gguf:latest" in loaded_names(client)
    unloading = client.generate(model="llm/tiny3.gguf", prompt="", keep_alive=0)
    assert unloading.done_reason == "unload" and "llm/tiny3.gguf:latest" not in loaded_names(client)
    streamed = list(
        client.chat(
            model="llm/tiny2.gguf",
            messages=[{"role": "user", "content": "Hi"}],
            options={"num_predict": 2},
            keep_alive="0s",
            stream=True,
        )
    )
    assert streamed[-1].done and "llm/tiny2.gguf:latest" not in loaded_names(client)


def test_keep_alive_zero_of_a_generate_key_unloads_nothing(client: Any, server: ServerProcess) -> None:
    """R-04: any key could unload a model every other key was using, in a loop."""
    user = ollama.Client(host=server.url, headers={"Authorization": f"Bearer {GOOD_KEY}"}, timeout=120)
    client.generate(model="llm/tiny3.gguf", prompt="")  # loaded
    user.generate(model="llm/tiny3.gguf", prompt="Hi", options={"num_predict": 2}, keep_alive=0)
    answer = user.generate(model="llm/tiny3.gguf", prompt="", keep_alive=0)
    assert answer.done_reason == "load" and "llm/tiny3.gguf:latest" in loaded_names(client)
    unloading = client.generate(model="llm/tiny3.gguf", prompt="", keep_alive=0)  # an admin key may
    assert unloading.done_reason == "unload" and "llm/tiny3.gguf:latest" not in loaded_names(client)


def test_errors_as_ollama_clients_read_them(server: ServerProcess, client: Any) -> None:
    cases: list[tuple[int, Any]] = [
        (404, lambda: client.chat(model="ghost/model", messages=[{"role": "user", "content": "x"}])),
        (404, lambda: client.generate(model="llm/ghost.gguf", prompt="x")),
        (404, lambda: client.show("echo/ghost")),
        (400, lambda: client.generate(model="llm", prompt="x", options={"temperature": 50})),
        (400, lambda: client.generate(model="llm", prompt="x", suffix="y")),  # no fill-in-the-middle
        (400, lambda: client.pull("llm/not-a-hub-name")),
        (404, lambda: client.delete("llm/absent.gguf")),
    ]
    for status, call in cases:
        with pytest.raises(ollama.ResponseError) as caught:
            call()
        assert caught.value.status_code == status, caught.value.error
        assert isinstance(caught.value.error, str) and caught.value.error
    bad_key = ollama.Client(host=server.url, headers={"Authorization": "Bearer wrong-key-123456"})
    with pytest.raises(ollama.ResponseError) as caught:
        bad_key.list()
    assert caught.value.status_code == 401 and caught.value.error == "Invalid API key."
    invalid = httpx.post(server.url + "/api/chat", json={"messages": []}, headers=BEARER, timeout=10)
    assert invalid.status_code == 400 and isinstance(invalid.json()["error"], str)
    native = httpx.post(server.url + "/api/v1/generate", json={}, headers=BEARER, timeout=10)
    assert native.status_code == 422 and native.json()["error"]["type"] == "validation_error"  # unchanged


def test_mid_stream_failure_is_a_final_error_line(server: ServerProcess, client: Any) -> None:
    broken = b"\x89PNG\r\n\x1a\n" + b"not really a picture" * 4  # looks like a PNG, is none
    message = {"role": "user", "content": "What is this?", "images": [broken]}
    with pytest.raises(ollama.ResponseError) as caught:
        list(client.chat(model="eyes", messages=[message], stream=True))
    assert "binding failed" in caught.value.error
    body = {"model": "eyes", "messages": [{**message, "images": [base64.b64encode(broken).decode()]}]}
    with httpx.stream("POST", server.url + "/api/chat", json=body, headers=BEARER, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(text) for text in response.iter_lines() if text]
    assert set(lines[-1]) == {"error"} and "done" not in lines[-1]
    whole = httpx.post(server.url + "/api/chat", json={**body, "stream": False}, headers=BEARER, timeout=30)
    assert whole.status_code == 500 and set(whole.json()) == {"error"}


def test_disconnect_mid_stream_frees_the_slot(server: ServerProcess, client: Any) -> None:
    words = " ".join(f"w{i}" for i in range(120))  # 0.5 s a word: a minute of streaming
    stream = client.chat(model="slow_echo", messages=[{"role": "user", "content": words}], stream=True)
    first = next(stream)
    assert first.message.content.startswith("w0") and pool_status(server)["active"] == 1
    stream.close()  # the client leaves
    deadline = time.monotonic() + 20
    while pool_status(server)["active"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pool_status(server)["active"] == 0
    assert client.chat(model="echo", messages=[{"role": "user", "content": "still here"}]).message.content
