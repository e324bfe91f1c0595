"""The provenance step of image outputs: PNG text chunks added without touching the pixels or
the binding's own chunks, the metadata switch, and the visible watermark."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lollms_server.core.bindings import MediaOutput
from lollms_server.core.config import ProvenanceConfig
from lollms_server.core.generation.provenance import provenance_text, stamp_images


def png(color: tuple[int, int, int] = (10, 20, 30), text: dict[str, str] | None = None) -> bytes:
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), color).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


TEXT = provenance_text("images", "tiny-sd", {"seed": 5, "width": 40, "prompt_note": "é"})


def test_text_chunks_are_added_and_the_bindings_own_kept() -> None:
    source = png(text={"parameters": '{"seed": 5, "by": "binding"}', "Software": "LoLLMS"})
    [stamped] = stamp_images([MediaOutput("image", source, "image/png")], TEXT, ProvenanceConfig())
    image = opened(stamped.data)
    assert image.text["Software"] == "LoLLMS"  # the binding's own wins
    assert json.loads(image.text["parameters"]) == {"seed": 5, "by": "binding"}
    assert image.text["Binding"] == "images" and image.text["Model"] == "tiny-sd"
    assert image.text["Seed"] == "5" and image.text["AI-Generated"] == "True"
    assert image.tobytes() == opened(source).tobytes()  # pixels untouched
    fresh = opened(stamp_images([MediaOutput("image", png(), "image/png")], TEXT, ProvenanceConfig())[0].data)
    assert json.loads(fresh.text["parameters"])["prompt_note"] == "é"
    assert fresh.text["Software"].startswith("lollms_server ")


def test_metadata_can_be_switched_off_and_other_outputs_pass() -> None:
    source = png()
    outputs = [MediaOutput("image", source, "image/png"), MediaOutput("audio", b"RIFF....", "audio/wav")]
    same = stamp_images(outputs, TEXT, ProvenanceConfig(metadata=False))
    assert same[0].data == source and same[1] is outputs[1]
    audio = stamp_images(outputs, TEXT, ProvenanceConfig())[1]
    assert audio is outputs[1]


def test_a_visible_watermark_in_the_chosen_corner(tmp_path: Path) -> None:
    mark = tmp_path / "mark.png"
    Image.new("RGBA", (10, 10), (255, 255, 255, 255)).save(mark)
    config = ProvenanceConfig(watermark_image=mark, watermark_position="top-left", watermark_scale=0.25)
    [stamped] = stamp_images([MediaOutput("image", png((0, 0, 0)), "image/png")], TEXT, config)
    image = opened(stamped.data).convert("RGB")
    assert image.getpixel((3, 3))[0] > 100  # half-opaque white over black
    assert image.getpixel((39, 19)) == (0, 0, 0)
    assert opened(stamped.data).text["Binding"] == "images"
    jpeg = io.BytesIO()
    Image.new("RGB", (40, 20), (0, 0, 0)).save(jpeg, format="JPEG")
    [out] = stamp_images([MediaOutput("image", jpeg.getvalue(), "image/jpeg")], TEXT, config)
    assert out.mime_type == "image/jpeg" and opened(out.data).format == "JPEG"


def test_an_image_that_cannot_be_read_is_served_as_it_is(tmp_path: Path) -> None:
    broken = MediaOutput("image", b"\x89PNG\r\n\x1a\nbroken", "image/png")
    config = ProvenanceConfig(watermark_image=tmp_path / "missing.png")
    assert stamp_images([broken], TEXT, config)[0] is broken
