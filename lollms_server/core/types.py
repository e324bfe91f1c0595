"""Request and output shapes shared by the API and the core (DESIGN §3).

They live in ``core`` because the orchestrator consumes them and ``core`` never imports
``api``; ``api/models.py`` re-exports them next to the API-only schemas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

GenerationTypeName = Literal["ttt", "tti", "i2i", "ttv", "ttm", "tts", "stt"]
CardGenerationType = Literal[GenerationTypeName, "embed"]
"""What a binding card may declare: the request types plus ``embed`` (``/v1/embeddings``)."""
InputType = Literal["text", "image", "audio", "video", "document"]
OutputType = Literal["text", "image", "audio", "video", "json", "error", "info"]
ChunkType = Literal["chunk", "info", "error", "final", "function_call"]

MAX_NAME_LENGTH = 256


@dataclass(frozen=True)
class GenerationKind:
    """One generation type: the Binding method that serves it and what its inputs need."""

    name: str
    method: str
    needs_prompt: bool
    description: str


GENERATION_KINDS: dict[str, GenerationKind] = {
    kind.name: kind
    for kind in (
        GenerationKind("ttt", "stream_text", False, "text"),
        GenerationKind("tti", "generate_image", True, "text to image"),
        GenerationKind("i2i", "edit_image", True, "image edit"),
        GenerationKind("ttv", "generate_video", True, "text to video"),
        GenerationKind("ttm", "generate_music", True, "text to music"),
        GenerationKind("tts", "synthesize_speech", True, "text to speech"),
        GenerationKind("stt", "transcribe", False, "speech to text"),
    )
}
"""The one table of generation types (``GenerationTypeName`` lists the same names)."""
GENERATION_TYPES: tuple[str, ...] = tuple(GENERATION_KINDS)

# The input-role vocabulary of ``input_data`` items (one place for every reader).
CHAT_ROLES = {
    "user_prompt": "user",
    "user": "user",
    "prompt": "user",
    "assistant": "assistant",
    "system": "system",
}
"""Roles of text items that become chat turns, with the chat role they take."""
PROMPT_ROLES = frozenset(role for role, chat in CHAT_ROLES.items() if chat == "user")
"""The user's text: a chat user turn, the prompt of a media generation."""
SYSTEM_ROLES = frozenset({"system_context", "system_prompt"})
"""Text merged into the system message."""
IMAGE_ROLES = frozenset({"input_image", "image"})
MASK_ROLES = frozenset({"mask_image", "mask"})
AUDIO_ROLES = frozenset({"input_audio", "audio"})


def has_lone_surrogate(value: Any) -> bool:
    """True when a string anywhere in ``value`` holds a lone UTF-16 surrogate (JSON allows
    ``"\\ud800"``, UTF-8 cannot encode it: it would break every answer that echoes it).
    Iterative: a value nested deeper than Python's recursion limit is walked like any other."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
    return False


def checked_parameters(
    model: type[BaseModel], parameters: dict[str, Any], aliases: dict[str, str]
) -> dict[str, Any]:
    """Validate generation parameters with ``model`` (400 naming the parameter); ``aliases``
    maps legacy names to current ones (n_predict -> max_tokens). Unknown keys pass through."""
    from lollms_server.core.errors import BadRequestError

    for legacy, current in aliases.items():
        if legacy in parameters and current not in parameters:
            parameters = {**parameters, current: parameters[legacy]}
    for name, value in parameters.items():  # the pass-through ones too: NaN breaks every sampler
        if isinstance(value, float) and not math.isfinite(value):
            raise BadRequestError(
                f"Invalid parameter '{name}': it must be a finite number.", param=f"parameters.{name}"
            )
    try:
        checked = model.model_validate(parameters)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(part) for part in first["loc"])
        raise BadRequestError(
            f"Invalid parameter '{name}': {first['msg']}.", param=f"parameters.{name}"
        ) from None
    return {key: value for key, value in checked.model_dump().items() if value is not None}


class RequestModel(BaseModel):
    """Base of request bodies: strings must be encodable Unicode."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        if has_lone_surrogate(data):
            raise ValueError("strings must be valid Unicode (a lone surrogate such as \\ud800 was sent)")
        return data


class InputData(RequestModel):
    """One input item: text, or base64 media with its role (user_prompt, input_image, ...)."""

    model_config = ConfigDict(extra="forbid")

    type: InputType = Field("text", description="Kind of data.")
    role: str = Field(
        "user_prompt",
        max_length=64,
        description="user_prompt, system_context, user, assistant, input_image, mask_image, input_audio, ...",
    )
    data: str = Field(..., description="Text, or raw base64 for media (no data: prefix).")
    mime_type: str | None = Field(None, max_length=128, description="Mime type of media data.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Free-form metadata.")


class GenerateRequest(RequestModel):
    """Body of ``POST /api/v1/generate``."""

    model_config = ConfigDict(extra="forbid")

    input_data: list[InputData] = Field(
        default_factory=list, max_length=1024, description="Inputs; at least one, or use `prompt`."
    )
    prompt: str | None = Field(None, description="Shortcut for a single text user_prompt (legacy clients).")
    personality: str | None = Field(None, max_length=MAX_NAME_LENGTH, description="Personality folder name.")
    binding_name: str | None = Field(None, max_length=MAX_NAME_LENGTH, description="Binding instance.")
    model_name: str | None = Field(None, max_length=512, description="Model of that binding.")
    generation_type: GenerationTypeName = Field("ttt", description="What to generate.")
    stream: bool = Field(False, description="Stream Server-Sent Events (StreamChunk JSON).")
    parameters: dict[str, Any] = Field(default_factory=dict, description="Generation parameters.")
    functions: list[str] | None = Field(None, description="Functions the model may call.")
    priority: Literal["interactive", "batch"] | None = Field(
        None, description="batch: wait behind interactive requests (a key's priority is never raised)."
    )

    @model_validator(mode="after")
    def _has_input(self) -> GenerateRequest:
        if self.prompt is not None:
            self.input_data = [InputData(type="text", role="user_prompt", data=self.prompt), *self.input_data]
            self.prompt = None
        if not self.input_data:
            raise ValueError("input_data must contain at least one item (or give `prompt`)")
        return self


class OutputData(BaseModel):
    """One output item; media is raw base64 with its mime type."""

    type: OutputType = Field(..., description="Kind of output.")
    data: Any = Field(..., description="Text, JSON, or raw base64 media.")
    mime_type: str | None = Field(None, description="Mime type of data.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Model, seed, parameters, timings.")


class GenerateResponse(BaseModel):
    personality: str | None = Field(None, description="Personality used, if any.")
    request_id: str = Field(..., description="Id of this request (also in X-Request-ID).")
    output: list[OutputData] = Field(..., description="Outputs.")
    execution_time: float = Field(..., description="Seconds from arrival to answer.")


class StreamChunk(BaseModel):
    """One Server-Sent Event of a streamed generation."""

    type: ChunkType = Field(..., description="chunk | info | error | final | function_call.")
    content: Any = Field(None, description="Text piece, message, or the final [OutputData].")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Extra data.")
