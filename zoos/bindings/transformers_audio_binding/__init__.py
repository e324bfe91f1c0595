"""transformers audio binding: music (MusicGen), speech (text-to-audio models), transcription.

Each model folder is one kind, told by its ``config.json``: ``musicgen`` makes music, speech
recognition models (Whisper, ...) transcribe, other text-to-audio models (VITS, ...) speak.
Work runs in a worker thread under the model's lock; MusicGen reports progress per audio frame
and stops between frames when the client leaves.
"""

from __future__ import annotations

import logging
import subprocess
from typing import Any

from lollms_server.core.bindings import (
    BadRequestError,
    BindingContext,
    CancelToken,
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
        with loaded.lock:
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
        samples = decode_audio(request.audio, TARGET_RATE)
        seconds = len(samples) / TARGET_RATE
        if seconds > self.settings["max_audio_seconds"]:
            raise BadRequestError(
                f"The audio lasts {seconds:.0f} s; the limit is {self.settings['max_audio_seconds']:.0f} s.",
                param="input_data",
            )
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
        with loaded.lock:
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


def _read_plain_wav(data: bytes, rate: int) -> Any:
    import io
    import wave

    import numpy as np

    try:
        with wave.open(io.BytesIO(data)) as audio:
            if audio.getframerate() != rate or audio.getsampwidth() != 2 or audio.getnchannels() > 2:
                return None
            channels = audio.getnchannels()
            frames = audio.readframes(audio.getnframes())
    except (wave.Error, EOFError):
        return None
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    if channels == 2:
        samples = samples.reshape(-1, 2).mean(axis=1)
    return samples


def _kind(model_type: str) -> str:
    if model_type == "musicgen" or model_type == "musicgen_melody":
        return "music"
    if model_type in RECOGNITION_TYPES:
        return "transcription"
    return "speech"


def decode_audio(data: bytes, rate: int) -> Any:
    """Any supported audio file to mono float32 samples at ``rate``: 16-bit PCM WAV already at
    ``rate`` is read directly, everything else goes through the bundled ffmpeg."""
    import imageio_ffmpeg
    import numpy as np

    direct = _read_plain_wav(data, rate)
    if direct is not None:
        return direct

    command = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-nostdin",
        "-loglevel",
        "error",
        "-i",
        "pipe:0",
        "-f",
        "f32le",
        "-ac",
        "1",
        "-ar",
        str(rate),
        "pipe:1",
    ]
    try:
        completed = subprocess.run(command, input=data, capture_output=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        raise BadRequestError("The audio could not be decoded in time.", param="input_data") from None
    if completed.returncode != 0 or not completed.stdout:
        logger.info("ffmpeg could not decode the input: %s", completed.stderr[-300:].decode(errors="replace"))
        raise BadRequestError("The audio could not be decoded (corrupt or unsupported).", param="input_data")
    return np.frombuffer(completed.stdout, dtype=np.float32).copy()
