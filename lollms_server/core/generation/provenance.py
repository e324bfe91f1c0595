"""Provenance of image outputs: the one step every image of every binding passes through
(``outputs.media_outputs``), like lollms_client's ``process_image``.

- PNG text chunks: ``Software``, ``Binding``, ``Model``, ``Seed``, ``parameters`` (all of them, as
  JSON) and ``AI-Generated``. They are added to the file as it is (no re-encoding, the pixels and
  the binding's own chunks stay untouched); a key the binding already wrote (our diffusers
  binding's ``parameters``, a dropped-in lollms_client binding's ``Software``...) is kept.
- An optional visible watermark (``[provenance] watermark_image``), pasted at
  ``watermark_position``, ``watermark_scale`` of the image's width, ``watermark_opacity``; the
  image is re-encoded in its own format.
- ``[provenance] metadata = false`` switches the chunks off.

Blocking (image decoding): callers run it in a thread.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import zlib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from lollms_server import __version__
from lollms_server.core.bindings import MediaOutput
from lollms_server.core.config import ProvenanceConfig

logger = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_CHUNKS = {b"tEXt", b"zTXt", b"iTXt"}
MARGIN = 0.02
"""Watermark distance from the edges, as a fraction of the image's smaller side."""


def provenance_text(binding: str, model: str | None, parameters: dict[str, Any]) -> dict[str, str]:
    """The text chunks of one generation's images."""
    text = {
        "Software": f"lollms_server {__version__}",
        "Binding": binding,
        "Model": model or "",
        "parameters": json.dumps(parameters, sort_keys=True, default=str),
        "AI-Generated": "True",
    }
    if parameters.get("seed") is not None:
        text["Seed"] = str(parameters["seed"])
    return text


def stamp_images(
    outputs: list[MediaOutput], text: dict[str, str], config: ProvenanceConfig
) -> list[MediaOutput]:
    """``outputs`` with every image watermarked and annotated as ``config`` says (blocking)."""
    if not config.metadata and config.watermark_image is None:
        return outputs
    return [_stamp(output, text, config) if _is_image(output) else output for output in outputs]


def _is_image(output: MediaOutput) -> bool:
    return output.type == "image" and isinstance(output.data, bytes | bytearray)


def _stamp(output: MediaOutput, text: dict[str, str], config: ProvenanceConfig) -> MediaOutput:
    data: bytes = bytes(output.data)  # type: ignore[arg-type]  # _is_image checked it
    mime = output.mime_type
    try:
        if config.watermark_image is not None:
            data, mime = watermarked(data, config)
        if config.metadata and data.startswith(PNG_SIGNATURE):
            data = with_png_text(data, text)
    except Exception:  # noqa: BLE001 - an image we cannot stamp is served as the binding made it
        logger.warning("Could not stamp the provenance of an image of %s", text.get("Binding"), exc_info=True)
        return output
    return MediaOutput(output.type, data, mime, output.metadata)


# ---- PNG text chunks ---------------------------------------------------------------


def _chunks(data: bytes) -> Iterator[tuple[int, bytes, bytes]]:
    """(offset, type, body) of each chunk of a PNG file."""
    offset = len(PNG_SIGNATURE)
    while offset + 8 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        yield offset, kind, data[offset + 8 : offset + 8 + length]
        offset += 12 + length


def png_text_keys(data: bytes) -> set[str]:
    """The keywords of the text chunks a PNG file already carries."""
    return {
        body.split(b"\x00", 1)[0].decode("latin-1") for _, kind, body in _chunks(data) if kind in TEXT_CHUNKS
    }


def _itxt(key: str, value: str) -> bytes:
    body = key.encode("latin-1")[:79] + b"\x00\x00\x00\x00\x00" + value.encode("utf-8")
    return struct.pack(">I", len(body)) + b"iTXt" + body + struct.pack(">I", zlib.crc32(b"iTXt" + body))


def with_png_text(data: bytes, text: dict[str, str]) -> bytes:
    """``data`` with the ``text`` chunks it does not carry yet, inserted before IEND."""
    present = png_text_keys(data)
    added = b"".join(_itxt(key, value) for key, value in text.items() if key not in present)
    if not added:
        return data
    for offset, kind, _ in _chunks(data):
        if kind == b"IEND":
            return data[:offset] + added + data[offset:]
    raise ValueError("not a complete PNG file")


# ---- watermark ----------------------------------------------------------------------


@lru_cache(maxsize=4)
def _watermark(path: Path, mtime: float) -> Any:
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGBA")


def watermarked(data: bytes, config: ProvenanceConfig) -> tuple[bytes, str]:
    """The image with the configured watermark pasted on it, in its own format."""
    from PIL import Image

    assert config.watermark_image is not None
    path = Path(config.watermark_image)
    mark = _watermark(path, path.stat().st_mtime)
    with Image.open(io.BytesIO(data)) as source:
        image_format = source.format or "PNG"
        info = dict(source.info)
        image = source.convert("RGBA")
    width = max(1, round(image.width * config.watermark_scale))
    height = max(1, round(mark.height * width / mark.width))
    scaled = mark.resize((width, height), Image.Resampling.LANCZOS)
    alpha = scaled.getchannel("A").point(lambda value: round(value * config.watermark_opacity))
    scaled.putalpha(alpha)
    margin = round(min(image.size) * MARGIN)
    x = {"left": margin, "right": image.width - width - margin, "center": (image.width - width) // 2}
    y = {"top": margin, "bottom": image.height - height - margin, "center": (image.height - height) // 2}
    vertical, _, horizontal = config.watermark_position.partition("-")
    position = (x[horizontal or "center"], y[vertical])
    image.alpha_composite(scaled, dest=(max(0, position[0]), max(0, position[1])))
    buffer = io.BytesIO()
    if image_format == "PNG":
        from PIL.PngImagePlugin import PngInfo

        chunks = PngInfo()
        for key, value in info.items():
            if isinstance(value, str):
                chunks.add_text(key, value)
        image.save(buffer, format="PNG", pnginfo=chunks)
    else:
        image.convert("RGB").save(buffer, format=image_format, quality=95)
    mime = Image.MIME.get(image_format, "image/png")
    return buffer.getvalue(), mime
