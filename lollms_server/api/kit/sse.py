"""Server-Sent Event frames (the response that carries them: ``lollms_server.api.sse``)."""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"
"""OpenAI's end-of-stream frame."""


def data_frame(data: Any) -> bytes:
    """``data: <json>``: an unnamed event (OpenAI's streams)."""
    return b"data: " + json.dumps(data).encode("utf-8") + b"\n\n"


def named_frame(event: str, data: Any) -> bytes:
    """``event: <name>`` + ``data: <json>`` (Anthropic's and OpenAI Responses' streams)."""
    return f"event: {event}\n".encode() + data_frame(data)
