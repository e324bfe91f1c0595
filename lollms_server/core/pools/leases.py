"""The remote side of a pool hosted elsewhere: leases over a :class:`LocalPoolHost`.

A worker process and a Ray actor both serve their pool through this table. A gateway opens a
lease (the pool's FIFO admission and the model load run here, so the queue is exact for any
number of gateways), learns "admitted", then makes its binding calls on the lease until it
closes it. A lease whose gateway vanished cannot hold its slot forever: it ends at the pool's
generation timeout (counted from admission) plus a margin, and every call on it is bounded by
the same clock, so a call answers 504 here at about the time the gateway's own timeout ends.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import anyio

from lollms_server.core.bindings import (
    MEDIA_METHODS,
    CancelToken,
    MediaOutput,
    MediaRequest,
    TextChunk,
    TextRequest,
    TextResult,
    with_progress,
)
from lollms_server.core.errors import BindingError, GenerationTimeoutError, LollmsError, NotFoundError
from lollms_server.core.pools.local import LocalPoolHost, LocalSession
from lollms_server.core.resource_manager import Ticket
from lollms_server.core.streams import abandon, bounded

logger = logging.getLogger(__name__)
LEASE_MARGIN_SECONDS = 5.0  # past the generation timeout, for the gateway to hand the lease back
RESIDENT_CALLS = {"tokenize", "detokenize", "embed", "chat_with_tools"}  # on a lease
PLAIN_CALLS = {"list_available_models", "get_model_info"}  # without one
CALLS_STOP_SECONDS = 30.0  # how long a closing lease waits for its calls to stop


@dataclass
class RemoteLease:
    id: str
    instance: str
    model: str
    session: LocalSession
    deadline: float  # loop time when calls on it stop (the generation timeout from admission)
    expires: float  # loop time when it is closed whatever the gateway does
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    cancels: set[CancelToken] = field(default_factory=set)  # of the calls running on it
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set while no call runs

    def __post_init__(self) -> None:
        self.idle.set()

    def admitted(self) -> dict[str, Any]:
        """What the gateway learns at admission."""
        return {
            "lease": self.id,
            "queue_wait": self.session.queue_wait,
            "load": self.session.load_seconds,
            "slot_granted_at": time.time(),
            "native_tools": self.session.binding.supports_native_tools(self.model),
        }


def _timeout() -> LollmsError:
    return GenerationTimeoutError("The generation did not finish in time.")


class LeaseTable:
    """The open leases of one pool (at most its slots plus nothing: a lease holds a slot)."""

    def __init__(self, host: LocalPoolHost, generation_timeout: float) -> None:
        self.host = host
        self.generation_timeout = generation_timeout
        self.leases: dict[str, RemoteLease] = {}

    async def open(
        self,
        instance: str,
        model: str,
        ticket: Ticket = Ticket(),
        on_position: Callable[[int, float], None] | None = None,
    ) -> RemoteLease:
        """Admit (the pool's queue, the model load) and record the lease; raises the pool's 503s."""
        session = await self.host.admit(instance, model, ticket, on_position)
        now = asyncio.get_running_loop().time()
        lease = RemoteLease(
            id=secrets.token_hex(12),
            instance=instance,
            model=model,
            session=session,
            deadline=now + self.generation_timeout,
            expires=now + self.generation_timeout + LEASE_MARGIN_SECONDS,
        )
        self.leases[lease.id] = lease
        return lease

    async def open_with_pings(
        self, instance: str, model: str, interval: float, ticket: Ticket = Ticket()
    ) -> AsyncGenerator[RemoteLease | dict[str, Any], None]:
        """:meth:`open`, yielding ``{"waiting": True, "position": n, "eta": seconds}`` every
        ``interval`` seconds while the request waits in the queue or the model loads (at once
        when its position changes), so the gateway can tell a long wait from a hung host and
        show the place in the queue; then the lease. Closing it early leaves the queue (or gives
        back a slot just granted)."""
        changed = asyncio.Event()
        where: dict[str, Any] = {"waiting": True, "position": 0, "eta": 0.0}

        def on_position(position: int, eta: float) -> None:
            where.update(position=position, eta=round(eta, 3))
            changed.set()

        admission = asyncio.ensure_future(self.open(instance, model, ticket, on_position))
        delivered = False
        try:
            while True:
                moved = asyncio.ensure_future(changed.wait())
                await asyncio.wait({admission, moved}, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
                moved.cancel()
                if admission.done():
                    break
                changed.clear()
                yield dict(where)
            delivered = True  # from here the caller holds the lease and closes it
            yield admission.result()
        finally:
            if not delivered:  # closed while waiting: leave the queue, or give back a fresh slot
                await abandon(admission, lambda lease: self.close(lease.id))

    async def hold(self, lease: RemoteLease) -> None:
        """Wait until the lease is closed or expires, then close it (cancelling its calls)."""
        remaining = lease.expires - asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(lease.closed.wait(), max(remaining, 0.0))
        except (TimeoutError, asyncio.TimeoutError):
            pass
        finally:
            await self.close(lease.id)

    async def close(self, lease_id: str) -> None:
        """Stop the lease's calls, wait until they have stopped (a slot is never released under
        a busy model), then give back the model and the slot."""
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return
        for cancel in lease.cancels:
            cancel.set()
        lease.closed.set()
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(CALLS_STOP_SECONDS):
                await lease.idle.wait()
            if not lease.idle.is_set():  # pragma: no cover - a binding that ignores its token
                logger.error("A call on a lease of %s/%s did not stop in time", lease.instance, lease.model)
            await lease.session.aclose()

    def get(self, lease_id: str) -> RemoteLease:
        lease = self.leases.get(lease_id)
        if lease is None:
            raise NotFoundError("This pool lease is closed or expired.")
        return lease

    async def close_all(self) -> None:
        for lease_id in list(self.leases):
            await self.close(lease_id)

    # ---- calls on a lease -----------------------------------------------------------
    def _cancel_token(self, lease: RemoteLease) -> CancelToken:
        """The cancel token of a call starting on ``lease`` (the lease waits for it to end)."""
        cancel = CancelToken()
        lease.cancels.add(cancel)
        lease.idle.clear()
        return cancel

    @staticmethod
    def _ended(lease: RemoteLease, cancel: CancelToken) -> None:
        cancel.set()
        lease.cancels.discard(cancel)
        if not lease.cancels:
            lease.idle.set()

    async def stream_text(self, lease_id: str, request: TextRequest) -> AsyncGenerator[TextChunk, None]:
        lease = self.get(lease_id)
        cancel = self._cancel_token(lease)
        try:
            chunks = lease.session.binding.stream_text(lease.model, request, cancel)
            async with aclosing(bounded(chunks, lease.deadline, _timeout)) as items:
                async for chunk in items:
                    yield chunk
        finally:
            self._ended(lease, cancel)

    async def generate_text(self, lease_id: str, request: TextRequest) -> TextResult:
        lease = self.get(lease_id)
        result: TextResult = await self._bounded_call(
            lease, lambda cancel: lease.session.binding.generate_text(lease.model, request, cancel)
        )
        return result

    async def media(
        self, lease_id: str, request: MediaRequest
    ) -> AsyncGenerator[tuple[int, int] | list[MediaOutput], None]:
        """(step, total) progress, then the list of outputs."""
        lease = self.get(lease_id)
        method_name = MEDIA_METHODS.get(request.generation_type)
        if method_name is None:
            raise BindingError(f"Unknown media generation type '{request.generation_type}'.")
        method = getattr(lease.session.binding, method_name)
        cancel = self._cancel_token(lease)
        try:
            items = with_progress(
                lambda token, progress: method(lease.model, request, token, progress), cancel
            )
            async with aclosing(bounded(items, lease.deadline, _timeout)) as bounded_items:
                async for item in bounded_items:
                    yield item
        finally:
            self._ended(lease, cancel)

    async def call(self, lease_id: str, method: str, *args: Any) -> Any:
        """tokenize / detokenize / embed / chat_with_tools on the lease's model."""
        if method not in RESIDENT_CALLS:
            raise BindingError(f"Unknown pool call '{method}'.")
        lease = self.get(lease_id)
        binding = lease.session.binding
        if method == "chat_with_tools":
            request, tools = args
            return await self._bounded_call(
                lease, lambda cancel: binding.chat_with_tools(lease.model, request, tools, cancel)
            )
        return await self._bounded_call(lease, lambda cancel: getattr(binding, method)(lease.model, *args))

    async def plain_call(self, instance: str, method: str, *args: Any) -> Any:
        """Listings and model info: no slot, no load."""
        if method not in PLAIN_CALLS:
            raise BindingError(f"Unknown pool call '{method}'.")
        if method == "get_model_info":
            return await self.host.model_info(instance, *args)
        binding = await self.host.binding(instance)
        return await binding.list_available_models()

    async def _bounded_call(self, lease: RemoteLease, run: Any) -> Any:
        cancel = self._cancel_token(lease)
        remaining = lease.deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(run(cancel), max(remaining, 0.0))
        except (TimeoutError, asyncio.TimeoutError):
            raise _timeout() from None
        finally:
            self._ended(lease, cancel)
