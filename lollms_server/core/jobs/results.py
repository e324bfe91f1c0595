"""A finished job's outputs as files under ``jobs_folder/<job id>/`` (never base64 in the
database): the database keeps the ``GenerateResponse`` with media ``data`` left out, and one
entry per output (kind, mime type, file, size). Blocking: called in worker threads."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lollms_server.core.types import GenerateResponse, OutputData
from lollms_server.utils.media import decode_base64, encode_base64
from lollms_server.utils.paths import safe_join

MEDIA_TYPES = frozenset({"image", "audio", "video"})
EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/mpeg": ".mp3",
    "audio/ogg": ".ogg",
    "audio/flac": ".flac",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "text/plain": ".txt",
    "application/json": ".json",
}


@dataclass(frozen=True)
class SavedResult:
    """What the database keeps of a finished generation."""

    response_json: str
    outputs: list[dict[str, Any]]
    total_bytes: int


class ResultFiles:
    """Writes, reads and removes the output files of jobs."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def job_folder(self, job_id: str) -> Path:
        return safe_join(self.folder, job_id, param="job_id")

    def save(self, job_id: str, response: GenerateResponse) -> SavedResult:
        """Every output as a file; media ``data`` leaves the stored response."""
        folder = self.job_folder(job_id)
        private_folder(self.folder)
        private_folder(folder)
        outputs: list[dict[str, Any]] = []
        kept: list[OutputData] = []
        total = 0
        for index, item in enumerate(response.output):
            payload = _payload(item)
            mime = item.mime_type or ("text/plain" if item.type == "text" else "application/octet-stream")
            name = f"output-{index}{EXTENSIONS.get(mime, '.bin')}"
            write_private(folder / name, payload)
            total += len(payload)
            outputs.append(
                {"index": index, "type": item.type, "mime_type": mime, "file": name, "bytes": len(payload)}
            )
            kept.append(item.model_copy(update={"data": None}))
        stored = response.model_copy(update={"output": kept})
        return SavedResult(stored.model_dump_json(), outputs, total)

    def path(self, job_id: str, output: dict[str, Any]) -> Path:
        return safe_join(self.job_folder(job_id), str(output["file"]), param="output")

    def response(self, job_id: str, response_json: str, outputs: list[dict[str, Any]]) -> GenerateResponse:
        """The stored response with every output's data read back (media as raw base64)."""
        response = GenerateResponse.model_validate_json(response_json)
        items: list[OutputData] = []
        for item, output in zip(response.output, outputs, strict=False):
            payload = self.path(job_id, output).read_bytes()
            items.append(item.model_copy(update={"data": _data(item.type, payload)}))
        return response.model_copy(update={"output": items})

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.job_folder(job_id), ignore_errors=True)


def private_folder(folder: Path) -> None:
    """``folder`` (and missing parents) made 0700: job outputs are every key's results."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_mode & 0o077:
        folder.chmod(0o700)


def write_private(path: Path, payload: bytes) -> None:
    """``payload`` in a file only this user can read (0600 whatever the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(payload)


def _payload(item: OutputData) -> bytes:
    if item.type in MEDIA_TYPES and isinstance(item.data, str):
        return decode_base64(item.data, param="output")
    if isinstance(item.data, str):
        return item.data.encode("utf-8")
    return json.dumps(item.data).encode("utf-8")


def _data(kind: str, payload: bytes) -> Any:
    if kind in MEDIA_TYPES:
        return encode_base64(payload)
    text = payload.decode("utf-8")
    return json.loads(text) if kind == "json" else text
