"""The pool-lease API a worker process serves to its gateways (``/internal/pool``, on
127.0.0.1 to the per-start token; see ``core/pools/process.py`` for the other side).

- ``POST /leases {instance, model, ticket}``: an event stream: ``{waiting, position, eta}``
  every second while the request waits in the pool's queue (``ticket``: key name, weight,
  priority) and the model loads, then "admitted" ``{lease, queue_wait, load,
  slot_granted_at, native_tools}`` or ``{error}`` (a full queue: status 503 with ``retry_after``), then
  nothing while the gateway holds the slot. The gateway closing it (or leaving while queued) leaves the
  queue or gives the slot back; so does the lease's expiry (see ``core/pools/leases.py``).
- ``POST /leases/{id}/stream_text | media``: event streams of ``{chunk}`` or
  ``{step, total}`` / ``{outputs}``, ending with ``{end: true}`` or ``{error}``.
- ``POST /leases/{id}/generate_text | call``, ``POST /instances/{name}/{method}``: JSON.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from lollms_server.api.cancellation import cancellable
from lollms_server.api.deps import AdminUser
from lollms_server.api.sse import EventStreamResponse
from lollms_server.core.errors import BindingError, LollmsError
from lollms_server.core.pools import wire
from lollms_server.core.pools.leases import LeaseTable, RemoteLease
from lollms_server.core.pools.remote import PING_SECONDS
from lollms_server.core.resource_manager import Ticket


def get_leases(request: Request) -> LeaseTable:
    leases: LeaseTable = request.app.state.leases
    return leases


LeasesDep = Annotated[LeaseTable, Depends(get_leases)]
router = APIRouter(prefix="/internal/pool", tags=["pool worker"], include_in_schema=False)


class TicketModel(BaseModel):
    key: str = Field("anonymous", max_length=256)
    weight: float = Field(1.0, gt=0, le=1000)
    priority: Literal["interactive", "batch"] = "interactive"


class LeaseRequest(BaseModel):
    instance: str = Field(..., max_length=256)
    model: str = Field(..., max_length=512)
    ticket: TicketModel = Field(default_factory=TicketModel)


class CallRequest(BaseModel):
    method: str = Field(..., max_length=64)
    args: list[Any] = Field(default_factory=list)


class WireRequest(BaseModel):
    request: dict[str, Any]


class PlainRequest(BaseModel):
    args: list[Any] = Field(default_factory=list)


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode("utf-8") + b"\n\n"


def _error_event(exc: BaseException) -> bytes:
    if not isinstance(exc, LollmsError):
        exc = BindingError(f"The binding failed during generation ({type(exc).__name__}).")
    error = {"status": exc.status_code, "message": exc.message, "retry_after": exc.headers.get("Retry-After")}
    return _event({"error": error})


@router.post("/leases")
async def open_lease(body: LeaseRequest, _: AdminUser, leases: LeasesDep) -> Response:
    """The lease stream: pings while the request waits in the queue and the model loads (so
    a live worker is never taken for a hung one), then "admitted" or the pool's error, then
    pings while the gateway holds the slot."""
    ticket = Ticket(body.ticket.key, body.ticket.weight, body.ticket.priority)
    admission = leases.open_with_pings(body.instance, body.model, PING_SECONDS, ticket)
    opened: list[RemoteLease] = []

    async def events() -> AsyncGenerator[bytes, None]:
        try:
            async for item in admission:
                if isinstance(item, dict):  # still waiting: its place in the queue
                    yield _event(item)
                else:
                    opened.append(item)
        except Exception as exc:  # noqa: BLE001 - the pool's 503, a failed load...
            yield _error_event(exc)
            return
        lease = opened[0]
        yield _event(lease.admitted())
        # then silence while the gateway holds the slot (it does not read this stream any more:
        # its closing, or the gateway's death, is what gives the slot back), up to the expiry
        remaining = lease.expires - asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(lease.closed.wait(), max(remaining, 0.0))
        except (TimeoutError, asyncio.TimeoutError):
            return

    async def release() -> None:
        """The gateway left (or the lease ended): leave the queue, or give the slot back."""
        await admission.aclose()
        for lease in opened:
            await leases.close(lease.id)

    return EventStreamResponse(events(), on_close=release)


def _call_stream(items: AsyncGenerator[Any, None], event: Callable[[Any], dict[str, Any]]) -> Response:
    """The event stream of a call on a lease: ``event(item)`` for each item, then ``{end}``, or
    ``{error}``; the call is closed when the stream ends or the gateway leaves."""

    async def events() -> AsyncGenerator[bytes, None]:
        try:
            async for item in items:
                yield _event(event(item))
            yield _event({"end": True})
        except Exception as exc:  # noqa: BLE001 - becomes an error event
            yield _error_event(exc)
        finally:
            await items.aclose()

    return EventStreamResponse(events(), on_close=items.aclose)


def _media_event(item: Any) -> dict[str, Any]:
    if isinstance(item, list):
        return {"outputs": wire.outputs_to_json(item)}
    return {"step": item[0], "total": item[1]}


@router.post("/leases/{lease_id}/stream_text")
async def stream_text(lease_id: str, body: WireRequest, _: AdminUser, leases: LeasesDep) -> Response:
    leases.get(lease_id)  # 404 before the stream starts
    chunks = leases.stream_text(lease_id, wire.text_request_from_json(body.request))
    return _call_stream(chunks, lambda chunk: {"chunk": wire.chunk_to_json(chunk)})


@router.post("/leases/{lease_id}/media")
async def media(lease_id: str, body: WireRequest, _: AdminUser, leases: LeasesDep) -> Response:
    leases.get(lease_id)
    return _call_stream(leases.media(lease_id, wire.media_request_from_json(body.request)), _media_event)


@router.post("/leases/{lease_id}/generate_text")
async def generate_text(
    request: Request, lease_id: str, body: WireRequest, _: AdminUser, leases: LeasesDep
) -> Any:
    text_request = wire.text_request_from_json(body.request)
    return wire.result_to_json(
        await cancellable(request, lambda _: leases.generate_text(lease_id, text_request))
    )


@router.post("/leases/{lease_id}/call")
async def call(request: Request, lease_id: str, body: CallRequest, _: AdminUser, leases: LeasesDep) -> Any:
    args = list(body.args)
    if body.method == "chat_with_tools" and args:
        args[0] = wire.text_request_from_json(args[0])
    return await cancellable(request, lambda _: leases.call(lease_id, body.method, *args))


@router.post("/instances/{instance}/{method}")
async def plain_call(instance: str, method: str, body: PlainRequest, _: AdminUser, leases: LeasesDep) -> Any:
    return await leases.plain_call(instance, method, *body.args)
