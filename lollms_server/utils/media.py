"""Media helpers: base64 decoding, sniffing images and audio, encoding PNG and WAV."""

from __future__ import annotations

import base64
import binascii
import io
import json
import wave
from typing import Any

from lollms_server.errors import BadRequestError

AUDIO_FORMATS = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "webm": "audio/webm",
    "flac": "audio/flac",
}


def decode_base64(data: str, *, param: str) -> bytes:
    """Raw base64 (a ``data:...;base64,`` prefix is tolerated) to bytes; 400 if it is not base64."""
    if data.startswith("data:") and "," in data[:200]:
        data = data.split(",", 1)[1]
    try:
        decoded = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError(f"{param} is not valid base64.", param=param) from None
    if not decoded:
        raise BadRequestError(f"{param} is empty.", param=param)
    return decoded


def encode_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def check_image(
    data: bytes, *, param: str, max_pixels: int = 64_000_000, max_side: int | None = None
) -> tuple[str, int, int]:
    """The mime type and size of an image; 400 if the bytes are not a complete image, or if it
    has more than ``max_pixels`` pixels or a side longer than ``max_side`` (both told by the
    header, before the pixels are decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise BadRequestError(f"{param} is too large ({width}x{height}).", param=param)
            if max_side is not None and max(width, height) > max_side:
                raise BadRequestError(
                    f"{param} is {width}x{height}; this server's limit is {max_side} pixels "
                    "a side (limits.max_image_side).",
                    param=param,
                )
            image.load()  # a truncated file fails here
            mime = Image.MIME.get(image.format or "", "application/octet-stream")
    except BadRequestError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise BadRequestError(f"{param} is not a valid image (PNG, JPEG, WebP, ...).", param=param) from None
    return mime, width, height


def audio_format(data: bytes) -> str | None:
    """wav, mp3, ogg, webm or flac from the file's first bytes (None if unrecognized)."""
    head = data[:12]
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if head[:4] == b"fLaC":
        return "flac"
    return None


def png_bytes(image: Any, parameters: dict[str, Any] | None = None) -> bytes:
    """Encode a PIL image as PNG, with the generation parameters in a ``parameters`` text chunk."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if parameters:
        info.add_text("parameters", json.dumps(parameters, sort_keys=True, default=str))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def wav_bytes(samples: Any, sample_rate: int) -> bytes:
    """Encode mono float samples in [-1, 1] (numpy array or sequence) as 16-bit PCM WAV."""
    import numpy as np

    array = np.asarray(samples, dtype=np.float32).reshape(-1)
    pcm = (np.clip(np.nan_to_num(array), -1.0, 1.0) * 32767.0).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()
