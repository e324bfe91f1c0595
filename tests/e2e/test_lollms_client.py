"""End to end: the real ``LollmsClient`` (lollms-client 1.21.1) talks to a running server through
its ``openai`` and ``lollms`` text bindings and its ``lollms`` image binding: streamed and plain
text, model lists, exact offline token counts (``/lollms/v1``), an image whose seed reaches the
binding, speech in mp3 and a transcription; ``GET /version`` stays a 404."""

from __future__ import annotations

import base64
import io
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, AUTH, ServerProcess, media_sections, running_server

pytest.importorskip("lollms_client")
pytest.importorskip("openai")
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, models_folder: Path, media_models_folder: Path
) -> Iterator[ServerProcess]:
    with running_server(
        tmp_path_factory.mktemp("lollms-client"), models_folder, **media_sections(media_models_folder)
    ) as process:
        yield process


@pytest.fixture
def client(server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``client(llm=..., tti=...)``: a LollmsClient on the server, writing only under tmp_path."""
    from lollms_client import LollmsClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "LOLLMS_API_KEY"):
        monkeypatch.delenv(name, raising=False)

    def make(llm: str | None = None, tti: str | None = None, model: str = "echo/echo") -> Any:
        config = {"host_address": server.url, "service_key": ADMIN_KEY, "model_name": model}
        kwargs: dict[str, Any] = {"debug": False}
        if llm:
            kwargs.update(llm_binding_name=llm, llm_binding_config=config)
        if tti:
            kwargs.update(tti_binding_name=tti, tti_binding_config=config)
        return LollmsClient(**kwargs)

    return make


def native_tokens(server: ServerProcess, text: str) -> list[int]:
    body = {"binding_name": "echo", "model_name": "echo", "text": text}
    response = httpx.post(server.url + "/api/v1/tokenize", json=body, headers=AUTH, timeout=30)
    tokens: list[int] = response.json()["tokens"]
    return tokens


@pytest.mark.parametrize("binding", ["openai", "lollms"])
def test_streamed_and_plain_text(client: Any, binding: str) -> None:
    from lollms_client.lollms_types import MSG_TYPE

    lc = client(llm=binding)
    chunks: list[tuple[str, Any]] = []

    def on_chunk(chunk: str, msg_type: Any = None, *args: Any, **kwargs: Any) -> bool:
        chunks.append((chunk, msg_type))
        return True

    streamed = lc.generate_text("one two three four", stream=True, streaming_callback=on_chunk)
    texts = [chunk for chunk, kind in chunks if kind == MSG_TYPE.MSG_TYPE_CHUNK]
    assert len(texts) >= 2 and "".join(texts).split() == ["one", "two", "three", "four"]
    assert str(streamed).split() == ["one", "two", "three", "four"]
    assert lc.generate_text("alpha beta", stream=False).split() == ["alpha", "beta"]


@pytest.mark.parametrize("binding", ["openai", "lollms"])
def test_list_models(client: Any, binding: str) -> None:
    models = client(llm=binding).list_models()
    names = {model["model_name"] if isinstance(model, dict) else str(model) for model in models}
    assert {"echo/echo", "echo/other"} <= names


def test_tokens_are_exact_and_need_no_download(client: Any, server: ServerProcess) -> None:
    lc = client(llm="lollms")
    text = "the quick brown fox"
    expected = native_tokens(server, text)
    assert lc.tokenize(text) == expected
    assert lc.count_tokens(text) == len(expected)
    assert lc.detokenize(expected).split() == text.split()


def test_lollms_v1_helpers_in_the_shapes_the_lollms_binding_reads(server: ServerProcess) -> None:
    listed = httpx.get(server.url + "/lollms/v1/tti/models", headers=AUTH, timeout=60).json()
    assert "images/tiny-sd" in {item["model_name"] for item in listed["data"]}
    llm = httpx.get(server.url + "/lollms/v1/llm/models", headers=AUTH, timeout=60).json()
    assert "echo/echo" in {item["id"] for item in llm["data"]}
    assert "images/tiny-sd" not in {item["id"] for item in llm["data"]}
    bad = httpx.post(server.url + "/lollms/v1/tokenize", json={"model": "nope", "text": "x"}, headers=AUTH)
    assert bad.status_code == 404
    assert (
        httpx.post(server.url + "/lollms/v1/tokenize", json={"model": "echo", "text": "x"}).status_code == 401
    )
    # lollms_client's vLLM probe: a 200 with a "version" key would switch it to vLLM extras
    probe = httpx.get(server.url + "/version", timeout=10)
    assert probe.status_code == 401 and "version" not in probe.json()
    assert httpx.get(server.url + "/version", headers=AUTH, timeout=10).status_code == 404


def test_image_seed_reaches_the_binding(client: Any, server: ServerProcess) -> None:
    from PIL import Image

    lc = client(tti="lollms", model="images/tiny-sd")
    data = lc.generate_image("a red cat", width=64, height=48, seed=3, num_inference_steps=2)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == (64, 48)
    body = {
        "generation_type": "tti",
        "input_data": [{"type": "text", "role": "user_prompt", "data": "a red cat"}],
        "parameters": {"width": 64, "height": 48, "seed": 3, "steps": 2},
    }
    direct = httpx.post(server.url + "/api/v1/generate", json=body, headers=AUTH, timeout=300).json()
    expected = Image.open(io.BytesIO(base64.b64decode(direct["output"][0]["data"])))
    assert image.convert("RGB").tobytes() == expected.convert("RGB").tobytes()
    other = lc.generate_image("a red cat", width=64, height=48, seed=4, num_inference_steps=2)
    assert Image.open(io.BytesIO(other)).convert("RGB").tobytes() != expected.convert("RGB").tobytes()


def test_speech_in_mp3_and_transcription(client: Any, server: ServerProcess, tmp_path: Path) -> None:
    lc = client(llm="lollms")
    mp3 = lc.llm.tts_generate("hello world", model="audio/tiny-vits")  # lollms_client's default: mp3
    assert isinstance(mp3, bytes) and len(mp3) > 100
    assert mp3[:3] == b"ID3" or (mp3[0] == 0xFF and mp3[1] & 0xE0 == 0xE0)
    wav_bytes = lc.llm.tts_generate("hello world", model="audio/tiny-vits", response_format="wav")
    with wave.open(io.BytesIO(wav_bytes)) as audio:
        assert audio.getnframes() > 0
    for response_format, mime in (("flac", "audio/flac"), ("opus", "audio/ogg"), ("aac", "audio/aac")):
        body = {"model": "audio/tiny-vits", "input": "hi", "response_format": response_format}
        encoded = httpx.post(server.url + "/v1/audio/speech", json=body, headers=AUTH, timeout=120)
        assert encoded.status_code == 200, encoded.text[:200]
        assert encoded.headers["content-type"] == mime
        head = encoded.content[:4]
        assert {
            "flac": head == b"fLaC",
            "opus": head == b"OggS",
            "aac": head[0] == 0xFF and head[1] & 0xF6 == 0xF0,
        }[response_format]
    path = tmp_path / "speech.wav"
    path.write_bytes(wav_bytes)
    text = lc.llm.transcribe_audio(str(path), model="audio/tiny-whisper")
    files = {"file": ("speech.wav", wav_bytes, "audio/wav")}
    direct = httpx.post(
        server.url + "/v1/audio/transcriptions",
        files=files,
        data={"model": "audio/tiny-whisper"},
        headers=AUTH,
        timeout=120,
    )
    assert direct.status_code == 200 and text == direct.json()["text"]
