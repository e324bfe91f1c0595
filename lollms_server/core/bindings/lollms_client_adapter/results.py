"""What lollms_client bindings return, made ours: error dicts to BindingError, bytes to
MediaOutput with a sniffed mime type."""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from lollms_server.core.bindings.contract import MediaOutput, Progress
from lollms_server.core.errors import BindingError
from lollms_server.utils.paths import without_userinfo
from lollms_server.utils.recorded import recorded_parameters

logger = logging.getLogger(__name__)

MediaKind = Literal["image", "video", "audio", "text", "json"]


def sniff(data: bytes) -> tuple[MediaKind | None, str]:
    """(kind, mime type) from the first bytes of a file; (None, octet-stream) when unknown."""
    head = data[:16]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image", "image/jpeg"
    if head.startswith(b"GIF8"):
        return "image", "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image", "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio", "audio/wav"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "audio", "audio/mpeg"
    if head.startswith(b"OggS"):
        return "audio", "audio/ogg"
    if head.startswith(b"fLaC"):
        return "audio", "audio/flac"
    if head[4:8] == b"ftyp":
        return "video", "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video", "video/webm"
    if head.lstrip()[:1] in (b"{", b"["):
        return "json", "application/json"
    return None, "application/octet-stream"


def failure_message(result: Any) -> str | None:
    """The error a lollms_client call *returned* (``{"status": False|"error", "message"|"error"}``)."""
    if not isinstance(result, dict):
        return None
    if result.get("status") is False or result.get("status") == "error" or result.get("success") is False:
        return str(result.get("message") or result.get("error") or "the binding reported an error")
    if result.get("error"):
        return str(result["error"])
    return None


def checked(instance: str, result: Any, secrets: tuple[str, ...] = ()) -> Any:
    """``result``, or a clean BindingError when it is an error dict: its message without the
    instance's ``secrets`` nor URL credentials (the log gets a longer part, masked the same way)."""
    message = failure_message(result)
    if message is not None:
        masked = without_userinfo(message[:2000])
        for secret in secrets:
            masked = masked.replace(secret, "********")
        logger.warning("lollms_client binding %s reported: %s", instance, masked[:500])
        raise BindingError(f"Binding '{instance}' failed: {masked[:200]}")
    return result


def media_output(instance: str, expected: MediaKind, data: Any) -> MediaOutput:
    """One bytes result as a MediaOutput of ``expected`` kind (its mime type sniffed)."""
    checked(instance, data)
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not isinstance(data, bytes | bytearray) or not data:
        raise BindingError(f"Binding '{instance}' returned no {expected}.")
    kind, mime = sniff(bytes(data))
    if expected == "image" and kind != "image":
        raise BindingError(f"Binding '{instance}' returned {mime} instead of an image.")
    return MediaOutput(expected, bytes(data), mime)


def parameters_json(parameters: dict[str, Any]) -> str:
    """Our parameters as the ``parameters`` PNG chunk (lollms_client's ``process_image`` writes
    the ``metadata`` it is given and drops the source image's own chunks): the recorded ones
    only (``utils.recorded``)."""
    return json.dumps(recorded_parameters(parameters), sort_keys=True, default=str)


def progress_from(info: Any, progress: Progress) -> None:
    """A command's ``progress_callback({status, completed, total})`` as our progress."""
    if isinstance(info, dict) and isinstance(info.get("completed"), int | float):
        progress(int(info["completed"]), int(info.get("total") or 0))
