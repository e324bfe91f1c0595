"""Request schemas of the OpenAI-compatible API (``/v1``); unknown fields are ignored, as OpenAI
clients send many optional ones."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from lollms_server.core.stops import Stop
from lollms_server.core.types import RequestModel


class OpenAIModel(RequestModel):
    model_config = ConfigDict(extra="ignore")


class ChatMessage(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(OpenAIModel):
    include_usage: bool = False


class ChatCompletionRequest(OpenAIModel):
    model: str | None = Field(
        None,
        max_length=512,
        description="<binding instance> or <binding instance>/<model>; omitted: the default text model.",
    )
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=4096)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = None
    stop: Stop = None
    n: int = Field(1, ge=1, le=1, description="Only one choice is supported.")
    response_format: dict[str, Any] | None = Field(
        None, description='{"type": "json_object"} or {"type": "json_schema", "json_schema": {"schema": ...}}'
    )
    logit_bias: dict[str, float] | None = Field(None, max_length=1024)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    personality: str | None = Field(None, max_length=256, description="lollms personality (extension).")
    priority: Literal["interactive", "batch"] | None = Field(
        None, description="batch: wait behind interactive requests (extension; never raises a key's)."
    )


class CompletionRequest(OpenAIModel):
    model: str = Field(..., max_length=512)
    prompt: str | list[str] = Field(...)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(16, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    stop: Stop = None
    n: int = Field(1, ge=1, le=1)
    priority: Literal["interactive", "batch"] | None = Field(None, description="See the chat request.")


class EmbeddingRequest(OpenAIModel):
    model: str = Field(..., max_length=512)
    input: str | list[str] = Field(...)
    encoding_format: Literal["float", "base64"] = "float"


class ImageGenerationRequest(OpenAIModel):
    prompt: str = Field(..., min_length=1, max_length=32_000)
    model: str | None = Field(None, max_length=512)
    n: int = Field(1, ge=1, le=10)
    size: str | None = Field(None, max_length=16)
    response_format: Literal["b64_json", "url"] | None = None
    quality: str | None = None
    style: str | None = None
    # extension fields (lollms_client's image bindings send them)
    seed: int | None = Field(None, description="Seed of the generation (extension).")
    negative_prompt: str | None = Field(None, max_length=32_000, description="What to avoid (extension).")
    num_inference_steps: int | None = Field(None, ge=1, le=1000, description="Steps (extension).")
    guidance_scale: float | None = Field(None, ge=0, le=100, description="Guidance scale (extension).")

    def extension_parameters(self) -> dict[str, Any]:
        """The extension fields as native parameters (``num_inference_steps`` is ``steps``)."""
        return image_extension_parameters(
            self.seed, self.negative_prompt, self.num_inference_steps, self.guidance_scale
        )


def image_extension_parameters(
    seed: int | None, negative_prompt: str | None, steps: int | None, guidance_scale: float | None
) -> dict[str, Any]:
    """Native parameters of the image extension fields that were sent."""
    found = {
        "seed": seed,
        "negative_prompt": negative_prompt,
        "steps": steps,
        "guidance_scale": guidance_scale,
    }
    return {key: value for key, value in found.items() if value not in (None, "")}


class SpeechRequest(OpenAIModel):
    model: str = Field(..., max_length=512)
    input: str = Field(..., min_length=1, max_length=4096)
    voice: str | None = Field(None, max_length=64)
    response_format: Literal["wav", "mp3", "opus", "aac", "flac", "pcm"] = "wav"
    speed: float = Field(1.0, ge=0.25, le=4.0)
