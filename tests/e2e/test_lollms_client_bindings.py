"""End to end: lollms_client binding folders dropped in unchanged run through the real server.

Folders are copied at test time out of the installed lollms_client package (nothing of it is
committed) into a temporary bindings folder: the ``openai`` and ``lollms`` text bindings and the
``lollms`` image binding point at a second local server of ours (an echo text binding and a tiny
diffusers model), ``canvas_tts`` runs as is; test-authored folders on lollms_client's real base
classes cover transcription, music and video (``tests/fixtures/lollms_client_bindings``).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    AUTH,
    GOOD_KEY,
    TESTS,
    USER_BINDINGS,
    ServerProcess,
    media_instance,
    running_server,
)
from tests.e2e.sse import parse_events

lollms_client = pytest.importorskip("lollms_client")
pytest.importorskip("openai")
pytestmark = pytest.mark.e2e

PACKAGE = Path(lollms_client.__file__).parent
FAKES = TESTS / "fixtures" / "lollms_client_bindings"
COPIED = {
    "llm_bindings": ["openai", "lollms"],
    "tti_bindings": ["lollms"],
    "tts_bindings": ["canvas_tts"],
}


def dropped_bindings(root: Path) -> Path:
    """A bindings folder holding verbatim copies of lollms_client folders, the fakes, and the
    scripted test binding the base config uses."""
    for family, names in COPIED.items():
        for name in names:
            shutil.copytree(PACKAGE / family / name, root / family / name)
    for family in ("stt_bindings", "ttm_bindings", "ttv_bindings"):
        shutil.copytree(FAKES / family, root / family)
    shutil.copytree(USER_BINDINGS / "scripted_binding", root / "scripted_binding")
    return root


@pytest.fixture(scope="module")
def upstream(
    tmp_path_factory: pytest.TempPathFactory, models_folder: Path, media_models_folder: Path
) -> Iterator[ServerProcess]:
    """The second server: the echo text binding and a tiny diffusers model."""
    with running_server(
        tmp_path_factory.mktemp("upstream"),
        models_folder,
        bindings={
            "images": {**media_instance("diffusers_binding", media_models_folder), "default_steps": 2},
            "slow": {"type": "scripted_binding", "delay": 0.2, "pool": "slow"},
        },
        resource_manager={
            "pools": {
                "default": {"limit": 1, "queue_size": 16, "queue_timeout": 120},
                "slow": {"limit": 1, "queue_size": 4, "queue_timeout": 120},  # a cancel test keeps it busy
            }
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
def server(
    tmp_path_factory: pytest.TempPathFactory, models_folder: Path, upstream: ServerProcess
) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("front")
    bindings_folder = dropped_bindings(folder / "bindings")
    remote = {"host_address": upstream.url, "service_key": AUTH["X-API-Key"]}
    with running_server(
        folder,
        models_folder,
        paths={"bindings_folder": str(bindings_folder)},
        bindings={
            "lc_openai": {"type": "lc_llm_openai", "model_name": "echo/echo", **remote},
            "lc_lollms": {"type": "lc_llm_lollms", "model_name": "echo/echo", **remote},
            "lc_images": {"type": "lc_tti_lollms", "model_name": "images/tiny-sd", **remote},
            "lc_slow": {"type": "lc_llm_openai", "model_name": "slow/echo", **remote},
            "lc_badkey": {
                "type": "lc_llm_openai",
                "model_name": "echo/echo",
                "host_address": upstream.url,
                "service_key": "wrong-key-0123456789",
            },
            "canvas": {"type": "lc_tts_canvas_tts", "audio_format": "wav"},
            "hear": {"type": "lc_stt_fake_stt", "model_name": "fake-whisper", "prefix": "got"},
            "music": {"type": "lc_ttm_fake_ttm", "model_name": "tone", "api_key": "very-secret-value"},
            "video": {"type": "lc_ttv_fake_ttv", "model_name": "fake-video", "extra_kwargs": {"fps": 3}},
        },
    ) as process:
        yield process


def generate(server: ServerProcess, body: dict[str, Any], key: str = AUTH["X-API-Key"]) -> httpx.Response:
    return httpx.post(server.url + "/api/v1/generate", json=body, headers={"X-API-Key": key}, timeout=300)


def prompt(text: str) -> dict[str, Any]:
    return {"type": "text", "role": "user_prompt", "data": text}


def wav(frames: int = 1600, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\x00\x01" * frames)
    return buffer.getvalue()


def test_cards_are_built_from_description_yaml(server: ServerProcess) -> None:
    listed = httpx.get(server.url + "/api/v1/list_bindings", headers=AUTH, timeout=30).json()
    types = listed["binding_types"]
    card = types["lc_tti_lollms"]
    assert card["generation_types"] == ["tti", "i2i"]
    assert {"host_address", "service_key", "extra_kwargs"} <= set(card["instance_schema"])
    assert "model_name" not in card["instance_schema"]
    assert card["instance_schema"]["service_key"]["secret"] is True
    music = types["lc_ttm_fake_ttm"]
    assert [command["name"] for command in music["commands"]] == ["describe_tone", "fail_command"]
    assert music["instance_schema"]["style"]["options"] == ["calm", "loud"]
    assert types["lc_ttv_fake_ttv"]["instance_schema"]["fps"]["type"] == "int"  # legacy list
    instances = listed["binding_instances"]
    assert instances["music"]["settings"]["api_key"] == "********"
    assert instances["video"]["settings"]["extra_kwargs"] == "********"
    assert instances["lc_openai"]["settings"]["service_key"] == "********"
    assert "very-secret-value" not in json.dumps(listed)


@pytest.mark.parametrize("instance", ["lc_openai", "lc_lollms"])
def test_text_streams_through_a_dropped_in_llm_binding(server: ServerProcess, instance: str) -> None:
    body = {"input_data": [prompt("one two three four")], "binding_name": instance, "stream": True}
    response = generate(server, body)
    assert response.status_code == 200, response.text
    events = parse_events(response.text)
    chunks = [event["content"] for event in events if event["type"] == "chunk"]
    assert len(chunks) >= 2 and "".join(chunks).split() == ["one", "two", "three", "four"]
    assert events[-1]["type"] == "final"
    plain = generate(server, {"input_data": [prompt("alpha beta")], "binding_name": instance})
    assert plain.json()["output"][0]["data"].split() == ["alpha", "beta"]


def test_text_through_v1_with_a_dropped_in_llm_binding(server: ServerProcess) -> None:
    body = {"model": "lc_openai", "messages": [{"role": "user", "content": "red green blue"}], "stream": True}
    response = httpx.post(server.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=120)
    assert response.status_code == 200, response.text
    deltas = [
        json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in response.text.splitlines()
        if line.startswith("data: {")
    ]
    assert "".join(deltas).split() == ["red", "green", "blue"]


def test_stop_sequence_cuts_a_dropped_in_stream(server: ServerProcess) -> None:
    body = {
        "input_data": [prompt("keep this STOP not that")],
        "binding_name": "lc_openai",
        "parameters": {"stop": ["STOP"]},
    }
    text = generate(server, body).json()["output"][0]["data"]
    assert "keep" in text and "STOP" not in text and "that" not in text


def test_image_through_the_lollms_tti_binding_keeps_the_seed(
    server: ServerProcess, upstream: ServerProcess
) -> None:
    from PIL import Image

    parameters = {"width": 64, "height": 48, "seed": 7, "steps": 2}
    response = generate(
        server,
        {
            "generation_type": "tti",
            "input_data": [prompt("a cat")],
            "binding_name": "lc_images",
            "parameters": parameters,
        },
    )
    assert response.status_code == 200, response.text
    [output] = response.json()["output"]
    assert output["mime_type"] == "image/png"
    data = base64.b64decode(output["data"])
    image = Image.open(io.BytesIO(data))
    assert image.size == (64, 48)
    assert json.loads(image.text["parameters"])["seed"] == 7
    # the seed reached the upstream binding: the same pixels as a direct call with that seed
    direct = generate(
        upstream, {"generation_type": "tti", "input_data": [prompt("a cat")], "parameters": parameters}
    )
    direct_image = Image.open(io.BytesIO(base64.b64decode(direct.json()["output"][0]["data"])))
    assert image.convert("RGB").tobytes() == direct_image.convert("RGB").tobytes()
    # provenance: the dropped-in binding's own chunks are kept, ours complete them
    assert image.text["Software"] == "LoLLMS" and image.text["Seed"] == "7"
    assert image.text["AI-Generated"] == "True"
    assert direct_image.text["Software"].startswith("lollms_server ")
    assert direct_image.text["Binding"] == "images" and direct_image.text["Model"] == "tiny-sd"


def test_canvas_tts_through_v1_audio_speech(server: ServerProcess) -> None:
    body = {"model": "canvas", "input": "hello there", "voice": "browser_en_us_1", "response_format": "wav"}
    response = httpx.post(server.url + "/v1/audio/speech", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    manifest = response.json()
    assert manifest["text"] == "hello there" and manifest["voice"] == "browser_en_us_1"
    assert manifest["audio_format"] == "wav"


def test_transcription_music_and_video_through_lollms_client_base_classes(server: ServerProcess) -> None:
    audio = {"type": "audio", "role": "input_audio", "data": base64.b64encode(wav()).decode()}
    heard = generate(
        server,
        {
            "generation_type": "stt",
            "input_data": [audio],
            "binding_name": "hear",
            "parameters": {"language": "fr"},
        },
    )
    assert heard.status_code == 200, heard.text
    assert heard.json()["output"][0]["data"] == "got 1600 frames at 16000 Hz with fake-whisper in fr"
    music = generate(
        server,
        {
            "generation_type": "ttm",
            "input_data": [prompt("a tune")],
            "binding_name": "music",
            "parameters": {"duration": 0.5},
        },
    )
    assert music.status_code == 200, music.text
    [output] = music.json()["output"]
    assert output["type"] == "audio" and output["mime_type"] == "audio/wav"
    with wave.open(io.BytesIO(base64.b64decode(output["data"]))) as tone:
        assert tone.getnframes() == 4000
    video = generate(
        server,
        {
            "generation_type": "ttv",
            "input_data": [prompt("a run")],
            "binding_name": "video",
            "parameters": {"seed": 4},
        },
    )
    assert video.status_code == 200, video.text
    [clip] = video.json()["output"]
    assert clip["mime_type"] == "video/mp4"
    payload = json.loads(base64.b64decode(clip["data"])[12:])
    assert payload["prompt"] == "a run" and payload["fps"] == 3 and payload["seed"] == 4


def test_binding_errors_are_clean(server: ServerProcess) -> None:
    refused = generate(
        server, {"generation_type": "ttm", "input_data": [prompt("fail")], "binding_name": "music"}
    )
    assert refused.status_code == 500
    assert "the fake music service refused" in refused.json()["error"]["message"]
    raised = generate(
        server, {"generation_type": "ttm", "input_data": [prompt("raise")], "binding_name": "music"}
    )
    assert raised.status_code == 500 and "secret internal detail" not in raised.text
    leak = generate(
        server, {"generation_type": "ttm", "input_data": [prompt("leak")], "binding_name": "music"}
    )
    assert leak.status_code == 500 and "very-secret-value" not in leak.text
    assert "key ******** refused" in leak.json()["error"]["message"]
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


def test_non_admin_keys_still_generate(server: ServerProcess) -> None:
    response = generate(server, {"input_data": [prompt("x y")], "binding_name": "lc_lollms"}, key=GOOD_KEY)
    assert response.status_code == 200, response.text


def test_commands_of_a_dropped_in_binding(server: ServerProcess) -> None:
    url = server.url + "/api/v1/bindings/music/commands"
    listed = httpx.get(url, headers=AUTH, timeout=30).json()["commands"]
    assert [command["name"] for command in listed] == ["describe_tone", "fail_command"]
    body = {"parameters": {"prompt": "abc", "octave": 2}}
    ran = httpx.post(url + "/describe_tone", json=body, headers=AUTH, timeout=30)
    assert ran.status_code == 200, ran.text
    assert ran.json()["result"] == {"status": True, "frequency": 113.0, "style": "calm"}
    failed = httpx.post(url + "/fail_command", json={"parameters": {}}, headers=AUTH, timeout=30)
    assert failed.status_code == 500 and "this command always fails" in failed.json()["error"]["message"]
    undeclared = httpx.post(url + "/generate_music", json={"parameters": {"prompt": "x"}}, headers=AUTH)
    assert undeclared.status_code == 404
    user = httpx.post(url + "/describe_tone", json=body, headers={"X-API-Key": GOOD_KEY})
    assert user.status_code == 403


def test_settings_of_a_dropped_in_binding_rebuild_it(server: ServerProcess) -> None:
    url = server.url + "/api/v1/bindings/music/settings"
    read = httpx.get(url, headers=AUTH, timeout=30).json()
    assert read["settings"]["api_key"] == "********" and "very-secret-value" not in json.dumps(read)
    refused = httpx.put(url, json={"settings": {"style": "wild"}}, headers=AUTH, timeout=30)
    assert refused.status_code == 400 and "style" in refused.json()["error"]["message"]
    changed = httpx.put(url, json={"settings": {"style": "loud", "api_key": "********"}}, headers=AUTH)
    assert changed.status_code == 200, changed.text
    body = {"parameters": {"prompt": "abc"}}
    ran = httpx.post(server.url + "/api/v1/bindings/music/commands/describe_tone", json=body, headers=AUTH)
    assert ran.json()["result"]["style"] == "loud"


def test_image_edit_through_the_lollms_tti_binding(server: ServerProcess) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="PNG")
    source = {"type": "image", "role": "input_image", "data": base64.b64encode(buffer.getvalue()).decode()}
    body = {
        "generation_type": "i2i",
        "input_data": [prompt("make it blue"), source],
        "binding_name": "lc_images",
        "parameters": {"seed": 2, "width": 64, "height": 48},
    }
    response = generate(server, body)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["output"][0]["data"])))
    assert image.size == (64, 48) and image.format == "PNG"


def test_a_wrong_upstream_key_is_a_clean_error(server: ServerProcess) -> None:
    response = generate(server, {"input_data": [prompt("hi")], "binding_name": "lc_badkey"})
    assert response.status_code == 500, response.text
    assert response.json()["error"]["type"] == "binding_error"
    assert "wrong-key-0123456789" not in response.text


def test_leaving_a_dropped_in_stream_cancels_it(server: ServerProcess) -> None:
    """200 words at 0.2 s upstream: 40 s if nothing stopped it. The front pool has one slot, so
    the next request only runs once the cancelled generation has really stopped."""
    words = " ".join(f"w{index}" for index in range(200))
    body = {"input_data": [prompt(words)], "binding_name": "lc_slow", "stream": True}
    with httpx.stream("POST", server.url + "/api/v1/generate", json=body, headers=AUTH, timeout=60) as stream:
        seen = 0
        for line in stream.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["type"] == "chunk":
                seen += 1
                if seen == 2:
                    break
    started = time.monotonic()
    # a local binding of the same one-slot pool (the upstream server is still busy: lollms_client's
    # openai binding returns on cancel but leaves its HTTP stream to the garbage collector)
    after = generate(
        server, {"generation_type": "tts", "input_data": [prompt("next")], "binding_name": "canvas"}
    )
    assert after.status_code == 200, after.text
    assert time.monotonic() - started < 25, "the abandoned generation kept the slot"


def test_a_dropped_in_binding_in_a_worker_process_pool(tmp_path: Path, models_folder: Path) -> None:
    """The worker process discovers and builds it the same way; commands and live settings need
    an in-process pool (409 with the reason)."""
    bindings_folder = dropped_bindings(tmp_path / "bindings")
    with running_server(
        tmp_path,
        models_folder,
        paths={"bindings_folder": str(bindings_folder)},
        resource_manager={
            "pools": {
                "default": {"limit": 1, "queue_size": 16, "queue_timeout": 30},
                "isolated": {"limit": 1, "queue_size": 8, "isolation": "process"},
            }
        },
        bindings={"music": {"type": "lc_ttm_fake_ttm", "pool": "isolated"}},
    ) as process:
        body = {"generation_type": "ttm", "input_data": [prompt("a tune")], "binding_name": "music"}
        music = generate(process, body)
        assert music.status_code == 200, music.text
        assert music.json()["output"][0]["mime_type"] == "audio/wav"
        command = httpx.post(
            process.url + "/api/v1/bindings/music/commands/describe_tone",
            json={"parameters": {"prompt": "a"}},
            headers=AUTH,
        )
        assert command.status_code == 409 and "process" in command.json()["error"]["message"]
        settings = httpx.put(
            process.url + "/api/v1/bindings/music/settings",
            json={"settings": {"style": "loud"}},
            headers=AUTH,
        )
        assert settings.status_code == 409
