"""Request schemas of OpenAI's Responses API (``/v1/responses``).

Unknown fields are ignored, as OpenAI's clients (Codex CLI first) send many optional ones;
``input`` items and ``tools`` stay plain dicts here and are read by ``dialect``, which tolerates
item and tool types it does not know (a warning, never a 400 that would break Codex).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from lollms_server.core.types import RequestModel

MAX_ITEMS = 4096
"""Input items and tools one request may carry."""


class ResponsesModel(RequestModel):
    model_config = ConfigDict(extra="ignore")


class Reasoning(ResponsesModel):
    effort: str | None = Field(None, max_length=32)
    summary: str | None = Field(None, max_length=32)


class TextOptions(ResponsesModel):
    format: dict[str, Any] | None = Field(
        None,
        description='{"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "schema": ...}',
    )
    verbosity: str | None = Field(None, max_length=16)


class ResponsesInput(ResponsesModel):
    """What both ``POST /v1/responses`` and ``POST /v1/responses/input_tokens`` read."""

    model: str | None = Field(None, max_length=512, description="<binding instance> or <instance>/<model>.")
    input: str | Annotated[list[dict[str, Any]], Field(max_length=MAX_ITEMS)] = ""
    instructions: str | None = None
    previous_response_id: str | None = Field(None, max_length=128)
    tools: list[dict[str, Any]] | None = Field(None, max_length=MAX_ITEMS)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextOptions | None = None
    reasoning: Reasoning | None = None


class ResponsesRequest(ResponsesInput):
    stream: bool = False
    store: bool = Field(True, description="Keep the response for GET and previous_response_id.")
    background: bool = False
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, description="Extension: the sampling seed.")
    metadata: dict[str, str] | None = Field(None, max_length=16)
    include: list[str] | None = Field(None, max_length=64)
    prompt_cache_key: str | None = Field(None, max_length=256)
    user: str | None = Field(None, max_length=256)
    personality: str | None = Field(None, max_length=256, description="lollms personality (extension).")
    priority: Literal["interactive", "batch"] | None = Field(
        None, description="batch: wait behind interactive requests (extension; never raises a key's)."
    )
