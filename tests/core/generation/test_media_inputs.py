"""Media inputs: which items a generation type decodes, and the size limit on input images."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import pytest

from lollms_server.core.config import LimitsConfig
from lollms_server.core.errors import BadRequestError
from lollms_server.core.generation import media_inputs
from lollms_server.core.generation.media_inputs import build_media_request
from lollms_server.core.types import InputData
from lollms_server.utils.media import wav_bytes


def text(data: str = "a cat") -> InputData:
    return InputData(type="text", role="user_prompt", data=data)


@cache
def png_b64(width: int, height: int, color: tuple[int, int, int] = (40, 90, 200)) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def image(width: int, height: int, role: str = "input_image") -> InputData:
    return InputData(type="image", role=role, data=png_b64(width, height))


def audio() -> InputData:
    return InputData(
        type="audio", role="input_audio", data=base64.b64encode(wav_bytes([0.0] * 160, 16000)).decode()
    )


class Counting:
    """Wraps a function of media_inputs and counts its calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.calls = 0
        original = getattr(media_inputs, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(media_inputs, name, counted)


# ---- #8: input images larger than max_image_side ---------------------------------------------
def test_an_input_image_wider_than_max_image_side_is_refused() -> None:
    limits = LimitsConfig(max_image_side=256)
    with pytest.raises(BadRequestError) as refused:
        build_media_request("i2i", [text(), image(512, 384)], {}, limits)
    assert str(refused.value) == (
        "input_data[1] is 512x384; this server's limit is 256 pixels a side (limits.max_image_side)."
    )
    assert refused.value.param == "input_data[1]"
    # taller than the limit too, and the same size through tti parameters is refused as well
    with pytest.raises(BadRequestError, match=r"input_data\[1\] is 200x300; .* limit is 256"):
        build_media_request("i2i", [text(), image(200, 300)], {}, limits)
    with pytest.raises(BadRequestError, match="limit of 256"):
        build_media_request("tti", [text()], {"width": 512}, limits)


def test_a_mask_larger_than_max_image_side_is_refused() -> None:
    limits = LimitsConfig(max_image_side=256)
    inputs = [text(), image(256, 192), image(512, 384, role="mask_image")]
    with pytest.raises(BadRequestError, match=r"^input_data\[2\] is 512x384; .*limit is 256 pixels a side"):
        build_media_request("i2i", inputs, {}, limits)


def test_images_at_the_limit_are_accepted() -> None:
    limits = LimitsConfig(max_image_side=256)
    inputs = [text(), image(256, 192), image(256, 192, role="mask_image")]
    request = build_media_request("i2i", inputs, {}, limits)
    assert len(request.images) == 1 and request.mask is not None


def test_an_oversized_input_is_refused_from_its_header_without_decoding_pixels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from PIL import ImageFile

    loads = 0
    original = ImageFile.ImageFile.load

    def load(self: Any) -> Any:
        nonlocal loads
        loads += 1
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    # a 4000x4000 solid PNG (16 Mpx, ~50 KB): under max_image_pixels, over the default side
    with pytest.raises(BadRequestError, match=r"is 4000x4000; this server's limit is 2048 pixels a side"):
        build_media_request("i2i", [text(), image(4000, 4000)], {})
    assert loads == 0


# ---- #9: only the images the generation type uses are decoded -----------------------------------
@pytest.mark.parametrize("generation_type", ["tti", "ttv", "ttm", "tts"])
def test_types_that_use_no_image_decode_none(monkeypatch: pytest.MonkeyPatch, generation_type: str) -> None:
    checked = Counting(monkeypatch, "check_image")
    decoded = Counting(monkeypatch, "decode_base64")
    big = image(4000, 4000)
    garbage = InputData(type="image", role="input_image", data="not base64 at all!!")
    inputs = [text(), *[big] * 24, garbage, image(64, 64, role="mask_image"), audio()]
    request = build_media_request(generation_type, inputs, {})
    assert (checked.calls, decoded.calls) == (0, 0)
    assert request.images == [] and request.mask is None and request.audio is None
    assert request.prompt == "a cat"


def test_i2i_decodes_its_images_and_mask_but_not_audio(monkeypatch: pytest.MonkeyPatch) -> None:
    checked = Counting(monkeypatch, "check_image")
    decoded = Counting(monkeypatch, "decode_base64")
    inputs = [text(), image(64, 48), audio(), image(32, 32), image(64, 48, role="mask_image")]
    request = build_media_request("i2i", inputs, {})
    assert (checked.calls, decoded.calls) == (3, 3)
    assert len(request.images) == 2 and request.mask is not None and request.audio is None


def test_stt_decodes_its_audio_but_no_image(monkeypatch: pytest.MonkeyPatch) -> None:
    checked = Counting(monkeypatch, "check_image")
    request = build_media_request("stt", [image(4000, 4000), audio()], {})
    assert checked.calls == 0 and request.images == []
    assert request.audio is not None and request.audio_format == "wav"


def test_bad_images_are_still_refused_where_they_are_used() -> None:
    garbage = InputData(type="image", role="input_image", data=base64.b64encode(b"plain text").decode())
    with pytest.raises(BadRequestError, match=r"input_data\[1\] is not a valid image"):
        build_media_request("i2i", [text(), garbage], {})
    with pytest.raises(BadRequestError, match="needs an input_image"):
        build_media_request("i2i", [text()], {})


def test_build_media_request_runs_in_worker_threads() -> None:
    """The service may call it off the loop: concurrent calls give the sequential results."""
    cases = [
        ("i2i", [text(f"edit {index}"), image(16 + index, 16), image(16 + index, 16, role="mask_image")])
        for index in range(16)
    ]
    expected = [build_media_request(kind, inputs, {"seed": 1}) for kind, inputs in cases]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda case: build_media_request(case[0], case[1], {"seed": 1}), cases * 4))
    assert results == expected * 4
