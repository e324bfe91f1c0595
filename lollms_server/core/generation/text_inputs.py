"""Text inputs: parameter checks, chat messages from ``input_data``, the TextRequest."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lollms_server.core.bindings import TextRequest
from lollms_server.core.errors import BadRequestError
from lollms_server.core.personalities import Personality
from lollms_server.core.stops import Stop
from lollms_server.core.types import CHAT_ROLES, IMAGE_ROLES, SYSTEM_ROLES, InputData, checked_parameters


class TextParameters(BaseModel):
    """The text parameters the server understands; other keys pass through to the binding."""

    model_config = ConfigDict(extra="allow")

    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float | None = Field(None, ge=0, le=10)
    top_k: int | None = Field(None, ge=0, le=100_000)
    top_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0, le=10)
    min_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stop: Stop = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    system_message: str | None = None


def validate_text_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """Check the known text parameters' types and ranges (400 naming the parameter)."""
    return checked_parameters(TextParameters, parameters, {"n_predict": "max_tokens"})


def build_messages(inputs: list[InputData], system_message: str | None) -> list[dict[str, Any]]:
    """Chat messages (OpenAI shape) from input items; images join the last user turn."""
    system_parts: list[str] = [system_message] if system_message else []
    messages: list[dict[str, Any]] = []
    images: list[InputData] = []
    for item in inputs:
        if item.type == "image" or item.role in IMAGE_ROLES:
            if item.role in IMAGE_ROLES:
                images.append(item)
            continue
        if item.type != "text":
            continue
        if item.role in SYSTEM_ROLES:
            system_parts.append(item.data)
        elif item.role in CHAT_ROLES:
            messages.append({"role": CHAT_ROLES[item.role], "content": item.data})
    if not any(message["role"] == "user" for message in messages):
        raise BadRequestError(
            "A text generation needs a text input with role 'user_prompt'.", param="input_data"
        )
    if images:
        last_user = max(i for i, message in enumerate(messages) if message["role"] == "user")
        parts: list[dict[str, Any]] = [{"type": "text", "text": messages[last_user]["content"]}]
        for image in images:
            mime = image.mime_type or "image/png"
            parts.append({"type": "image_url", "image_url": {"url": f"data:{mime};base64,{image.data}"}})
        messages[last_user] = {"role": "user", "content": parts}
    if system_parts:
        messages.insert(0, {"role": "system", "content": "\n\n".join(system_parts)})
    return messages


def text_request(
    inputs: list[InputData], parameters: dict[str, Any], personality: Personality | None = None
) -> TextRequest:
    """Chat messages; the request's system_message wins over the personality's conditioning.
    ``raw_prompt`` asks for a completion of the text as written, with no chat template."""
    system_message = parameters.pop("system_message", None)
    prompt_format: dict[str, str] = {}
    if personality is not None:
        config = personality.config
        system_message = system_message or config.personality_conditioning or None
        prompt_format = {
            "user_prefix": config.user_message_prefix,
            "ai_prefix": config.ai_message_prefix,
            "link_text": config.link_text,
        }
    if parameters.pop("raw_prompt", False):
        text = "".join(item.data for item in inputs if item.type == "text")
        return TextRequest(messages=[{"role": "user", "content": text}], parameters=parameters, prompt=text)
    return TextRequest(
        messages=build_messages(inputs, system_message), parameters=parameters, prompt_format=prompt_format
    )
