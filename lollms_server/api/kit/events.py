"""A typed view of the generation core's stream events, for the families' renderers.

The core streams ``StreamChunk(type, content, metadata)`` (``core.generation.stream`` and
``queued``); :func:`typed` reads each into one of the classes below once, so a renderer
dispatches on the class and never digs into ``content[0]["metadata"]``. (Moving these types into
the core itself, with prompt tokens and first-token time recorded there, is the next step of
issue 29; the renderers would not change.)
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from lollms_server.core.types import StreamChunk


@dataclass
class Queued:
    """Waiting for a slot (``position``/``eta``), or for the model's download (``progress``)."""

    position: int | None = None
    eta_seconds: float | None = None
    progress: dict[str, Any] = field(default_factory=dict)


@dataclass
class Started:
    """Admitted: the instance and model that answer."""

    binding: str | None
    model: str | None
    at: float  # monotonic time


@dataclass
class TextDelta:
    text: str


@dataclass
class Progress:
    """A media generation's step ``step`` of ``total``."""

    step: int
    total: int


@dataclass
class FunctionCalled:
    """A server-side function the tool loop ran (``/api/v1`` functions)."""

    record: dict[str, Any]


@dataclass
class Finished:
    """The answer's end: finish reason, usage (``prompt_tokens``, ``completion_tokens``,
    ``cached_tokens``), timings and the whole native output metadata."""

    metadata: dict[str, Any]
    outputs: list[dict[str, Any]]
    first_token_seconds: float | None = None
    """From ``Started`` to the first ``TextDelta`` (None: no text, or not streamed)."""

    @property
    def finish_reason(self) -> str | None:
        reason = self.metadata.get("finish_reason")
        return str(reason) if reason else None

    @property
    def usage(self) -> dict[str, Any]:
        return dict(self.metadata.get("usage") or {})

    @property
    def text(self) -> str:
        """The answer's text (a tool turn's: without its calls)."""
        return str(self.outputs[0].get("data") or "") if self.outputs else ""

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """A tool turn's calls ``[{id, name, arguments}]`` (``GenerationService.open_tool_turn``)."""
        return list(self.metadata.get("tool_calls") or [])


@dataclass
class Failed:
    """The generation failed: the error's type, message, HTTP status and ``Retry-After``."""

    error_type: str
    message: str
    status: int
    retry_after: int | None = None


Event = Queued | Started | TextDelta | Progress | FunctionCalled | Finished | Failed


def read(chunk: StreamChunk) -> Event | None:
    """One core event as its typed form (None for an event no renderer needs)."""
    meta = chunk.metadata
    if chunk.type == "chunk":
        return TextDelta(str(chunk.content))
    if chunk.type == "final":
        outputs = list(chunk.content or [])
        return Finished(dict(outputs[0].get("metadata") or {}) if outputs else {}, outputs)
    if chunk.type == "error":
        retry = meta.get("retry_after")
        return Failed(
            str(meta.get("type") or "error"),
            str(chunk.content),
            int(meta.get("status") or 500),
            int(retry) if retry is not None else None,
        )
    if chunk.type == "function_call":
        return FunctionCalled(dict(chunk.content or {}))
    if "binding" in meta:
        return Started(meta.get("binding"), meta.get("model"), time.monotonic())
    if "step" in meta:
        return Progress(int(meta["step"]), int(meta.get("total") or 0))
    if chunk.content in ("queued", "downloading"):
        return Queued(meta.get("queue_position"), meta.get("eta_seconds"), dict(meta))
    return None


async def typed(chunks: AsyncIterator[StreamChunk]) -> AsyncGenerator[Event, None]:
    """The typed events of a core stream (closing it when closed); ``Finished`` carries the
    time to the first token, as seen here."""
    started: float | None = None
    first: float | None = None
    try:
        async for chunk in chunks:
            event = read(chunk)
            if isinstance(event, Started):
                started = event.at
            elif isinstance(event, TextDelta) and first is None:
                first = time.monotonic()
            elif isinstance(event, Finished) and started is not None and first is not None:
                event.first_token_seconds = first - started
            if event is not None:
                yield event
    finally:
        closer = getattr(chunks, "aclose", None)
        if closer is not None:
            await closer()
