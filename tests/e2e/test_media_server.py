"""End to end: images, edits, video, music, speech, transcription and transformers text through a
real server on tiny random-weight models."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import tempfile
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AUTH, ServerProcess, media_instance, running_server
from tests.e2e.sse import parse_events

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, models_folder: Path, media_models_folder: Path
) -> Iterator[ServerProcess]:
    with running_server(
        tmp_path_factory.mktemp("media"),
        models_folder,
        resource_manager={"pools": {"default": {"limit": 1, "queue_size": 16, "queue_timeout": 120}}},
        bindings={
            "images": {
                **media_instance("diffusers_binding", media_models_folder),
                "default_steps": 2,
                "default_width": 64,
                "default_height": 64,
            },
            "text_hf": media_instance("transformers_binding", media_models_folder),
            "audio": media_instance("transformers_audio_binding", media_models_folder),
        },
        defaults={
            "ttt_binding": "text_hf",
            "ttt_model": "tiny-llama",
            "tti_binding": "images",
            "tti_model": "tiny-sd",
            "i2i_binding": "images",
            "i2i_model": "tiny-sd",
            "ttv_binding": "images",
            "ttv_model": "tiny-wan",
            "ttm_binding": "audio",
            "ttm_model": "tiny-musicgen",
            "tts_binding": "audio",
            "tts_model": "tiny-vits",
            "stt_binding": "audio",
            "stt_model": "tiny-whisper",
        },
    ) as process:
        yield process


def generate(
    server: ServerProcess, generation_type: str, inputs: list[dict[str, Any]], **extra: Any
) -> httpx.Response:
    body = {"generation_type": generation_type, "input_data": inputs, **extra}
    return httpx.post(server.url + "/api/v1/generate", json=body, headers=AUTH, timeout=300)


def prompt(text: str) -> dict[str, Any]:
    return {"type": "text", "role": "user_prompt", "data": text}


def png(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decode_image(output: dict[str, Any]) -> Any:
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(output["data"])))
    image.load()
    return image


def wav_info(output: dict[str, Any]) -> tuple[int, int]:
    with wave.open(io.BytesIO(base64.b64decode(output["data"]))) as audio:
        return audio.getframerate(), audio.getnframes()


def test_text_to_image_png_of_the_requested_size(server: ServerProcess) -> None:
    response = generate(
        server, "tti", [prompt("a red cat")], parameters={"width": 64, "height": 48, "seed": 5}
    )
    assert response.status_code == 200, response.text
    [output] = response.json()["output"]
    assert output["type"] == "image" and output["mime_type"] == "image/png"
    image = decode_image(output)
    assert image.format == "PNG" and image.size == (64, 48)
    assert json.loads(image.text["parameters"])["seed"] == 5
    assert output["metadata"]["seed"] == 5 and output["metadata"]["binding"] == "images"


def test_same_seed_same_image_bytes(server: ServerProcess) -> None:
    outputs = [
        generate(server, "tti", [prompt("a blue dog")], parameters={"seed": 11}).json()["output"][0]["data"]
        for _ in range(2)
    ]
    assert outputs[0] == outputs[1]
    other = generate(server, "tti", [prompt("a blue dog")], parameters={"seed": 12}).json()["output"][0][
        "data"
    ]
    assert other != outputs[0]


def test_several_images_per_request(server: ServerProcess) -> None:
    response = generate(
        server, "tti", [prompt("a cat")], parameters={"num_images": 2, "output_format": "jpeg"}
    )
    outputs = response.json()["output"]
    assert [output["mime_type"] for output in outputs] == ["image/jpeg", "image/jpeg"]
    assert decode_image(outputs[1]).format == "JPEG"


def test_image_to_image_and_inpainting_keep_the_input_size(server: ServerProcess) -> None:
    source = {"type": "image", "role": "input_image", "data": png(64, 48), "mime_type": "image/png"}
    edited = generate(server, "i2i", [prompt("make it blue"), source], parameters={"strength": 0.6})
    assert edited.status_code == 200, edited.text
    assert decode_image(edited.json()["output"][0]).size == (64, 48)
    mask = {"type": "image", "role": "mask_image", "data": png(64, 48, (255, 255, 255))}
    painted = generate(server, "i2i", [prompt("a hat"), source, mask])
    assert painted.status_code == 200, painted.text
    assert decode_image(painted.json()["output"][0]).size == (64, 48)


def test_text_to_video_mp4_with_the_requested_frames(server: ServerProcess) -> None:
    import imageio.v3 as iio

    response = generate(
        server,
        "ttv",
        [prompt("a cat running")],
        parameters={"num_frames": 9, "width": 64, "height": 64, "steps": 2, "fps": 8},
    )
    assert response.status_code == 200, response.text
    [output] = response.json()["output"]
    assert output["mime_type"] == "video/mp4"
    data = base64.b64decode(output["data"])
    assert data[4:8] == b"ftyp"
    frames = iio.imread(data, index=None, extension=".mp4")
    assert frames.shape[0] == 9 and frames.shape[1:3] == (64, 64)
    gif = generate(
        server,
        "ttv",
        [prompt("a cat")],
        parameters={"num_frames": 5, "width": 64, "height": 64, "steps": 1, "output_format": "gif"},
    )
    assert base64.b64decode(gif.json()["output"][0]["data"])[:6] in (b"GIF89a", b"GIF87a")


def test_music_and_speech_are_wav_at_the_model_rate(server: ServerProcess) -> None:
    music = generate(server, "ttm", [prompt("calm music")], parameters={"duration": 0.5})
    assert music.status_code == 200, music.text
    rate, frames = wav_info(music.json()["output"][0])
    assert rate == 16000 and frames > 0
    speech = generate(server, "tts", [prompt("hello world")])
    assert speech.status_code == 200, speech.text
    rate, frames = wav_info(speech.json()["output"][0])
    assert rate == 16000 and frames > 0


def _tone_wav(seconds: float = 1.0) -> bytes:
    import numpy as np

    from lollms_server.utils.media import wav_bytes

    t = np.arange(int(16000 * seconds)) / 16000
    return wav_bytes(0.3 * np.sin(2 * np.pi * 440 * t), 16000)


def _to_mp3(wav: bytes) -> bytes:
    import imageio_ffmpeg

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "in.wav", Path(folder) / "out.mp3"
        source.write_bytes(wav)
        subprocess.run(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", str(source), str(target)],
            check=True,
        )
        return target.read_bytes()


@pytest.mark.parametrize("encode", ["wav", "mp3"])
def test_transcription_of_wav_and_mp3(server: ServerProcess, encode: str) -> None:
    audio = _tone_wav() if encode == "wav" else _to_mp3(_tone_wav())
    item = {"type": "audio", "role": "input_audio", "data": base64.b64encode(audio).decode()}
    response = generate(server, "stt", [item])
    assert response.status_code == 200, response.text
    [output] = response.json()["output"]
    assert output["type"] == "text" and isinstance(output["data"], str)
    assert output["metadata"]["input_format"] == encode and abs(output["metadata"]["duration"] - 1.0) < 0.1


def test_streamed_text_from_the_transformers_binding(server: ServerProcess) -> None:
    body = {
        "input_data": [prompt("Hello")],
        "binding_name": "text_hf",
        "model_name": "tiny-llama",
        "stream": True,
        "parameters": {"max_tokens": 12, "ignore_eos": True, "seed": 3},
    }
    response = httpx.post(server.url + "/api/v1/generate", json=body, headers=AUTH, timeout=120)
    events = parse_events(response.text)
    assert events[0]["type"] == "info" and events[-1]["type"] == "final"
    chunks = [event["content"] for event in events if event["type"] == "chunk"]
    final = events[-1]["content"][0]
    assert final["data"] == "".join(chunks) and final["metadata"]["usage"]["completion_tokens"] == 12
    tokens = httpx.post(
        server.url + "/api/v1/tokenize",
        json={"text": "Hello world", "binding_name": "text_hf", "model_name": "tiny-llama"},
        headers=AUTH,
    ).json()
    back = httpx.post(
        server.url + "/api/v1/detokenize",
        json={"tokens": tokens["tokens"], "binding_name": "text_hf", "model_name": "tiny-llama"},
        headers=AUTH,
    ).json()
    assert back["text"] == "Hello world"


def test_streamed_media_sends_progress_then_final(server: ServerProcess) -> None:
    body = {
        "generation_type": "tti",
        "input_data": [prompt("a cat")],
        "stream": True,
        "parameters": {"steps": 3},
    }
    events = parse_events(
        httpx.post(server.url + "/api/v1/generate", json=body, headers=AUTH, timeout=120).text
    )
    progress = [
        event["metadata"] for event in events if event["type"] == "info" and "step" in event["metadata"]
    ]
    assert progress == [{"step": 1, "total": 3}, {"step": 2, "total": 3}, {"step": 3, "total": 3}]
    assert events[-1]["type"] == "final" and events[-1]["content"][0]["mime_type"] == "image/png"


@pytest.mark.parametrize(
    ("generation_type", "item", "message"),
    [
        ("i2i", {"type": "image", "role": "input_image", "data": "not base64!!"}, "not valid base64"),
        (
            "i2i",
            {"type": "image", "role": "input_image", "data": base64.b64encode(b"plain text").decode()},
            "not a valid image",
        ),
        (
            "stt",
            {"type": "audio", "role": "input_audio", "data": base64.b64encode(b"MThd....").decode()},
            "unsupported audio format",
        ),
    ],
)
def test_bad_media_inputs_are_400(
    server: ServerProcess, generation_type: str, item: dict[str, Any], message: str
) -> None:
    response = generate(server, generation_type, [prompt("x"), item])
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


def test_disconnect_mid_generation_stops_the_work(server: ServerProcess) -> None:
    def active() -> int:
        pools = httpx.get(server.url + "/api/v1/status", headers=AUTH, timeout=10).json()["pools"]
        return int(pools[0]["active"])

    body = {
        "generation_type": "tti",
        "input_data": [prompt("a cat")],
        "stream": True,
        "parameters": {"steps": 400, "width": 64, "height": 64},
    }
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as client:
        with client.stream("POST", "/api/v1/generate", json=body) as response:
            for line in response.iter_lines():
                if '"step":3' in line.replace(" ", ""):
                    assert active() == 1
                    break
    left = time.monotonic()
    while active():
        assert time.monotonic() - left < 2.0, "the generation was not stopped"
        time.sleep(0.02)
    # the worker stopped between steps: the pool serves the next request at once
    assert generate(server, "tti", [prompt("next")]).status_code == 200


def test_scripted_artbot_returns_text_and_png(server: ServerProcess) -> None:
    response = generate(
        server,
        "ttt",
        [prompt("a lighthouse")],
        personality="artbot",
        parameters={"max_tokens": 12, "width": 64, "height": 64, "seed": 4},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["personality"] == "artbot"
    text, image = body["output"]
    assert text["type"] == "text" and text["metadata"]["role"] == "image_prompt" and text["data"]
    assert image["mime_type"] == "image/png" and decode_image(image).size == (64, 64)
