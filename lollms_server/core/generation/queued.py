"""A stream whose request waits in its pool's queue: ``queued`` info events with its place and
an ETA (when it moves, and at least every 2 s) until it is admitted, then the generation's own
events; place 0 with ``reason: "memory"`` once it has its slot and waits for device memory.
Before its queue, a first-use download shows as ``downloading`` info events
(``{file, completed, total}``). A request admitted at once never comes here (its errors stay
plain HTTP answers); one that waits has its answer started, so a later queue timeout is an ``error`` event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Any

from lollms_server.core.errors import LollmsError
from lollms_server.core.generation.admission import Admission
from lollms_server.core.generation.first_use import DownloadWatch
from lollms_server.core.generation.outputs import error_chunk
from lollms_server.core.generation.stream import GenerationStream
from lollms_server.core.streams import abandon
from lollms_server.core.types import StreamChunk

POSITION_EVERY_SECONDS = 2.0


class QueuedStream:
    """The events of a request that waits, then of its :class:`GenerationStream`."""

    def __init__(
        self,
        admission: asyncio.Future[Admission],
        first: tuple[int, float] | None,
        positions: asyncio.Queue[tuple[int, float]],
        start: Callable[[Admission], GenerationStream],
        download: DownloadWatch | None = None,
    ) -> None:
        self.admission = admission
        self.position = first  # None: not in the queue yet (downloading the model)
        self.positions = positions
        self.start = start
        self.download = download
        self.stream: GenerationStream | None = None

    @property
    def deadline(self) -> float | None:
        """The generation's deadline once admitted (waiting has its own bound: queue_timeout)."""
        return self.stream.deadline if self.stream is not None else None

    def _queued(self) -> StreamChunk:
        if self.position is None:
            progress = self.download.latest if self.download is not None else None
            return StreamChunk(type="info", content="downloading", metadata=dict(progress or {}))
        position, eta = self.position
        metadata: dict[str, Any] = {"queue_position": position, "eta_seconds": round(eta, 1)}
        if position == 0:  # past the pool's queue, waiting for device memory busy models hold
            metadata["reason"] = "memory"
        return StreamChunk(type="info", content="queued", metadata=metadata)

    async def events(self) -> AsyncGenerator[StreamChunk, None]:
        try:
            yield self._queued()
            while not self.admission.done():
                moved = asyncio.ensure_future(self.positions.get())
                waits: set[asyncio.Future[Any]] = {self.admission, moved}
                downloaded = None
                if self.position is None and self.download is not None:
                    self.download.changed.clear()
                    downloaded = asyncio.ensure_future(self.download.changed.wait())
                    waits.add(downloaded)
                await asyncio.wait(waits, timeout=POSITION_EVERY_SECONDS, return_when=asyncio.FIRST_COMPLETED)
                if downloaded is not None:
                    downloaded.cancel()
                if moved.done():
                    self.position = moved.result()
                    while not self.positions.empty():
                        self.position = self.positions.get_nowait()
                else:
                    moved.cancel()
                if not self.admission.done():
                    yield self._queued()
            try:
                admission = self.admission.result()
            except LollmsError as exc:  # a queue timeout, a failed load...
                chunk = error_chunk(exc)
                chunk.metadata["queue_position"] = self.position[0] if self.position else None
                if "Retry-After" in exc.headers:
                    chunk.metadata["retry_after"] = int(exc.headers["Retry-After"])
                yield chunk
                return
            self.stream = self.start(admission)
            events = self.stream.events()
            try:
                async for event in events:
                    yield event
            finally:
                await events.aclose()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Leave the queue, or stop the generation and give back its slot (idempotent)."""
        if self.stream is not None:
            await self.stream.aclose()
        else:  # still waiting, or admitted while nobody read the events: nobody will use it
            await abandon(self.admission, Admission.release)
