"""JSON forms of the binding contract's values, for the worker-process wire (Ray pickles them
as they are). Bytes travel as base64."""

from __future__ import annotations

import base64
from typing import Any

from lollms_server.core.bindings import MediaOutput, MediaRequest, TextChunk, TextRequest, TextResult


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _bytes(data: str | None) -> bytes | None:
    return None if data is None else base64.b64decode(data)


def text_request_to_json(request: TextRequest) -> dict[str, Any]:
    return {
        "messages": request.messages,
        "parameters": request.parameters,
        "prompt": request.prompt,
        "prompt_format": request.prompt_format,
    }


def text_request_from_json(data: dict[str, Any]) -> TextRequest:
    return TextRequest(
        messages=list(data["messages"]),
        parameters=dict(data.get("parameters") or {}),
        prompt=data.get("prompt"),
        prompt_format=dict(data.get("prompt_format") or {}),
    )


def chunk_to_json(chunk: TextChunk) -> dict[str, Any]:
    return {
        "text": chunk.text,
        "finish_reason": chunk.finish_reason,
        "usage": chunk.usage,
        "metadata": chunk.metadata,
    }


def chunk_from_json(data: dict[str, Any]) -> TextChunk:
    return TextChunk(data.get("text", ""), data.get("finish_reason"), data.get("usage"), data.get("metadata"))


def result_to_json(result: TextResult) -> dict[str, Any]:
    return {
        "text": result.text,
        "finish_reason": result.finish_reason,
        "usage": result.usage,
        "metadata": result.metadata,
    }


def result_from_json(data: dict[str, Any]) -> TextResult:
    return TextResult(
        data["text"],
        data.get("finish_reason"),
        dict(data.get("usage") or {}),
        dict(data.get("metadata") or {}),
    )


def media_request_to_json(request: MediaRequest) -> dict[str, Any]:
    return {
        "generation_type": request.generation_type,
        "prompt": request.prompt,
        "parameters": request.parameters,
        "images": [_b64(image) for image in request.images],
        "mask": _b64(request.mask),
        "audio": _b64(request.audio),
        "audio_format": request.audio_format,
    }


def media_request_from_json(data: dict[str, Any]) -> MediaRequest:
    return MediaRequest(
        generation_type=str(data["generation_type"]),
        prompt=str(data.get("prompt") or ""),
        parameters=dict(data.get("parameters") or {}),
        images=[base64.b64decode(image) for image in data.get("images") or []],
        mask=_bytes(data.get("mask")),
        audio=_bytes(data.get("audio")),
        audio_format=data.get("audio_format"),
    )


def outputs_to_json(outputs: list[MediaOutput]) -> list[dict[str, Any]]:
    items = []
    for output in outputs:
        data = output.data
        binary = isinstance(data, bytes | bytearray)
        items.append(
            {
                "type": output.type,
                "data": _b64(bytes(data)) if isinstance(data, bytes | bytearray) else data,
                "binary": binary,
                "mime_type": output.mime_type,
                "metadata": output.metadata,
            }
        )
    return items


def outputs_from_json(items: list[dict[str, Any]]) -> list[MediaOutput]:
    return [
        MediaOutput(
            item["type"],
            _bytes(item["data"]) if item.get("binary") else item["data"],
            item.get("mime_type") or "",
            dict(item.get("metadata") or {}),
        )
        for item in items
    ]
