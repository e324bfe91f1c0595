"""Media inputs: parameter checks and limits, decoding and validating input items, the
MediaRequest."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lollms_server.core.bindings import MediaRequest
from lollms_server.core.config import LimitsConfig
from lollms_server.core.errors import BadRequestError
from lollms_server.core.types import (
    AUDIO_ROLES,
    GENERATION_KINDS,
    IMAGE_ROLES,
    MASK_ROLES,
    PROMPT_ROLES,
    InputData,
    checked_parameters,
)
from lollms_server.utils.media import AUDIO_FORMATS, audio_format, check_image, decode_base64


class MediaParameters(BaseModel):
    """The media parameters the server checks; other keys pass through to the binding."""

    model_config = ConfigDict(extra="allow")

    width: int | None = Field(None, ge=16, le=4096, description="Image/video width in pixels.")
    height: int | None = Field(None, ge=16, le=4096, description="Image/video height in pixels.")
    steps: int | None = Field(None, ge=1, le=500, description="Denoising steps.")
    guidance_scale: float | None = Field(None, ge=0, le=100, description="Classifier-free guidance.")
    negative_prompt: str | None = Field(None, max_length=10_000, description="What to avoid.")
    num_images: int | None = Field(None, ge=1, le=16, description="Images per request.")
    strength: float | None = Field(None, ge=0, le=1, description="Image-to-image strength.")
    num_frames: int | None = Field(None, ge=1, le=1024, description="Video frames.")
    fps: int | None = Field(None, ge=1, le=120, description="Video frames per second.")
    duration: float | None = Field(None, gt=0, le=600, description="Audio seconds.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Random seed.")
    output_format: str | None = Field(None, max_length=16, description="png/jpeg, mp4/gif, wav.")
    language: str | None = Field(None, max_length=32, description="Speech language.")
    scheduler: str | None = Field(None, max_length=64, description="Diffusers scheduler class.")


def validate_media_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """Check the known media parameters' types and ranges (400 naming the parameter)."""
    return checked_parameters(MediaParameters, parameters, {"num_inference_steps": "steps"})


def check_limits(parameters: dict[str, Any], limits: LimitsConfig) -> None:
    """Sizes, steps, frames and durations within the server's configured maxima (400)."""
    bounds = (
        ("width", limits.max_image_side),
        ("height", limits.max_image_side),
        ("steps", limits.max_steps),
        ("num_images", limits.max_images),
        ("num_frames", limits.max_frames),
        ("duration", limits.max_audio_seconds),
    )
    for name, limit in bounds:
        if name in parameters and parameters[name] > limit:
            raise BadRequestError(
                f"Parameter '{name}' is over this server's limit of {limit:g}.", param=f"parameters.{name}"
            )


def check_inputs(inputs: list[InputData], limits: LimitsConfig) -> None:
    """Item count and total text size of a request (400)."""
    if len(inputs) > limits.max_input_items:
        raise BadRequestError(
            f"Too many input_data items (limit {limits.max_input_items}).", param="input_data"
        )
    text = sum(len(item.data) for item in inputs if item.type == "text")
    if text > limits.max_prompt_chars:
        raise BadRequestError(
            f"The text inputs hold {text} characters; the limit is {limits.max_prompt_chars}.",
            param="input_data",
        )


def _declared_mime_matches(declared: str | None, actual: str) -> bool:
    if not declared:
        return True
    aliases = {
        "image/jpg": "image/jpeg",
        "audio/x-wav": "audio/wav",
        "audio/wave": "audio/wav",
        "audio/mp3": "audio/mpeg",
        "audio/x-flac": "audio/flac",
        "video/webm": "audio/webm",
    }
    declared = aliases.get(declared.lower(), declared.lower())
    return declared == actual or declared == "application/octet-stream"


IMAGE_INPUTS = frozenset({"i2i"})
"""Generation types that read input images and a mask; the others never decode them."""
AUDIO_INPUTS = frozenset({"stt"})
"""Generation types that read an input audio file; the others never decode it."""


def build_media_request(
    generation_type: str,
    inputs: list[InputData],
    parameters: dict[str, Any],
    limits: LimitsConfig | None = None,
) -> MediaRequest:
    """Decode and check the inputs a media generation needs (400 with the reason otherwise).

    Only the items the generation type reads are decoded: input images and a mask for ``i2i``,
    the audio for ``stt``; other image or audio items are ignored without being decoded. An
    input image or mask wider or taller than ``limits.max_image_side`` is refused (the output of
    an edit has the input's size). Synchronous and free of shared state: callers may run it in a
    worker thread."""
    limits = limits or LimitsConfig()
    check_limits(parameters, limits)
    request = MediaRequest(generation_type=generation_type, parameters=parameters)
    reads_images = generation_type in IMAGE_INPUTS
    reads_audio = generation_type in AUDIO_INPUTS
    prompts: list[str] = []
    for index, item in enumerate(inputs):
        param = f"input_data[{index}]"
        if item.type == "text" and item.role in PROMPT_ROLES:
            prompts.append(item.data)
        elif item.role in MASK_ROLES or item.type == "image" or item.role in IMAGE_ROLES:
            if not reads_images:
                continue  # not used by this generation type: not decoded
            data = _decoded(item, param, limits.max_image_bytes)
            mime, _, _ = check_image(
                data, param=param, max_pixels=limits.max_image_pixels, max_side=limits.max_image_side
            )
            if not _declared_mime_matches(item.mime_type, mime):
                raise BadRequestError(
                    f"{param}: mime_type says {item.mime_type} but the data is {mime}.", param=param
                )
            if item.role in MASK_ROLES:
                request.mask = data
            else:
                request.images.append(data)
        elif item.type == "audio" or item.role in AUDIO_ROLES:
            if not reads_audio:
                continue  # not used by this generation type: not decoded
            data = _decoded(item, param, limits.max_audio_bytes)
            found = audio_format(data)
            if found is None:
                raise BadRequestError(
                    f"{param}: unsupported audio format (use {', '.join(AUDIO_FORMATS)}).", param=param
                )
            if not _declared_mime_matches(item.mime_type, AUDIO_FORMATS[found]):
                raise BadRequestError(
                    f"{param}: mime_type says {item.mime_type} but the data is {found}.", param=param
                )
            request.audio, request.audio_format = data, found
    request.prompt = "\n".join(prompts)
    if GENERATION_KINDS[generation_type].needs_prompt and not request.prompt.strip():
        raise BadRequestError(
            f"generation_type '{generation_type}' needs a text user_prompt.", param="input_data"
        )
    if generation_type == "i2i" and not request.images:
        raise BadRequestError("generation_type 'i2i' needs an input_image.", param="input_data")
    if request.mask is not None and not request.images:
        raise BadRequestError("A mask_image needs an input_image.", param="input_data")
    if generation_type == "stt" and request.audio is None:
        raise BadRequestError("generation_type 'stt' needs an input_audio.", param="input_data")
    return request


def _decoded(item: InputData, param: str, limit: int) -> bytes:
    if len(item.data) > limit * 4 // 3 + 8:  # refuse before decoding
        raise BadRequestError(f"{param} is larger than this server's limit of {limit} bytes.", param=param)
    return decode_base64(item.data, param=param)
