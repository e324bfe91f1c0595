"""transformers_audio_binding without a server: the duration limit bounds decoding, and a
client that leaves stops ffmpeg and the transcription."""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from lollms_server.core.bindings import (
    BindingManager,
    CancelToken,
    GenerationCancelled,
    MediaRequest,
)
from lollms_server.core.config import config_from_dict
from lollms_server.core.errors import BadRequestError

LIMIT_S = 60
RATE = 16000
# what decoding up to the limit (and the one-second margin) may hold, as float32 samples at
# 16 kHz, with room for the bytearray's growth and the test's own allocations
BOUND_BYTES = int((LIMIT_S + 1) * RATE * 4 * 1.5) + (4 << 20)


@pytest.fixture
async def binding(media_models_folder: Path) -> AsyncIterator[Any]:
    config = config_from_dict(
        {
            "server": {"auto_install_requirements": False},
            "bindings": {
                "audio": {
                    "type": "transformers_audio_binding",
                    "device": "cpu",
                    "models_folder": str(media_models_folder / "transformers_audio_binding"),
                    "max_audio_seconds": LIMIT_S,
                }
            },
        },
        environ={},
    )
    manager = BindingManager(config)
    binding = await manager.get("audio")
    await binding.load_model("tiny-whisper")
    yield binding
    await manager.close()


def module_of(binding: Any) -> ModuleType:
    return sys.modules[type(binding).__module__]


def ffmpeg(*arguments: str) -> bytes:
    import imageio_ffmpeg

    return subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", *arguments],
        check=True,
        capture_output=True,
    ).stdout


def silence(seconds: float, container: str, *codec: str) -> bytes:
    """``seconds`` of silence at 8 kHz, encoded in ``container`` (FLAC packs an hour in 370 KB).
    Written to a file, so that a FLAC header holds the length (a piped one cannot)."""
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / f"silence.{container}"
        ffmpeg("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", str(seconds), *codec, str(target))
        return target.read_bytes()


def tone_mp3(seconds: float) -> bytes:
    return ffmpeg("-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-f", "mp3", "pipe:1")


def stt(audio: bytes, audio_format: str) -> MediaRequest:
    return MediaRequest(generation_type="stt", audio=audio, audio_format=audio_format)


async def transcribe(binding: Any, request: MediaRequest, cancel: CancelToken | None = None) -> Any:
    return await binding.transcribe("tiny-whisper", request, cancel or CancelToken(), lambda *_: None)


async def traced_peak(work: Any) -> tuple[BaseException | None, int, float]:
    """Run ``work`` (a coroutine); what it raised, the peak of Python and numpy allocations
    meanwhile (every thread) and how long it took."""
    tracemalloc.start()
    started = time.monotonic()
    raised: BaseException | None = None
    try:
        await work
    except Exception as exc:  # noqa: BLE001 - returned to the test
        raised = exc
    finally:
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return raised, peak, elapsed


@pytest.mark.parametrize(
    ("seconds", "container", "codec", "message"),
    [
        # FLAC tells its length: the message gives it
        (3600, "flac", (), f"The audio lasts 3600 s; the limit is {LIMIT_S} s."),
        # MP3 from a pipe does not: decoding stops past the limit
        (900, "mp3", ("-b:a", "8k"), f"The audio lasts more than {LIMIT_S} s; the limit is {LIMIT_S} s."),
    ],
    ids=["flac-1h", "mp3-15min"],
)
async def test_long_compressed_audio_is_refused_without_decoding_it_all(
    binding: Any, seconds: int, container: str, codec: tuple[str, ...], message: str
) -> None:
    audio = silence(seconds, container, *codec)
    assert len(audio) < 4 << 20  # small upload, hours of samples once decoded
    raised, peak, elapsed = await traced_peak(transcribe(binding, stt(audio, container)))
    # the whole file at 16 kHz float32 would be seconds * 64 KB (230 MB for the hour)
    assert peak < BOUND_BYTES, f"{peak / 2**20:.0f} MiB allocated while refusing"
    assert isinstance(raised, BadRequestError) and str(raised) == message, raised
    assert elapsed < 10


async def test_audio_within_the_limit_is_still_transcribed(binding: Any) -> None:
    [output] = await transcribe(binding, stt(tone_mp3(2.0), "mp3"))
    assert output.type == "text" and isinstance(output.data, str)
    assert abs(output.metadata["duration"] - 2.0) < 0.1


async def test_plain_wav_is_bounded_by_the_limit_too(binding: Any) -> None:
    import numpy as np

    from lollms_server.utils.media import wav_bytes

    with pytest.raises(BadRequestError, match=rf"^The audio lasts 61 s; the limit is {LIMIT_S} s\.$"):
        await transcribe(binding, stt(wav_bytes(np.zeros(61 * RATE), RATE), "wav"))
    # a streamed WAV (sizes unknown, written as 0xFFFFFFFF) of one second is not taken for a long one
    streamed = bytearray(wav_bytes(np.zeros(RATE), RATE))
    data_chunk = streamed.index(b"data")
    streamed[4:8] = streamed[data_chunk + 4 : data_chunk + 8] = struct.pack("<I", 0xFFFFFFFF)
    [output] = await transcribe(binding, stt(bytes(streamed), "wav"))
    assert abs(output.metadata["duration"] - 1.0) < 0.01


@pytest.mark.skipif(os.name != "posix", reason="the stand-in ffmpeg is a script with a #! line")
async def test_client_leaving_kills_ffmpeg(
    binding: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decode that hangs (a stand-in ffmpeg that sleeps) stops at once when the client leaves."""
    import imageio_ffmpeg

    request = stt(tone_mp3(1.0), "mp3")  # made by the real ffmpeg
    pid_file = tmp_path / "ffmpeg.pid"
    stand_in = tmp_path / "ffmpeg"
    stand_in.write_text(
        f"#!{sys.executable}\nimport os, time\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(20)\n"
    )
    stand_in.chmod(0o755)
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: str(stand_in))

    cancel = CancelToken()
    task = asyncio.ensure_future(transcribe(binding, request, cancel))
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and not task.done(), "the stand-in ffmpeg did not start"
        await asyncio.sleep(0.02)
    pid = int(pid_file.read_text())
    left = time.monotonic()
    task.cancel()  # the client left
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - left < 3, "the decode went on after the client left"
    assert cancel.is_set()
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)


async def test_client_leaving_stops_transcription_between_decoder_steps(binding: Any) -> None:
    model = binding._models["tiny-whisper"].model
    cancel = CancelToken()
    calls = 0

    def leave_after_first(module: Any, args: Any, output: Any) -> None:
        nonlocal calls
        calls += 1
        cancel.set()  # the client leaves while the first token is computed

    handle = model.register_forward_hook(leave_after_first)
    try:
        with pytest.raises(GenerationCancelled):
            await binding.transcribe("tiny-whisper", stt(tone_mp3(2.0), "mp3"), cancel, lambda *_: None)
    finally:
        handle.remove()
    assert calls == 1  # no forward pass after the client left
    assert not model._forward_pre_hooks  # the binding's check is gone with the call
    [output] = await transcribe(binding, stt(tone_mp3(2.0), "mp3"))  # and the model still works
    assert output.type == "text"


async def test_decoding_is_bounded_without_a_binding(binding: Any) -> None:
    """``decode_audio`` on its own: at most the limit plus the margin is ever decoded."""
    decode_audio = module_of(binding).decode_audio
    audio = silence(600, "flac")
    with pytest.raises(BadRequestError, match="lasts 600 s; the limit is 5 s"):
        decode_audio(audio, RATE, max_seconds=5)
    samples = decode_audio(silence(5, "flac"), RATE, max_seconds=5)
    assert len(samples) == 5 * RATE and samples.flags.writeable
