"""The official openai SDK against a running lollms_server (/v1)."""

from __future__ import annotations

import base64
import io
import json
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_KEY, ServerProcess, media_instance, running_server

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, models_folder: Path, media_models_folder: Path
) -> Iterator[ServerProcess]:
    with running_server(
        tmp_path_factory.mktemp("openai"),
        models_folder,
        bindings={
            "echo": {"type": "scripted_binding"},
            "llm": {"type": "llamacpp_binding", "model_name": "tiny.gguf", "n_ctx": 2048, "n_threads": 1},
            "images": {
                **media_instance("diffusers_binding", media_models_folder),
                "default_steps": 2,
                "model_name": "tiny-sd",
            },
            "hf": media_instance("transformers_binding", media_models_folder),
            "audio": media_instance("transformers_audio_binding", media_models_folder),
        },
        defaults={
            "tti_binding": "images",
            "tti_model": "tiny-sd",
            "i2i_binding": "images",
            "i2i_model": "tiny-sd",
        },
    ) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Any:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=120)


def test_models_list(client: Any) -> None:
    ids = {model.id for model in client.models.list()}
    assert {"echo", "llm", "llm/tiny.gguf", "images/tiny-sd", "hf/tiny-embedder", "audio/tiny-whisper"} <= ids


def test_chat_plain_and_streamed_with_usage(client: Any) -> None:
    reply = client.chat.completions.create(
        model="llm/tiny.gguf",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        max_tokens=8,
        seed=1,
    )
    assert reply.object == "chat.completion" and isinstance(reply.choices[0].message.content, str)
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 1
    stream = client.chat.completions.create(
        model="llm",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        max_tokens=8,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == reply.choices[0].message.content  # same seed, same text
    assert usage is not None and usage.completion_tokens == reply.usage.completion_tokens and finish


def test_completions(client: Any) -> None:
    completion = client.completions.create(
        model="llm/tiny.gguf", prompt="Once upon a time", max_tokens=6, seed=2
    )
    assert completion.object == "text_completion" and isinstance(completion.choices[0].text, str)
    streamed = "".join(
        part.choices[0].text
        for part in client.completions.create(
            model="llm/tiny.gguf", prompt="Once upon a time", max_tokens=6, seed=2, stream=True
        )
        if part.choices
    )
    assert streamed == completion.choices[0].text


def test_embeddings(client: Any) -> None:
    result = client.embeddings.create(model="hf/tiny-embedder", input=["hello", "world again"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 32
    as_floats = client.embeddings.create(model="hf/tiny-embedder", input="hello", encoding_format="float")
    assert as_floats.data[0].embedding == pytest.approx(result.data[0].embedding, abs=1e-6)


def test_image_generation_and_edit(client: Any) -> None:
    from PIL import Image

    generated = client.images.generate(
        model="images/tiny-sd", prompt="a cat", size="64x64", n=1, response_format="b64_json"
    )
    image = Image.open(io.BytesIO(base64.b64decode(generated.data[0].b64_json)))
    assert image.format == "PNG" and image.size == (64, 64)
    source = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 10)).save(source, format="PNG")
    edited = client.images.edit(
        model="images/tiny-sd",
        image=("in.png", source.getvalue(), "image/png"),
        prompt="make it red",
        response_format="b64_json",
    )
    assert Image.open(io.BytesIO(base64.b64decode(edited.data[0].b64_json))).size == (64, 48)


def test_speech_and_transcription(client: Any) -> None:
    speech = client.audio.speech.create(
        model="audio/tiny-vits", input="hello world", voice="alloy", response_format="wav"
    )
    data = speech.read()
    with wave.open(io.BytesIO(data)) as audio:
        assert audio.getframerate() == 16000 and audio.getnframes() > 0
    text = client.audio.transcriptions.create(
        model="audio/tiny-whisper", file=("speech.wav", data, "audio/wav")
    )
    assert isinstance(text.text, str)
    verbose = client.audio.transcriptions.create(
        model="audio/tiny-whisper", file=("speech.wav", data, "audio/wav"), response_format="verbose_json"
    )
    assert verbose.duration > 0


def test_tool_call_round_trip(client: Any) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather of a city.",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    call_text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    messages: list[dict[str, Any]] = [{"role": "user", "content": call_text}]
    first = client.chat.completions.create(model="echo/echo", messages=messages, tools=tools)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ]
    second = client.chat.completions.create(model="echo/echo", messages=messages, tools=tools)
    assert second.choices[0].finish_reason == "stop"
    assert "sunny, 21 C" in second.choices[0].message.content


def test_errors(server: ServerProcess, client: Any) -> None:
    bad_key = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong-key-123456", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="ghost/model", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="llm", messages=[{"role": "user", "content": "x"}], temperature=5
        )
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="llm/../../etc/passwd", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model="images/tiny-sd", prompt="x", size="big")
