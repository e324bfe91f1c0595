"""The bytes of one file: streamed into ``<file>.part`` beside its target, resumed with ``Range``
after a dropped connection (and on the next pull after an interrupted one), checked against the
hub's size and hash (LFS sha256, or the git blob id of a small file), then renamed into place.

Why not ``huggingface_hub.hf_hub_download``: it reports progress only to its own tqdm bars, cannot
be stopped from another thread once started (a cancelled pull would keep downloading), and with
``local_dir`` keeps its partial files in a ``.cache`` folder of the models folder. Here a cancel
stops the transfer between chunks, progress goes to a callback, and the partial file is the one
the next attempt resumes. ``huggingface_hub`` still gives the URL (``hf_hub_url``) and headers.

Blocking: runs in a worker thread.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx

from lollms_server.core.errors import (
    ConflictError,
    LollmsError,
    NotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
)
from lollms_server.core.models.hub import RemoteFile

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
RETRIES = 5
READ_TIMEOUT = 60.0


class DownloadError(LollmsError):
    """A file came back wrong (size or checksum): nothing of it is kept."""

    status_code = 502
    error_type = "download_error"


class PullCancelled(LollmsError):
    """The pull was cancelled (its ``.part`` files stay, for the next pull to resume)."""

    status_code = 409
    error_type = "cancelled"


def part_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def _hasher(remote: RemoteFile) -> Any:
    if remote.sha256:
        return hashlib.sha256()
    digest = hashlib.sha1()  # noqa: S324 - git's blob id, to verify, not to secure
    if remote.git_sha1:
        digest.update(b"blob %d\0" % remote.size)
    return digest


def _expected(remote: RemoteFile) -> str | None:
    return (remote.sha256 or remote.git_sha1 or "").lower() or None


def _lock(handle: IO[bytes], target: Path) -> None:
    """Only one process writes a ``.part`` (several server workers may pull the same file)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not posix
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConflictError(f"'{target.name}' is being downloaded by another process.") from None


def fetch_file(
    client: httpx.Client,
    url: str,
    remote: RemoteFile,
    target: Path,
    on_progress: Callable[[int], None],
    cancel: threading.Event,
    *,
    rename: bool = True,
) -> Path:
    """Download ``remote`` to ``target`` (through ``target.part``); returns the verified file
    (``target``, or the ``.part`` when ``rename`` is false: the caller renames it)."""
    part = part_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        _fetch(client, url, remote, part, on_progress, cancel)
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    if not rename:
        return part
    os.replace(part, target)
    return target


def _fetch(
    client: httpx.Client,
    url: str,
    remote: RemoteFile,
    part: Path,
    on_progress: Callable[[int], None],
    cancel: threading.Event,
) -> None:
    with open(part, "a+b") as handle:
        _lock(handle, part)
        hasher = _hasher(remote)
        offset = _hash_existing(handle, remote, hasher, cancel)
        on_progress(offset)
        failures = 0
        while offset < remote.size:
            if cancel.is_set():
                raise PullCancelled("The pull was cancelled.")
            try:
                offset, hasher = _stream(client, url, remote, handle, offset, hasher, on_progress, cancel)
                failures = 0
            except httpx.TransportError as exc:
                failures += 1
                handle.flush()
                hasher = _hasher(remote)  # what arrived (whichever answer it came in) is the new start
                offset = _hash_existing(handle, remote, hasher, cancel)
                logger.warning(
                    "Download of %s broke at %d/%d bytes (%s); resuming (%d/%d)",
                    remote.path, offset, remote.size, type(exc).__name__, failures, RETRIES,
                )  # fmt: skip
                if failures > RETRIES:
                    raise ServiceUnavailableError(
                        f"The download of '{remote.path}' keeps breaking; pull again to resume it.",
                        retry_after=30,
                    ) from None
                if cancel.wait(min(0.25 * 2**failures, 5.0)):
                    raise PullCancelled("The pull was cancelled.") from None
        handle.flush()
        os.fsync(handle.fileno())
        expected = _expected(remote)
        if offset != remote.size or (expected is not None and hasher.hexdigest() != expected):
            raise DownloadError(
                f"'{remote.path}' failed verification ({'checksum' if offset == remote.size else 'size'} "
                "mismatch); the partial file was removed."
            )


def _hash_existing(handle: IO[bytes], remote: RemoteFile, hasher: Any, cancel: threading.Event) -> int:
    """Feed what an earlier attempt left to the hasher; returns where to resume."""
    size = os.fstat(handle.fileno()).st_size
    if size > remote.size:
        handle.truncate(0)
        return 0
    handle.seek(0)
    done = 0
    while done < size:
        if cancel.is_set():
            raise PullCancelled("The pull was cancelled.")
        block = handle.read(min(CHUNK, size - done))
        if not block:
            break
        hasher.update(block)
        done += len(block)
    return done


def _stream(
    client: httpx.Client,
    url: str,
    remote: RemoteFile,
    handle: IO[bytes],
    offset: int,
    hasher: Any,
    on_progress: Callable[[int], None],
    cancel: threading.Event,
) -> tuple[int, Any]:
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416 and offset == remote.size:
            return offset, hasher
        _raise_for_status(response.status_code, remote)
        if offset and response.status_code != 206:  # the server ignored the range: start over
            handle.truncate(0)
            offset, hasher = 0, _hasher(remote)
        last = time.monotonic()
        for block in response.iter_bytes():  # as it arrives: a broken connection loses nothing read
            if cancel.is_set():
                raise PullCancelled("The pull was cancelled.")
            if offset + len(block) > remote.size:
                raise DownloadError(f"'{remote.path}' is larger than the hub said; nothing was kept.")
            handle.write(block)
            hasher.update(block)
            offset += len(block)
            now = time.monotonic()
            if now - last >= 0.1:
                on_progress(offset)
                last = now
    on_progress(offset)
    return offset, hasher


def _raise_for_status(status: int, remote: RemoteFile) -> None:
    if status in (200, 206):
        return
    if status in (401, 403):
        raise PermissionDeniedError(f"The hub refused '{remote.path}' (gated or private: set a token).")
    if status == 404:
        raise NotFoundError(f"The hub has no '{remote.path}' at this revision.")
    raise ServiceUnavailableError(f"The hub answered {status} for '{remote.path}'.", retry_after=30)
