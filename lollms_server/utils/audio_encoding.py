"""Audio re-encoding with the ffmpeg binary bundled by ``imageio-ffmpeg`` (a subprocess, awaited
off the event loop, killed past its timeout): WAV or another container in, mp3/opus/aac/flac (or WAV) out."""

from __future__ import annotations

import asyncio
import contextlib

from lollms_server.errors import BadRequestError, BindingError

ENCODINGS: dict[str, tuple[list[str], str]] = {
    "mp3": (["-c:a", "libmp3lame", "-b:a", "128k", "-f", "mp3"], "audio/mpeg"),
    "opus": (["-c:a", "libopus", "-b:a", "64k", "-f", "ogg"], "audio/ogg"),
    "aac": (["-c:a", "aac", "-b:a", "128k", "-f", "adts"], "audio/aac"),
    "flac": (["-c:a", "flac", "-f", "flac"], "audio/flac"),
    "wav": (["-c:a", "pcm_s16le", "-f", "wav"], "audio/wav"),
}
"""Target format -> (ffmpeg output arguments, mime type)."""
ENCODE_TIMEOUT_SECONDS = 120.0
MAX_ERROR_CHARS = 300


def ffmpeg_executable() -> str:
    """The bundled ffmpeg (400 naming the extra to install when it is missing)."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise BadRequestError(
            "Encoding speech as mp3, opus, aac or flac needs imageio-ffmpeg "
            "(pip install lollms_server[audio]); ask for wav or pcm.",
            param="response_format",
        ) from None
    try:
        executable: str = imageio_ffmpeg.get_ffmpeg_exe()  # runs `ffmpeg -version` the first time
    except RuntimeError:  # no bundled build for this platform and no ffmpeg on the PATH
        raise BadRequestError(
            "This server has no ffmpeg to encode mp3, opus, aac or flac; ask for wav or pcm.",
            param="response_format",
        ) from None
    return executable


async def encode_audio(
    data: bytes, target: str, timeout: float = ENCODE_TIMEOUT_SECONDS
) -> tuple[bytes, str]:
    """``data`` (any container ffmpeg reads) encoded as ``target``; returns (bytes, mime type)."""
    arguments, mime = ENCODINGS[target]
    executable = await asyncio.to_thread(ffmpeg_executable)
    process = await asyncio.create_subprocess_exec(
        executable,
        "-hide_banner",
        "-loglevel",
        "error",
        "-i",
        "pipe:0",
        "-vn",
        *arguments,
        "pipe:1",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        output, errors = await asyncio.wait_for(process.communicate(data), timeout)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise BindingError(f"Encoding the audio as {target} took more than {timeout:g} s.") from None
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if process.returncode != 0 or not output:
        detail = errors.decode("utf-8", "replace").strip()[:MAX_ERROR_CHARS]
        raise BindingError(f"Encoding the audio as {target} failed: {detail or 'no output'}.")
    return output, mime
