"""Benchmark: media generation through lollms_server versus calling the same pipeline directly.

For image, video, music, speech and transcription it times (median of --runs) the library call
in this process and the same request through a real server process on 127.0.0.1 (JSON answer,
base64 media included), and prints the ratio direct/server (1.00x = no server overhead).
Without arguments it builds the tiny random models the tests use; on those, fixed per-request
costs (HTTP, base64, PNG/WAV/MP4 encoding) weigh far more than with real models.

    python scripts/bench_media.py [--runs 5] [--steps 4] [--size 64]
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from tests.processes import ServerProcess


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
KEY = "bench-key-0123456789"


def median_seconds(call: Callable[[], Any], runs: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def tone_wav(seconds: float = 2.0) -> bytes:
    import numpy as np

    from lollms_server.utils.media import wav_bytes

    t = np.arange(int(16000 * seconds)) / 16000
    return wav_bytes(0.3 * np.sin(2 * np.pi * 440 * t), 16000)


def direct_calls(root: Path, steps: int, size: int, audio: bytes) -> dict[str, Callable[[], Any]]:
    """The library calls a user would write, with the same parameters the server uses."""
    import numpy as np
    import torch
    from diffusers import DiffusionPipeline
    from transformers import AutoProcessor, MusicgenForConditionalGeneration, pipeline

    from lollms_server.utils.media import png_bytes, wav_bytes

    sd = DiffusionPipeline.from_pretrained(str(root / "diffusers_binding" / "tiny-sd"))
    sd.set_progress_bar_config(disable=True)
    wan = DiffusionPipeline.from_pretrained(str(root / "diffusers_binding" / "tiny-wan"))
    wan.set_progress_bar_config(disable=True)
    music_folder = root / "transformers_audio_binding" / "tiny-musicgen"
    musicgen = MusicgenForConditionalGeneration.from_pretrained(music_folder)
    processor = AutoProcessor.from_pretrained(music_folder)
    speech = pipeline("text-to-audio", model=str(root / "transformers_audio_binding" / "tiny-vits"))
    asr = pipeline(
        "automatic-speech-recognition", model=str(root / "transformers_audio_binding" / "tiny-whisper")
    )
    samples = np.frombuffer(audio[44:], dtype="<i2").astype(np.float32) / 32767

    def image() -> bytes:
        out = sd(
            "a cat",
            num_inference_steps=steps,
            width=size,
            height=size,
            generator=torch.Generator().manual_seed(1),
        ).images[0]
        return png_bytes(out)

    def video() -> bytes:
        from diffusers.utils import export_to_video

        frames = wan(
            "a cat",
            num_frames=9,
            width=size,
            height=size,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(1),
        ).frames[0]
        with tempfile.TemporaryDirectory() as folder:  # a video is wanted as a file
            path = export_to_video(frames, str(Path(folder) / "out.mp4"), fps=8)
            return Path(path).read_bytes()

    def music() -> bytes:
        torch.manual_seed(1)
        inputs = processor(text=["calm music"], padding=True, return_tensors="pt")
        out = musicgen.generate(**inputs, do_sample=True, max_new_tokens=50, guidance_scale=3.0)
        return wav_bytes(out[0, 0].numpy(), 16000)

    def tts() -> bytes:
        out = speech("hello world")
        return wav_bytes(out["audio"], out["sampling_rate"])

    def stt() -> Any:
        return asr({"raw": samples, "sampling_rate": 16000})

    return {"image": image, "video": video, "music": music, "speech": tts, "transcription": stt}


def server_calls(url: str, steps: int, size: int, audio: bytes) -> dict[str, Callable[[], Any]]:
    client = httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=600)

    def call(generation_type: str, inputs: list[dict[str, Any]], **parameters: Any) -> Callable[[], Any]:
        def run() -> Any:
            response = client.post(
                "/api/v1/generate",
                json={"generation_type": generation_type, "input_data": inputs, "parameters": parameters},
            )
            response.raise_for_status()
            return response.json()

        return run

    def prompt(text: str) -> list[dict[str, Any]]:
        return [{"type": "text", "role": "user_prompt", "data": text}]

    audio_item = [{"type": "audio", "role": "input_audio", "data": base64.b64encode(audio).decode()}]
    return {
        "image": call("tti", prompt("a cat"), steps=steps, width=size, height=size, seed=1),
        "video": call("ttv", prompt("a cat"), num_frames=9, width=size, height=size, steps=steps, seed=1),
        "music": call("ttm", prompt("calm music"), duration=1.0, seed=1),
        "speech": call("tts", prompt("hello world"), seed=1),
        "transcription": call("stt", audio_item),
    }


def start_server(root: Path, workdir: Path) -> ServerProcess:
    from tests.processes import start_lollms

    config = {
        "server": {"auto_install_requirements": False},
        "logging": {"level": "WARNING"},
        "security": {"api_keys": [KEY]},
        "bindings": {
            "images": {
                "type": "diffusers_binding",
                "device": "cpu",
                "models_folder": str(root / "diffusers_binding"),
            },
            "audio": {
                "type": "transformers_audio_binding",
                "device": "cpu",
                "models_folder": str(root / "transformers_audio_binding"),
            },
        },
        "defaults": {
            "tti_binding": "images",
            "tti_model": "tiny-sd",
            "ttv_binding": "images",
            "ttv_model": "tiny-wan",
            "ttm_binding": "audio",
            "ttm_model": "tiny-musicgen",
            "tts_binding": "audio",
            "tts_model": "tiny-vits",
            "stt_binding": "audio",
            "stt_model": "tiny-whisper",
        },
    }
    return start_lollms(config, workdir)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    from tests import tiny_media_models as tiny

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        root = workdir / "models"
        tiny.build_tiny_stable_diffusion(root / "diffusers_binding" / "tiny-sd")
        tiny.build_tiny_wan(root / "diffusers_binding" / "tiny-wan")
        tiny.build_tiny_musicgen(root / "transformers_audio_binding" / "tiny-musicgen")
        tiny.build_tiny_vits(root / "transformers_audio_binding" / "tiny-vits")
        tiny.build_tiny_whisper(root / "transformers_audio_binding" / "tiny-whisper")
        audio = tone_wav()
        direct = {
            name: median_seconds(call, args.runs)
            for name, call in direct_calls(root, args.steps, args.size, audio).items()
        }
        server = start_server(root, workdir)
        url = server.url
        try:
            served = {
                name: median_seconds(call, args.runs)
                for name, call in server_calls(url, args.steps, args.size, audio).items()
            }
        finally:
            server.stop()
    print(f"{'':<14}{'direct ms':>12}{'server ms':>12}{'direct/server':>16}")
    for name in direct:
        ratio = direct[name] / served[name]
        print(f"{name:<14}{direct[name] * 1000:12.1f}{served[name] * 1000:12.1f}{ratio:15.2f}x")


if __name__ == "__main__":
    main()
