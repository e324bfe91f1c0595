"""First use of a model a binding may download (``allow_download``): the request starts or joins
the model's pull *before* it enters its pool, so no slot and no model lock is held while bytes
arrive. A streamed request follows the download with ``downloading`` info events; a whole one
waits up to its pool's ``queue_timeout``, then gets 503 with Retry-After (the pull goes on).

The fetcher is ``PullManager.for_first_use`` (set on the service by the app); this module only
knows its shape.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from lollms_server.core.errors import ServiceUnavailableError
from lollms_server.core.generation.routing import Target
from lollms_server.core.security import Principal


class Download(Protocol):
    def events(self) -> AsyncIterator[dict[str, Any]]: ...


ModelFetcher = Callable[..., Awaitable[Download | None]]
"""``fetch(instance, model, trusted=bool, key=name)``: the running pull of a missing model, or
None (``key``: the requesting key, whose first-use budget a generate key spends)."""


class DownloadWatch:
    """The latest progress of a request's first-use download, for its queued stream."""

    def __init__(self) -> None:
        self.latest: dict[str, Any] | None = None
        self.changed = asyncio.Event()

    def __call__(self, progress: dict[str, Any]) -> None:
        self.latest = progress
        self.changed.set()


async def await_model(
    fetcher: ModelFetcher | None,
    principal: Principal,
    target: Target,
    timeout: float,
    on_download: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Return once ``target``'s model is on disk (at once when nothing needs fetching); the
    pull's error when it fails; 503 + Retry-After past ``timeout`` (the pull carries on)."""
    if fetcher is None:
        return
    download = await fetcher(
        target.name, target.model, trusted="admin" in principal.scopes, key=principal.name
    )
    if download is None:
        return
    latest: dict[str, dict[str, Any]] = {}

    async def follow() -> None:
        async for progress in download.events():
            latest[progress["file"]] = progress
            if on_download is not None:
                on_download(progress)

    try:
        await asyncio.wait_for(follow(), timeout)
    except asyncio.TimeoutError:
        completed = sum(item["completed"] for item in latest.values())
        total = sum(item["total"] for item in latest.values()) or 1
        raise ServiceUnavailableError(
            f"Model '{target.model}' is being downloaded ({100 * completed / total:.0f} %); "
            "try again shortly.",
            retry_after=30,
        ) from None
