"""The ``/v1/responses`` routes (OpenAI's Responses API, what Codex CLI speaks).

Each request runs through the native GenerationService like every other family (same keys,
quotas, fairness, pools, bindings and metrics); a client that leaves cancels its work
(``api.cancellation``, ``api.sse``). How the turn runs (``tools.plan``):

- no tools (or ``tool_choice: none``): a text answer;
- one tool forced (``tool_choice`` naming it, or ``required`` with one tool): the answer *is* the
  call's arguments, constrained by the tool's JSON schema where the binding can (llama.cpp
  grammars);
- ``auto``: whole, one model turn offering the tools (native tool calls where the binding has
  them, else the server's tool protocol); streamed, the tools are taught in the system turn (the
  tool protocol, the same prompt) and the text streams until a call starts;
- ``required`` among several tools: one grammar-constrained ``{"name", "arguments"}`` answer,
  whole (then sent as events when streamed).

Stored responses (``store``, the default) live in the jobs database (``store``); a
``previous_response_id`` continues one: its conversation is the input's prefix, which the
llama.cpp engine finds again in its prefix cache (``usage.input_tokens_details.cached_tokens``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.exc import SQLAlchemyError

from lollms_server.api.cancellation import cancellable
from lollms_server.api.deps import GenerateUser, GenerationDep, RequestIdDep
from lollms_server.api.kit import deliver
from lollms_server.api.kit.events import Event, Failed, Finished, TextDelta
from lollms_server.api.models import ERROR_RESPONSES
from lollms_server.api.responses import background, dialect, output, tools
from lollms_server.api.responses.encoding import DecodingRoute
from lollms_server.api.responses.protocol import ResponsesInput, ResponsesRequest
from lollms_server.api.responses.store import ResponseStore, StoredResponse
from lollms_server.api.sse import EventStreamResponse
from lollms_server.core.errors import BadRequestError, NotFoundError
from lollms_server.core.generation import GenerationService
from lollms_server.core.jobs.store import SUCCEEDED, JobRecord
from lollms_server.core.security import Principal
from lollms_server.core.types import GenerateRequest

logger = logging.getLogger(__name__)
router = APIRouter(
    prefix="/v1", tags=["openai responses"], responses=ERROR_RESPONSES, route_class=DecodingRoute
)
STREAMS: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {}, "text/event-stream": {}}}
}


class Live:
    """A streamed response being generated in this process (its id went out in
    ``response.created``), which ``POST .../cancel`` can stop."""

    def __init__(self, owner: str, stop: Callable[[], Any]) -> None:
        self.owner = owner
        self.stop = stop
        self.cancelled = False


LIVE: dict[str, Live] = {}
"""Responses in flight here (an entry lives as long as its request)."""


def responses_store(request: Request) -> ResponseStore | None:
    """The stored responses, in the jobs database (None when ``[jobs]`` is off)."""
    state = request.app.state
    store: ResponseStore | None = getattr(state, "responses_store", None)
    if store is None:
        jobs = getattr(state, "jobs", None)
        if jobs is None:
            return None
        settings = state.config.jobs
        store = ResponseStore(
            jobs.store.engine, settings.responses_ttl_hours * 3600, settings.max_responses_per_key
        )
        state.responses_store = store
    return store


async def _stored(
    request: Request, principal: Principal, response_id: str, param: str | None = None
) -> StoredResponse:
    """The key's stored response (a succeeded background one is stored now), else 404."""
    store = responses_store(request)
    found = None
    if store is not None:
        found = await asyncio.to_thread(store.get, principal.name, response_id)
        job = (
            None
            if found is not None
            else await background.job_of(request.app.state.jobs, principal, response_id)
        )
        if job is not None:
            found = await background.settle(request.app.state.jobs, store, principal, job)
    if found is None:
        raise NotFoundError(f"No response with id '{response_id[:128]}' found.", param=param)
    return found


async def _conversation(request: Request, principal: Principal, body: ResponsesInput) -> list[dict[str, Any]]:
    """The stored conversation ``previous_response_id`` continues, then this request's input."""
    history: list[dict[str, Any]] = []
    if body.previous_response_id:
        found = await _stored(request, principal, body.previous_response_id, "previous_response_id")
        history = found.items
    return history + dialect.input_items(body)


async def _keep(
    request: Request, principal: Principal, builder: output.ResponseBuilder, items: list[dict[str, Any]]
) -> None:
    """Store a finished response with its conversation (a database failure is logged: the
    answer still goes out, without being stored)."""
    store = responses_store(request)
    if not builder.stored or store is None:
        return
    response = builder.response()
    try:
        await asyncio.to_thread(store.put, principal.name, response, items + response["output"])
    except SQLAlchemyError as exc:
        logger.warning("/v1/responses: response %s not stored (%s)", builder.id, type(exc).__name__)


# ---------------------------------------------------------------- create


@router.post("/responses", responses=STREAMS)
async def create_response(
    request: Request,
    body: ResponsesRequest,
    principal: GenerateUser,
    generation: GenerationDep,
    request_id: RequestIdDep,
) -> Any:
    store = responses_store(request)
    if body.background and (store is None or not body.store or body.stream):
        raise BadRequestError(
            "background responses need store: true, no stream, and the jobs API ([jobs] enabled).",
            param="background",
        )
    items = await _conversation(request, principal, body)
    plan = tools.plan(body)
    streamed = body.stream and plan.mode in ("text", "forced", "auto")
    protocol = (streamed or body.background) and plan.mode == "auto"  # one generation, calls read from it
    native = dialect.native_request(body, plan, items, stream=streamed, protocol=protocol)
    builder = output.ResponseBuilder(body, f"resp_{request_id}", body.store and store is not None)
    if body.background:
        return await background.submit(request.app.state.jobs, principal, body, native, builder, items)
    if streamed:
        return await _stream(request, principal, generation, native, plan, builder, items)
    frames = await cancellable(
        request, lambda cancel: _whole(generation, native, principal, request_id, plan, builder, cancel)
    )
    await _keep(request, principal, builder, items)
    if not body.stream:
        return builder.response()
    return deliver.replay(frames)


async def _whole(
    generation: GenerationService,
    native: GenerateRequest,
    principal: Principal,
    request_id: str,
    plan: tools.Plan,
    builder: output.ResponseBuilder,
    cancel: Any,
) -> list[bytes]:
    """One whole model turn, written into ``builder``; returns its events (for a replay)."""
    frames = builder.start()
    if plan.mode == "auto":  # native tool calls where the binding has them, else the tool protocol
        _, result, calls = await generation.chat_turn(native, principal, plan.tools.specs, cancel)
        if result.text or not calls:
            frames += builder.message(result.text)
        for call in calls:
            frames += builder.call(plan.tools.lookup(call["name"]), call.get("arguments", {}))
        return frames + builder.finish(result.usage, "stop")
    response = await generation.generate(native, principal, request_id, cancel)
    answer = response.output[0]
    return frames + output.whole_answer(builder, plan, str(answer.data), answer.metadata)


async def _stream(
    request: Request,
    principal: Principal,
    generation: GenerationService,
    native: GenerateRequest,
    plan: tools.Plan,
    builder: output.ResponseBuilder,
    items: list[dict[str, Any]],
) -> EventStreamResponse:
    """Text, a forced call's arguments, or an ``auto`` turn's text then calls, token by token
    (admission before the stream starts: a refusal stays a plain HTTP error)."""
    live: list[Live] = []  # set once the stream is open, before its first frame

    def opened(stop: Callable[[], Any]) -> None:
        live.append(Live(principal.name, stop))
        LIVE[builder.id] = live[0]

    async def forget() -> None:  # always called, even when the stream never started
        LIVE.pop(builder.id, None)

    def frames(events: AsyncGenerator[Event, None]) -> AsyncGenerator[bytes, None]:
        def keep() -> Awaitable[None]:
            return _keep(request, principal, builder, items)

        return _frames(events, output.Writer(builder, plan), builder, live[0], keep)

    return await deliver.stream(
        request, generation, native, principal, builder.id, frames, after_close=forget, on_open=opened
    )


async def _frames(
    events: AsyncGenerator[Event, None],
    writer: output.Writer,
    builder: output.ResponseBuilder,
    live: Live,
    keep: Callable[[], Awaitable[None]],
) -> AsyncGenerator[bytes, None]:
    """The stream's events: ``response.created``..., the writer's items, then
    ``response.completed`` (the response stored: ``keep``), or ``response.failed``
    (``cancelled`` after ``POST .../cancel``)."""
    for frame in builder.start():
        yield frame
    async for event in events:
        if isinstance(event, TextDelta) and event.text:
            for frame in writer.push(event.text):
                yield frame
        elif isinstance(event, Finished):
            ending = writer.end()
            ending += builder.finish(event.usage, event.metadata.get("finish_reason"))
            for frame in ending:
                yield frame
            await keep()
            return
        elif isinstance(event, Failed) and not live.cancelled:
            for frame in builder.fail(event.error_type, event.message):
                yield frame
            return
        elif isinstance(event, Failed):
            break
    if live.cancelled:
        ending = builder.fail("cancelled", "The response was cancelled.", "cancelled")
    else:
        ending = builder.fail("server_error", "The generation ended early.")
    for frame in ending:
        yield frame


# ---------------------------------------------------------------- read, delete, cancel


async def _job(request: Request, principal: Principal, response_id: str) -> JobRecord | None:
    """The key's background response job (None without jobs)."""
    jobs = getattr(request.app.state, "jobs", None)
    return None if jobs is None else await background.job_of(jobs, principal, response_id)


@router.get("/responses/{response_id}")
async def get_response(request: Request, response_id: str, principal: GenerateUser) -> Any:
    """A stored response, or a background one (queued, in progress, failed, cancelled)."""
    job = await _job(request, principal, response_id)
    if job is not None and job.status != SUCCEEDED:
        return background.pending(job)
    return (await _stored(request, principal, response_id)).response


@router.delete("/responses/{response_id}")
async def delete_response(request: Request, response_id: str, principal: GenerateUser) -> Any:
    """Delete a stored response (a background one's job too; one still running: cancelled)."""
    store = responses_store(request)
    deleted = store is not None and await asyncio.to_thread(store.delete, principal.name, response_id)
    if await _job(request, principal, response_id) is not None:
        await request.app.state.jobs.cancel_or_delete(principal, response_id)
        deleted = True
    if not deleted:
        raise NotFoundError(f"No response with id '{response_id[:128]}' found.")
    return {"id": response_id, "object": "response", "deleted": True}


@router.post("/responses/{response_id}/cancel")
async def cancel_response(request: Request, response_id: str, principal: GenerateUser) -> Any:
    """Stop a response still being generated: a stream of this server, or a background one
    (another key's: 404); a finished one cannot be cancelled (400)."""
    live = LIVE.get(response_id)
    if live is not None and live.owner == principal.name:
        live.cancelled = True
        result = live.stop()
        if asyncio.iscoroutine(result):
            await result
        return {"id": response_id, "object": "response", "status": "cancelled"}
    job = await _job(request, principal, response_id)
    if job is not None and not job.finished:
        job, _ = await request.app.state.jobs.cancel_or_delete(principal, response_id)
        return {**background.pending(job), "status": "cancelled"}
    await _stored(request, principal, response_id)
    raise BadRequestError("Only a response still in progress can be cancelled.", param="response_id")


# ---------------------------------------------------------------- input tokens


@router.post("/responses/input_tokens")
async def input_tokens(
    request: Request,
    body: ResponsesInput,
    principal: GenerateUser,
    generation: GenerationDep,
    request_id: RequestIdDep,
) -> Any:
    """The input tokens the same request would read: its prompt, as the model's template and the
    tool protocol render it, read by the binding (one token generated; the prompt stays in the
    prefix cache for the request that follows)."""
    items = await _conversation(request, principal, body)
    plan = tools.plan(body)
    native = dialect.native_request(body, plan, items, stream=False, max_tokens=1)
    offered = plan.tools.specs if plan.mode == "auto" else None
    count = await deliver.prompt_tokens(request, generation, native, principal, request_id, offered)
    return {"object": "response.input_tokens", "input_tokens": count}
