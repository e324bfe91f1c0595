"""transformers audio binding: music (MusicGen), speech (text-to-audio models), transcription.

Each model folder is one kind, told by its ``config.json``: ``musicgen`` makes music, speech
recognition models (Whisper, ...) transcribe, other text-to-audio models (VITS, ...) speak.
Work runs in a worker thread under the model's lock; MusicGen reports progress per audio frame
and stops between frames when the client leaves; speech and transcription stop before the
model's next forward pass (per chunk or generated token), and input audio is decoded only up to
the ``max_audio_seconds`` limit, by an ffmpeg that is killed when the client leaves.
"""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from lollms_server.core.bindings import (
    BadRequestError,
    BindingContext,
    CancelToken,
    GenerationCancelled,
    MediaOutput,
    MediaRequest,
    Progress,
    wav_bytes,
)
from lollms_server.core.torch_models import LoadedTorchModel, TorchBinding

logger = logging.getLogger("lollms_bindings.transformers_audio_binding")

BindingName = "TransformersAudioBinding"
RECOGNITION_TYPES = {"whisper", "wav2vec2", "hubert", "speech_to_text", "seamless_m4t", "moonshine"}
TARGET_RATE = 16000
DECODE_MARGIN_S = 1.0  # ffmpeg decodes this much past the limit, to tell "too long" from "at the limit"
PIPE_CHUNK = 1 << 16
POLL_S = 0.05  # how often a running ffmpeg looks at the cancel token
STDERR_HEAD = 16 << 10
STDERR_TAIL = 4 << 10


class LoadedAudioModel(LoadedTorchModel):
    def __init__(self, kind: str, model: Any, processor: Any, pipeline: Any = None) -> None:
        super().__init__(model)
        self.kind = kind  # music | speech | transcription
        self.model = model
        self.processor = processor
        self.pipeline = pipeline

    @property
    def sampling_rate(self) -> int:
        config = self.model.config
        if self.kind == "music":
            return int(config.audio_encoder.sampling_rate)
        return int(getattr(config, "sampling_rate", TARGET_RATE))


class TransformersAudioBinding(TorchBinding):
    def __init__(self, context: BindingContext) -> None:
        super().__init__(context)
        import transformers  # noqa: F401 - fail at start-up when missing

    async def list_available_models(self) -> list[dict[str, Any]]:
        def describe(config: dict[str, Any]) -> dict[str, Any]:
            model_type = config.get("model_type", "")
            return {"model_type": model_type, "kind": _kind(model_type)}

        return await self.scan_models("config.json", describe)

    def load_from(self, location: str) -> LoadedAudioModel:
        from transformers import AutoConfig, AutoProcessor, pipeline

        model_type = AutoConfig.from_pretrained(location).model_type
        kind = _kind(model_type)
        if kind == "music":
            from transformers import MusicgenForConditionalGeneration

            model = MusicgenForConditionalGeneration.from_pretrained(location, dtype=self.dtype).to(
                self.device
            )
            return LoadedAudioModel(kind, model, AutoProcessor.from_pretrained(location))
        task = "automatic-speech-recognition" if kind == "transcription" else "text-to-audio"
        runner = pipeline(task, model=location, device=self.device, dtype=self.dtype)
        return LoadedAudioModel(kind, runner.model, None, runner)

    async def get_model_info(self, model_name: str | None) -> dict[str, Any]:
        info = self.base_info(model_name)
        loaded = self._models.get(model_name or "")
        if loaded is not None:
            info.update(kind=loaded.kind, sampling_rate=loaded.sampling_rate)
        return info

    def _loaded(self, model_name: str, kind: str) -> LoadedAudioModel:
        loaded: LoadedAudioModel = self.loaded(model_name)
        if loaded.kind != kind:
            raise BadRequestError(f"Model '{model_name}' does {loaded.kind}, not {kind}.", param="model_name")
        return loaded

    # ---- music -----------------------------------------------------------------
    async def generate_music(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        return await self.run_cancellable(self._music, cancel, model_name, request, cancel, progress)

    def _music(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        loaded = self._loaded(model_name, "music")
        parameters = request.parameters
        duration = float(parameters.get("duration", self.settings["default_duration"]))
        frame_rate = int(getattr(loaded.model.config.audio_encoder, "frame_rate", 50))
        frames = max(1, int(duration * frame_rate))

        class Watch(StoppingCriteria):
            def __init__(self) -> None:
                self.step = 0

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                self.step += 1
                progress(min(self.step, frames), frames)
                cancel.check()
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        with loaded.lock:
            torch.manual_seed(int(parameters["seed"]))
            inputs = loaded.processor(text=[request.prompt], padding=True, return_tensors="pt").to(
                self.device
            )
            audio = loaded.model.generate(
                **inputs,
                do_sample=True,
                max_new_tokens=frames,
                guidance_scale=float(parameters.get("guidance_scale", self.settings["guidance_scale"])),
                stopping_criteria=StoppingCriteriaList([Watch()]),
            )
        samples = audio[0, 0].float().cpu().numpy()
        rate = loaded.sampling_rate
        metadata = {
            "prompt": request.prompt,
            "duration": round(len(samples) / rate, 3),
            "sampling_rate": rate,
            "seed": int(parameters["seed"]),
        }
        return [MediaOutput("audio", wav_bytes(samples, rate), "audio/wav", metadata)]

    # ---- speech ----------------------------------------------------------------
    async def synthesize_speech(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        return await self.run_cancellable(self._speech, cancel, model_name, request, cancel, progress)

    def _speech(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        import torch

        loaded = self._loaded(model_name, "speech")
        parameters = request.parameters
        forward: dict[str, Any] = {}
        speaker = parameters.get("speaker_id", parameters.get("voice"))
        if speaker is not None and getattr(loaded.model.config, "num_speakers", 1) > 1:
            try:
                forward["speaker_id"] = int(speaker)
            except (TypeError, ValueError):
                raise BadRequestError(
                    "This model's voices are numbers (speaker_id).", param="parameters.voice"
                ) from None
        cancel.check()
        with loaded.lock, _checking_cancel(loaded.model, cancel):
            torch.manual_seed(int(parameters["seed"]))
            result = loaded.pipeline(request.prompt, forward_params=forward)
        progress(1, 1)
        samples = result["audio"]
        rate = int(result["sampling_rate"])
        import numpy as np

        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        metadata = {
            "text": request.prompt,
            "duration": round(len(samples) / rate, 3),
            "sampling_rate": rate,
            "seed": int(parameters["seed"]),
        }
        return [MediaOutput("audio", wav_bytes(samples, rate), "audio/wav", metadata)]

    # ---- transcription --------------------------------------------------------------
    async def transcribe(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        return await self.run_cancellable(self._transcribe, cancel, model_name, request, cancel, progress)

    def _transcribe(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        loaded = self._loaded(model_name, "transcription")
        assert request.audio is not None
        # refused past the limit before it is all decoded; ffmpeg is killed if the client leaves
        samples = decode_audio(
            request.audio, TARGET_RATE, max_seconds=float(self.settings["max_audio_seconds"]), cancel=cancel
        )
        seconds = len(samples) / TARGET_RATE
        parameters = request.parameters
        generate: dict[str, Any] = {}
        if getattr(loaded.model.generation_config, "is_multilingual", False):
            if parameters.get("language"):
                generate["language"] = parameters["language"]
            if parameters.get("task") in ("transcribe", "translate"):
                generate["task"] = parameters["task"]
        timestamps = bool(parameters.get("timestamps"))
        options: dict[str, Any] = {}
        if seconds > self.settings["chunk_length_s"]:  # long recordings: chunked
            options["chunk_length_s"] = self.settings["chunk_length_s"]
        if timestamps:
            options["return_timestamps"] = True
        if generate:
            options["generate_kwargs"] = generate
        cancel.check()
        with loaded.lock, _checking_cancel(loaded.model, cancel):
            try:
                result = loaded.pipeline({"raw": samples, "sampling_rate": TARGET_RATE}, **options)
            except ValueError:
                if not timestamps:
                    raise
                # this model's generation config cannot produce timestamps: transcribe without
                logger.info("Model %s cannot return timestamps; transcribing without", model_name)
                options.pop("return_timestamps")
                timestamps = False
                result = loaded.pipeline({"raw": samples, "sampling_rate": TARGET_RATE}, **options)
        progress(1, 1)
        metadata: dict[str, Any] = {"duration": round(seconds, 3), "input_format": request.audio_format}
        if timestamps and result.get("chunks"):
            metadata["segments"] = [
                {"text": chunk["text"], "start": chunk["timestamp"][0], "end": chunk["timestamp"][1]}
                for chunk in result["chunks"]
            ]
        return [MediaOutput("text", str(result["text"]).strip(), "text/plain", metadata)]


def _kind(model_type: str) -> str:
    if model_type == "musicgen" or model_type == "musicgen_melody":
        return "music"
    if model_type in RECOGNITION_TYPES:
        return "transcription"
    return "speech"


@contextmanager
def _checking_cancel(model: Any, cancel: CancelToken) -> Iterator[None]:
    """Check ``cancel`` before each call of the model's forward: once per chunk (CTC models,
    chunked recordings), once per generated token (Whisper and other generating models)."""

    def check(module: Any, args: Any) -> None:
        cancel.check()

    handle = model.register_forward_pre_hook(check) if hasattr(model, "register_forward_pre_hook") else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def _too_long(seconds: float, limit: float, *, at_least: bool = False) -> BadRequestError:
    # rounded up to a tenth, so a length just over the limit never reads as the limit itself
    lasts = f"more than {limit:g}" if at_least else f"{math.ceil(seconds * 10) / 10:g}"
    return BadRequestError(f"The audio lasts {lasts} s; the limit is {limit:g} s.", param="input_data")


def _read_plain_wav(data: bytes, rate: int, max_seconds: float) -> Any:
    import io
    import wave

    import numpy as np

    try:
        with wave.open(io.BytesIO(data)) as audio:
            if audio.getframerate() != rate or audio.getsampwidth() != 2 or audio.getnchannels() > 2:
                return None
            channels = audio.getnchannels()
            allowed = int(max_seconds * rate)
            frames = audio.readframes(allowed + 1)  # never more than the limit (and one frame)
            if len(frames) > allowed * 2 * channels:
                # how long it is: the header's length, unless the data is shorter (streamed WAVs)
                length = min(audio.getnframes(), len(data) // (2 * channels))
                raise _too_long(length / rate, max_seconds)
    except (wave.Error, EOFError):
        return None
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    if channels == 2:
        samples = samples[: len(samples) // 2 * 2].reshape(-1, 2).mean(axis=1)
    return samples


_DURATION = re.compile(rb"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")


def decode_audio(
    data: bytes,
    rate: int,
    *,
    max_seconds: float = 3600.0,
    cancel: CancelToken | None = None,
    timeout: float = 600.0,
) -> Any:
    """Any supported audio file to mono float32 samples at ``rate``: 16-bit PCM WAV already at
    ``rate`` is read directly, everything else goes through the bundled ffmpeg.

    Audio longer than ``max_seconds`` is refused (400) without decoding all of it: ffmpeg stops
    after ``max_seconds`` plus a margin (``-t``) and its output is read incrementally up to that
    many samples, so a small, highly compressed long file never expands into memory. ffmpeg is
    killed when ``cancel`` is set (the client left) or after ``timeout`` seconds.
    """
    import imageio_ffmpeg
    import numpy as np

    direct = _read_plain_wav(data, rate, max_seconds)
    if direct is not None:
        return direct

    # a little more than allowed: audio that decodes to more than max_seconds is too long
    decode_seconds = max_seconds + DECODE_MARGIN_S
    max_bytes = int(decode_seconds * rate) * 4  # f32le, mono
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-nostdin",
        "-hide_banner",
        "-nostats",
        "-loglevel",
        "info",  # the input's "Duration:" line, when its container tells it
        "-i",
        "pipe:0",
        "-vn",
        "-t",
        f"{decode_seconds:.3f}",
        "-f",
        "f32le",
        "-ac",
        "1",
        "-ar",
        str(rate),
        "pipe:1",
    ]
    result = _run_ffmpeg(command, data, max_bytes, cancel, timeout)
    if (result.returncode != 0 and not result.cut) or not result.output:
        logger.info("ffmpeg could not decode the input: %s", result.stderr[-300:].decode(errors="replace"))
        raise BadRequestError("The audio could not be decoded (corrupt or unsupported).", param="input_data")
    usable = len(result.output) // 4 * 4
    samples = np.frombuffer(result.output, dtype=np.float32, count=usable // 4)  # writable, no copy
    seconds = len(samples) / rate
    if seconds > max_seconds:
        match = _DURATION.search(result.stderr)
        if match:
            hours, minutes, rest = match.groups()
            declared = int(hours) * 3600 + int(minutes) * 60 + float(rest)
            if declared > max_seconds:
                raise _too_long(declared, max_seconds)
        cut = result.cut or seconds >= decode_seconds - 0.01
        raise _too_long(seconds, max_seconds, at_least=cut)
    return samples


@dataclass
class _FfmpegResult:
    returncode: int
    output: bytearray
    stderr: bytes
    cut: bool  # the output reached max_bytes and ffmpeg was stopped


def _run_ffmpeg(
    command: list[str], data: bytes, max_bytes: int, cancel: CancelToken | None, timeout: float
) -> _FfmpegResult:
    """Run ffmpeg with ``data`` on stdin; keep at most ``max_bytes`` of its stdout. Poll ``cancel``
    while it runs and kill it when set (GenerationCancelled) or after ``timeout`` (400)."""
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    output = bytearray()
    head = bytearray()  # the first lines: the input's description
    tail = bytearray()  # the last lines: the error, when there is one
    cut = threading.Event()

    def feed() -> None:
        assert process.stdin is not None
        try:
            view = memoryview(data)
            for start in range(0, len(view), PIPE_CHUNK):
                process.stdin.write(view[start : start + PIPE_CHUNK])
        except (BrokenPipeError, OSError, ValueError):  # ffmpeg stopped reading (done, cut or killed)
            pass
        finally:
            try:
                process.stdin.close()
            except (BrokenPipeError, OSError):
                pass

    def drain() -> None:
        assert process.stdout is not None
        while chunk := os.read(process.stdout.fileno(), PIPE_CHUNK):
            room = max_bytes - len(output)
            if len(chunk) > room:
                output.extend(chunk[:room])
                cut.set()
                process.kill()  # enough: the audio is longer than allowed
                break
            output.extend(chunk)

    def drain_stderr() -> None:
        assert process.stderr is not None
        while chunk := os.read(process.stderr.fileno(), PIPE_CHUNK):
            if len(head) < STDERR_HEAD:
                head.extend(chunk[: STDERR_HEAD - len(head)])
            tail.extend(chunk)
            del tail[:-STDERR_TAIL]

    workers = [threading.Thread(target=work, daemon=True) for work in (feed, drain, drain_stderr)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + timeout
    stopped: BaseException | None = None
    try:
        while True:
            try:
                process.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                if cancel is not None and cancel.is_set():
                    stopped = GenerationCancelled()
                elif time.monotonic() > deadline:
                    stopped = BadRequestError("The audio could not be decoded in time.", param="input_data")
                if stopped is not None:
                    process.kill()
                    process.wait()
                    break
    finally:
        if process.poll() is None:  # interrupted here: do not leave ffmpeg behind
            process.kill()
            process.wait()
        for worker in workers:
            worker.join(timeout=5)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    if stopped is not None:
        raise stopped
    stderr = bytes(head) if len(head) < STDERR_HEAD else bytes(head) + b"\n...\n" + bytes(tail)
    return _FfmpegResult(process.returncode, output, stderr, cut.is_set())
