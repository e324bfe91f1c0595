"""How a family's answer leaves: whole, streamed, or a finished turn replayed as a stream (and
embeddings, which every family answers whole).

Every delivery cancels its work when the client leaves: a whole answer through
``api.cancellation.cancellable``, a stream through ``api.sse.EventStreamResponse`` (which frees
the slot in ``on_close``). A family supplies only what differs: its request and its renderer,
a function from the typed events (``kit.events``) to its frames.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable
from typing import Any

from fastapi import Request

from lollms_server.api.cancellation import cancellable
from lollms_server.api.kit.events import Event, Finished, typed
from lollms_server.api.sse import EventStreamResponse
from lollms_server.core.errors import BadRequestError
from lollms_server.core.generation import GenerationService
from lollms_server.core.security import Principal
from lollms_server.core.types import GenerateRequest, GenerateResponse

MAX_EMBEDDED_TEXTS = 2048
"""The most texts one embedding request may send."""

Renderer = Callable[[AsyncGenerator[Event, None]], AsyncGenerator[bytes, None]]


async def whole(
    request: Request,
    generation: GenerationService,
    native: GenerateRequest,
    principal: Principal,
    request_id: str,
) -> GenerateResponse:
    """The native answer (a client that leaves first cancels it)."""
    return await cancellable(
        request, lambda cancel: generation.generate(native, principal, request_id, cancel)
    )


async def answer(
    request: Request,
    generation: GenerationService,
    native: GenerateRequest,
    principal: Principal,
    request_id: str,
) -> Finished:
    """:func:`whole`, as the ``Finished`` event a stream of the same answer ends with (its
    metadata: the first output's), so a family shapes both from one event."""
    response = await whole(request, generation, native, principal, request_id)
    outputs = [output.model_dump() for output in response.output]
    return Finished(dict(response.output[0].metadata) if response.output else {}, outputs)


async def stream(
    request: Request,
    generation: GenerationService,
    native: GenerateRequest,
    principal: Principal,
    request_id: str,
    render: Renderer,
    *,
    response: type[EventStreamResponse] = EventStreamResponse,
    after_close: Callable[[], Awaitable[None]] | None = None,
    on_open: Callable[[Callable[[], Awaitable[None]]], None] | None = None,
) -> EventStreamResponse:
    """The generation streamed in the family's frames. The slot is taken (or the stream is
    queued) before the response starts, so a refusal stays a plain HTTP error; it is freed when
    the stream ends or the client leaves, then ``after_close`` runs. ``on_open`` receives the
    stream's stop (a family that can cancel a stream from another request keeps it)."""
    opened = await cancellable(request, lambda _: generation.open_stream(native, principal, request_id))
    if on_open is not None:
        on_open(opened.aclose)

    async def close() -> None:
        await opened.aclose()
        if after_close is not None:
            await after_close()

    frames = rendered(render, typed(opened.events()))
    return response(frames, on_close=close, deadline=lambda: opened.deadline)


async def tool_turn(
    request: Request,
    generation: GenerationService,
    native: GenerateRequest,
    principal: Principal,
    tools: list[dict[str, Any]],
) -> Finished:
    """One model turn offering the client's ``tools`` (OpenAI function shape), whole, as the
    ``Finished`` a streamed turn ends with: its text without the calls, the calls
    ``[{id, name, arguments}]`` for the client to run (``tool_calls``), usage, finish reason,
    the instance and model that answered (``binding``, ``model``) and the total time."""
    started = time.monotonic()
    target, result, calls = await cancellable(
        request, lambda cancel: generation.chat_turn(native, principal, tools, cancel)
    )
    metadata = {
        "binding": target.name,
        "model": target.model,
        "finish_reason": result.finish_reason,
        "usage": result.usage,
        "timings": {"total": time.monotonic() - started},
        "tool_calls": calls,
    }
    return Finished(metadata, [{"type": "text", "data": result.text, "metadata": metadata}])


async def prompt_tokens(
    request: Request,
    generation: GenerationService,
    native: GenerateRequest,
    principal: Principal,
    request_id: str,
    tools: list[dict[str, Any]] | None = None,
) -> int:
    """The prompt tokens ``native`` reads (offering ``tools`` when not None), exactly as its
    answer counts them: the prompt as the model's template and the tool protocol render it, read
    by the binding (``native`` asks for one token; the prompt then stays in the prefix cache for
    the request that follows). Anthropic's ``count_tokens``, Responses' ``input_tokens``."""
    if tools is not None:
        usage = (await tool_turn(request, generation, native, principal, tools)).usage
    else:
        response = await whole(request, generation, native, principal, request_id)
        usage = response.output[0].metadata.get("usage") or {}
    return int(usage.get("prompt_tokens", 0))


async def tool_stream(
    request: Request,
    generation: GenerationService,
    native: GenerateRequest,
    principal: Principal,
    request_id: str,
    tools: list[dict[str, Any]],
    render: Renderer,
) -> EventStreamResponse:
    """``tool_turn``, streamed: the text as the model writes it (calls included, as written),
    then ``Finished`` with the parsed calls (``Finished.tool_calls``) and the text without them."""
    opened = await cancellable(
        request, lambda _: generation.open_tool_turn(native, principal, tools, request_id)
    )
    frames = rendered(render, typed(opened.events()))
    return EventStreamResponse(frames, on_close=opened.aclose, deadline=lambda: opened.deadline)


async def rendered(render: Renderer, events: AsyncGenerator[Event, None]) -> AsyncGenerator[bytes, None]:
    """The family's frames of ``events``; the events are closed when the frames end (a renderer
    may stop at a ``Failed``) or are closed (the client left), so a renderer needs no cleanup."""
    frames = render(events)
    try:
        async for frame in frames:
            yield frame
    finally:
        await frames.aclose()
        await events.aclose()


async def embed(
    request: Request,
    generation: GenerationService,
    principal: Principal,
    instance: str | None,
    model: str | None,
    texts: list[str],
) -> tuple[Any, list[list[float]]]:
    """Embeddings of 1 to 2048 ``texts`` (a client that leaves first cancels them). Returns
    (target, vectors)."""
    if not texts or len(texts) > MAX_EMBEDDED_TEXTS:
        raise BadRequestError(f"input must hold 1 to {MAX_EMBEDDED_TEXTS} texts.", param="input")
    return await cancellable(request, lambda _: generation.embed(principal, instance, model, texts))


def replay(
    frames: Iterable[bytes] | AsyncIterable[bytes], response: type[EventStreamResponse] = EventStreamResponse
) -> Any:
    """Frames that hold no slot (a finished tool turn, a pull's progress) sent as a stream;
    a client that leaves stops only the sending."""

    async def events() -> AsyncGenerator[bytes, None]:
        if isinstance(frames, AsyncIterable):
            async for frame in frames:
                yield frame
        else:
            for frame in frames:
                yield frame

    async def nothing() -> None:
        return None

    return response(events(), on_close=nothing)
