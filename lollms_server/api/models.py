"""Pydantic schemas of the native API (DESIGN §3).

The generation shapes live in ``core.types`` (the orchestrator uses them) and are re-exported
here, next to the schemas only the HTTP layer needs.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lollms_server.core.types import (
    MAX_NAME_LENGTH,
    GenerateRequest,
    GenerateResponse,
    InputData,
    OutputData,
    RequestModel,
    StreamChunk,
)

__all__ = [
    "BindingsPublic",
    "ERROR_RESPONSES",
    "ErrorResponse",
    "CountTokensResponse",
    "DefaultBindingsPublic",
    "DetokenizeRequest",
    "DetokenizeResponse",
    "GenerateRequest",
    "GenerateResponse",
    "HealthPublic",
    "InputData",
    "ModelsPublic",
    "OutputData",
    "StreamChunk",
    "TokenizeRequest",
    "TokenizeResponse",
]


class ErrorDetail(BaseModel):
    type: str = Field(..., description="Error type, e.g. invalid_request_error.")
    message: str = Field(..., description="What went wrong (safe to show).")
    param: str | None = Field(None, description="The request field at fault, when there is one.")


class ErrorResponse(BaseModel):
    """The one shape of every error answer."""

    error: ErrorDetail
    detail: str = Field(..., description="The message again, for lollms_server clients.")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Bad input"),
        (401, "Missing or invalid API key"),
        (403, "The key lacks the scope or may not use the binding"),
        (404, "Unknown binding, model, personality or function"),
        (413, "Request body too large"),
        (422, "Request does not match the schema"),
        (500, "A binding failed (no internals shown)"),
        (503, "Busy: queue full or queue timeout (Retry-After)"),
        (504, "Generation timeout"),
    )
}


class HealthPublic(BaseModel):
    status: str = Field(..., description="'ok' when the server is serving.")
    version: str = Field(..., description="Server version.")
    api_key_required: bool = Field(..., description="Whether requests must carry an API key.")


class BindingsPublic(BaseModel):
    binding_types: dict[str, dict[str, Any]] = Field(..., description="Binding cards by type name.")
    binding_instances: dict[str, dict[str, Any]] = Field(
        ..., description="Configured instances (secret settings masked)."
    )


class ModelsPublic(BaseModel):
    models: dict[str, list[str]] = Field(..., description="Model files per sub-folder of the models folder.")


class DefaultBindingsPublic(BaseModel):
    defaults: dict[str, Any] = Field(..., description="Default binding and model per generation type.")


class _ModelTarget(RequestModel):
    model_config = ConfigDict(extra="forbid")

    binding_name: str | None = Field(None, max_length=MAX_NAME_LENGTH, description="Binding instance.")
    model_name: str | None = Field(None, max_length=512, description="Model of that binding.")


class TokenizeRequest(_ModelTarget):
    text: str = Field(..., description="Text to tokenize.")


class TokenizeResponse(BaseModel):
    tokens: list[int] = Field(..., description="Token ids.")
    count: int = Field(..., description="Number of tokens.")


class DetokenizeRequest(_ModelTarget):
    tokens: list[int] = Field(..., max_length=1_000_000, description="Token ids.")


class DetokenizeResponse(BaseModel):
    text: str = Field(..., description="Decoded text.")


class CountTokensResponse(BaseModel):
    count: int = Field(..., description="Number of tokens.")
