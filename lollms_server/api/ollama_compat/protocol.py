"""Request bodies of Ollama's native API (``/api/chat``, ``/api/generate``...), after Ollama's
``docs/api.md``. Unknown fields are ignored: clients send many (``think``, ``truncate``,
``template``, ``context``...) that this server does not use."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from lollms_server.core.stops import Stop
from lollms_server.core.types import RequestModel

KeepAlive = str | float | int | None
"""``"5m"``, ``"0"``, ``0``, ``-1``, seconds... (``0`` unloads the model after the request)."""
Format = Literal["json"] | dict[str, Any] | None
"""``"json"`` or a JSON schema the answer must follow."""


class OllamaModel(RequestModel):
    model_config = ConfigDict(extra="ignore")


class Options(OllamaModel):
    """The Modelfile options this server maps (``translate.OPTION_PARAMETERS``); others
    (``num_gpu``, ``mirostat``, ``num_thread``...) are accepted and ignored."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    num_predict: int | None = None
    stop: Stop = None
    seed: int | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    num_ctx: int | None = None


class Message(OllamaModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    images: list[str] | None = Field(None, max_length=64, description="Raw base64 images.")
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = Field(None, max_length=256, description="The tool a `tool` turn answers.")


class Common(OllamaModel):
    model: str = Field(..., min_length=1, max_length=512, description="<instance> or <instance>/<model>.")
    options: Options | None = None
    keep_alive: KeepAlive = None


class ChatBody(Common):
    messages: list[Message] = Field(default_factory=list, max_length=4096)
    tools: list[dict[str, Any]] | None = Field(None, max_length=128)
    format: Format = None
    stream: bool = True


class GenerateBody(Common):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    raw: bool = False
    images: list[str] | None = Field(None, max_length=64)
    format: Format = None
    stream: bool = True


class EmbedBody(Common):
    input: str | list[str] = Field(...)


class EmbeddingsBody(Common):
    prompt: str = Field(...)


class NamedBody(OllamaModel):
    """``/api/show``, ``/api/pull``, ``/api/delete``: older clients send ``name``, newer ``model``."""

    model: str | None = Field(None, min_length=1, max_length=512)
    name: str | None = Field(None, min_length=1, max_length=512)
    stream: bool = True

    @model_validator(mode="after")
    def _named(self) -> NamedBody:
        self.model = self.model or self.name
        if not self.model:
            raise ValueError("give the model's name in `model`")
        return self
