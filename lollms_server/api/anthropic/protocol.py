"""Request bodies of Anthropic's Messages API (``/v1/messages``, ``/v1/messages/count_tokens``),
after Anthropic's API reference. Unknown fields are ignored: Claude Code sends many
(``context_management``, ``output_config``, ``service_tier``...) that this server does not use;
``metadata``, ``thinking`` and every block's ``cache_control`` are accepted and unused."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from lollms_server.core.types import RequestModel


class AnthropicModel(RequestModel):
    model_config = ConfigDict(extra="ignore")


class Message(AnthropicModel):
    role: Literal["user", "assistant", "system"] = Field(
        ..., description="system: Claude Code sends system messages inside the list too."
    )
    content: str | list[dict[str, Any]] = Field(..., description="A string or content blocks.")


class Tool(AnthropicModel):
    name: str = Field(..., min_length=1, max_length=256)
    description: str | None = None
    input_schema: dict[str, Any] | None = Field(None, description="JSON schema of the tool's input.")
    type: str | None = Field(None, max_length=128, description="custom, or a server tool (ignored).")


class CountTokensRequest(AnthropicModel):
    model: str = Field(..., min_length=1, max_length=512, description="<instance> or <instance>/<model>.")
    messages: list[Message] = Field(..., min_length=1, max_length=4096)
    system: str | list[dict[str, Any]] | None = None
    tools: list[Tool] | None = Field(None, max_length=256)
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(..., ge=1, le=1_000_000)
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0, le=100_000)
    stop_sequences: list[str] | None = Field(None, max_length=16)
    metadata: dict[str, Any] | None = None
