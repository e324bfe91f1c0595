"""The Ray actor of one pool: a :class:`LocalPoolHost` inside a Ray actor, served through the
same lease table as a worker process (``core/pools/leases.py``).

Built by :class:`~lollms_server.core.pools.ray.RayPoolHost` with ``ray.remote`` (Ray is
optional, so no decorator here). Every method is a coroutine on the actor's event loop; the
pool's FIFO queue orders them, whatever the number of gateways.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

from lollms_server.core.bindings import (
    BindingManager,
    MediaOutput,
    MediaRequest,
    TextChunk,
    TextRequest,
    TextResult,
)
from lollms_server.core.config import AppConfig
from lollms_server.core.devices import Devices
from lollms_server.core.pools.leases import LeaseTable
from lollms_server.core.pools.local import LocalPoolHost
from lollms_server.core.pools.ray_cluster import ray_module
from lollms_server.core.pools.remote import PING_SECONDS
from lollms_server.core.resource_manager import ResourceManager, Ticket


def _merge(chunks: list[TextChunk]) -> TextChunk:
    """Chunks that came within one batching window, as one (the end marker stays last)."""
    if len(chunks) == 1:
        return chunks[0]
    last = chunks[-1]
    return TextChunk("".join(chunk.text for chunk in chunks), last.finish_reason, last.usage, last.metadata)


async def batched(
    chunks: AsyncGenerator[TextChunk, None], interval: float
) -> AsyncGenerator[TextChunk, None]:
    """Yield what ``chunks`` produced, merged, at most once per ``interval`` seconds.

    A Ray object costs about half a millisecond end to end, more than a token of a small model:
    tokens that come faster than ``interval`` travel together, slower ones (real models) each
    leave at once; the first one and the end of the stream never wait.
    """
    loop = asyncio.get_running_loop()
    pending: deque[TextChunk] = deque()
    ready = asyncio.Event()
    outcome: list[BaseException | None] = []

    async def pump() -> None:
        try:
            async for chunk in chunks:
                pending.append(chunk)
                ready.set()
            outcome.append(None)
        except Exception as exc:  # noqa: BLE001 - raised to the consumer
            outcome.append(exc)
        finally:
            ready.set()

    task = asyncio.ensure_future(pump())
    last_sent = -interval
    try:
        while True:
            await ready.wait()
            ready.clear()
            early = last_sent + interval - loop.time()
            ending = bool(outcome) or bool(pending and (pending[-1].finish_reason or pending[-1].usage))
            if pending and not ending and early > 0:
                await asyncio.sleep(early)  # more tokens pile up meanwhile
            if pending:
                items = list(pending)
                pending.clear()
                yield _merge(items)
                last_sent = loop.time()
            if outcome and not pending:
                if outcome[0] is not None:
                    raise outcome[0]
                return
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await chunks.aclose()


class PoolActor:
    """One pool of the cluster: its binding instances, its queue and its resident models."""

    def __init__(self, config: AppConfig, pool: str, fingerprint: str) -> None:
        from lollms_server.core.log_secrets import configured_secrets
        from lollms_server.utils.logs import configure_logging

        self.stream_interval = config.cluster.stream_batch_ms / 1000
        self.pool = pool
        self.fingerprint = fingerprint
        self.config = config.for_pool(pool)
        configure_logging(self.config.logging.level, secrets=configured_secrets(self.config))
        self.bindings = BindingManager(self.config)
        self.resources = ResourceManager(self.config.resource_manager, devices=Devices(self.config.devices))
        host = LocalPoolHost(self.config, pool, self.bindings, self.resources)
        self.leases = LeaseTable(host, self.config.resource_manager.generation_timeout)
        self.started_at = time.time()

    def _identity(self) -> dict[str, Any]:
        return {
            "host": "ray",
            "pool": self.pool,
            "node_id": ray_module().get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "fingerprint": self.fingerprint,
            "uptime_seconds": round(time.time() - self.started_at, 3),
        }

    async def ready(self) -> dict[str, Any]:
        self.resources.start()  # the idle-unload housekeeper, on the actor's loop
        return self._identity()

    async def status(self) -> dict[str, Any]:
        return {**self._identity(), **self.resources.snapshot()}

    async def lease(
        self, instance: str, model: str, ticket: Ticket = Ticket()
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Streaming: admit (FIFO wait, model load; ``{"waiting": True}`` every second
        meanwhile), yield "admitted", then hold the slot until :meth:`release`, the caller
        cancelling this call, or the lease's expiry."""
        admission = self.leases.open_with_pings(instance, model, PING_SECONDS, ticket)
        try:
            async for opened in admission:
                if isinstance(opened, dict):  # still waiting: its place in the queue
                    yield opened
                else:
                    lease = opened
        finally:
            await admission.aclose()
        try:
            yield lease.admitted()
            await self.leases.hold(lease)
        finally:
            await self.leases.close(lease.id)

    async def release(self, lease_id: str) -> None:
        await self.leases.close(lease_id)

    async def stream_text(self, lease_id: str, request: TextRequest) -> AsyncGenerator[TextChunk, None]:
        """The text stream of a lease, batched (see :func:`batched`)."""
        chunks = batched(self.leases.stream_text(lease_id, request), self.stream_interval)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()

    async def generate_text(self, lease_id: str, request: TextRequest) -> TextResult:
        """The whole text in one answer (one round trip instead of a stream's objects)."""
        return await self.leases.generate_text(lease_id, request)

    async def media(
        self, lease_id: str, request: MediaRequest
    ) -> AsyncGenerator[tuple[int, int] | list[MediaOutput], None]:
        """(step, total) progress tuples, then the list of outputs (through the object store)."""
        items = self.leases.media(lease_id, request)
        try:
            async for item in items:
                yield item
        finally:
            await items.aclose()

    async def call(self, lease_id: str, method: str, *args: Any) -> Any:
        """tokenize / detokenize / embed / chat_with_tools on a lease."""
        return await self.leases.call(lease_id, method, *args)

    async def plain_call(self, instance: str, method: str, *args: Any) -> Any:
        """Listings and model info (no slot)."""
        return await self.leases.plain_call(instance, method, *args)
