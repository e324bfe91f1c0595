"""The binding contract's value types: what a binding call takes and returns (DESIGN §5).

Plain dataclasses with no behaviour beyond convenience properties, so that every layer (the
orchestrator, the pool hosts, the bindings) can share them without importing the manager.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from lollms_server.core.types import GENERATION_KINDS


class CancelToken(threading.Event):
    """Set when the client left or the server stops; bindings check it between steps."""

    @property
    def cancelled(self) -> bool:
        return self.is_set()

    def check(self) -> None:
        """Raise :class:`GenerationCancelled` if the generation should stop (call between steps)."""
        if self.is_set():
            raise GenerationCancelled()


@dataclass
class TextRequest:
    """What a text binding receives: chat messages (OpenAI shape) and merged parameters."""

    messages: list[dict[str, Any]]
    parameters: dict[str, Any] = field(default_factory=dict)
    prompt: str | None = None  # raw completion prompt, when the caller wants no chat template
    prompt_format: dict[str, str] = field(default_factory=dict)
    """For bindings that build a raw prompt themselves: ``user_prefix``, ``ai_prefix`` and
    ``link_text`` of the personality (empty when there is none)."""

    @property
    def stop(self) -> list[str]:
        stop = self.parameters.get("stop") or []
        return [stop] if isinstance(stop, str) else list(stop)


@dataclass
class TextChunk:
    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    metadata: dict[str, Any] | None = None  # on the last chunk: extra output metadata


@dataclass
class TextResult:
    text: str
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


class GenerationCancelled(Exception):
    """Raised inside a binding's worker thread when the client left (see ``CancelToken.check``)."""


@dataclass
class MediaRequest:
    """What a media binding receives: the prompt, decoded inputs and merged parameters.

    ``images`` and ``mask`` hold the bytes of validated images (PNG, JPEG, WebP...); ``audio``
    holds the bytes of an audio file in a format the server recognized (``audio_format``).
    """

    generation_type: str
    prompt: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    images: list[bytes] = field(default_factory=list)
    mask: bytes | None = None
    audio: bytes | None = None
    audio_format: str | None = None


@dataclass
class MediaOutput:
    """One produced item: raw bytes (image/video/audio) or text, with its mime type."""

    type: Literal["image", "video", "audio", "text", "json"]
    data: bytes | str | Any
    mime_type: str
    metadata: dict[str, Any] = field(default_factory=dict)


Progress = Callable[[int, int], None]
"""``progress(step, total)``: callable from any thread; streamed to the client as info events."""

MEDIA_METHODS: dict[str, str] = {
    name: kind.method for name, kind in GENERATION_KINDS.items() if kind.name != "ttt"
}
"""Media generation type -> the Binding method that serves it (from the one table in core.types)."""
