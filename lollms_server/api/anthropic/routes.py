"""The Anthropic routes, ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: each reads
its body (``protocol``), translates it (``translate``, through the kit's chat mapping), runs it
through the native GenerationService (same keys, quotas, pools, fair scheduling and bindings as
every route) and answers one message or its stream of events. The key comes as ``x-api-key``
or ``Authorization: Bearer`` (the key gate reads both); ``anthropic-version`` and
``anthropic-beta`` are accepted. A client that leaves cancels its work and frees its slot.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Request

from lollms_server.api.anthropic import translate
from lollms_server.api.anthropic.protocol import CountTokensRequest, MessagesRequest
from lollms_server.api.deps import GenerateUser, GenerationDep, RequestIdDep
from lollms_server.api.kit import deliver
from lollms_server.api.kit.chat import native_inputs
from lollms_server.api.kit.events import Event, Failed, Finished, Queued, TextDelta
from lollms_server.api.kit.names import split_model
from lollms_server.api.kit.native import native
from lollms_server.api.kit.sse import named_frame
from lollms_server.core.generation import GenerationService
from lollms_server.core.security import Principal
from lollms_server.core.types import GenerateRequest

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"description": '`{"type": "error", "error": {"type": ..., "message": ...}}`'}
    for status in (400, 401, 403, 404, 413, 429, 500, 504, 529)
}
STREAMS: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {}, "text/event-stream": {}}}
}
router = APIRouter(prefix="/v1", tags=["anthropic"], responses=ERRORS)


def _target(generation: GenerationService, model: str) -> tuple[str | None, str | None]:
    """``instance`` or ``instance/model``; a ``claude-...`` name that names no instance (what
    Claude Code asks for unless told otherwise) is the server's default text model."""
    instance, name = split_model(model)
    if model.startswith("claude") and instance not in generation.bindings.instances:
        return None, None
    return instance, name


class _Call:
    """A Messages body read once: its turns, tools, tool choice and native request."""

    def __init__(
        self, generation: GenerationService, body: CountTokensRequest, parameters: dict[str, Any]
    ) -> None:
        self.turns = translate.chat_turns(body)
        tools = translate.offered_tools(body.tools)
        choice, self.single = translate.tool_choice(body, tools)
        self.tools = tools if choice != "none" else []
        if self.tools:
            parameters = {**parameters, "tool_choice": choice}
        instance, model = _target(generation, body.model)
        self.native = native(
            GenerateRequest,
            input_data=native_inputs(self.turns),
            binding_name=instance,
            model_name=model,
            parameters=parameters,
            stream=isinstance(body, MessagesRequest) and body.stream,
        )


@router.post("/messages", responses=STREAMS)
async def messages(
    request: Request,
    body: MessagesRequest,
    principal: GenerateUser,
    generation: GenerationDep,
    request_id: RequestIdDep,
) -> Any:
    call = _Call(generation, body, translate.parameters(body))
    message_id = f"msg_{request_id}"
    if call.tools:
        return await _with_tools(request, body, call, principal, generation, message_id, request_id)
    if not body.stream:
        answer = await deliver.answer(request, generation, call.native, principal, request_id)
        return translate.message(
            message_id,
            body.model,
            translate.answer_blocks(answer.text),
            translate.stop_reason(answer.finish_reason),
            translate.usage(answer.usage),
        )
    estimate = translate.estimate_tokens(call.turns, [])

    def frames(events: AsyncGenerator[Event, None]) -> AsyncGenerator[bytes, None]:
        return _frames(events, message_id, body.model, estimate)

    return await deliver.stream(request, generation, call.native, principal, request_id, frames)


def _start(message_id: str, model: str, input_tokens: int) -> bytes:
    counts = {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 0,
    }
    start = translate.message(message_id, model, [], None, counts)
    return named_frame("message_start", {"type": "message_start", "message": start})


def _block_start(index: int, block: dict[str, Any]) -> bytes:
    return named_frame(
        "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}
    )


def _block_delta(index: int, delta: dict[str, Any]) -> bytes:
    return named_frame("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def _block_stop(index: int) -> bytes:
    return named_frame("content_block_stop", {"type": "content_block_stop", "index": index})


def _end(stop: str, counts: dict[str, int]) -> list[bytes]:
    delta = {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": counts}
    return [named_frame("message_delta", delta), named_frame("message_stop", {"type": "message_stop"})]


PING = named_frame("ping", {"type": "ping"})


def _failed(blocks: _Blocks, event: Failed) -> list[bytes]:
    """A failure mid-stream: the open block closed, then an ``error`` event."""
    status = translate.answer_status(event.status)
    return [*blocks.close(), named_frame("error", translate.error_body(status, event.message))]


class _Blocks:
    """A stream's content blocks, opened as their pieces come: indices from 0, one open at a
    time (a thinking block is closed before the text block opens)."""

    DELTAS = {"thinking": "thinking_delta", "text": "text_delta"}

    def __init__(self) -> None:
        self.index = -1
        self.open: str | None = None
        self.had_text = False

    def piece(self, kind: str, text: str) -> list[bytes]:
        frames = [] if self.open == kind else self._switch(kind)
        delta = {"type": self.DELTAS[kind], kind: text}
        return [*frames, _block_delta(self.index, delta)]

    def _switch(self, kind: str) -> list[bytes]:
        frames = self.close()
        self.index += 1
        self.open = kind
        self.had_text = self.had_text or kind == "text"
        empty = translate.thinking_block("") if kind == "thinking" else {"type": "text", "text": ""}
        return [*frames, _block_start(self.index, empty)]

    def close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [_block_stop(self.index)]

    def whole(self, block: dict[str, Any], delta: dict[str, Any]) -> list[bytes]:
        """A block sent at once: start (empty), one delta, stop."""
        frames = self.close()
        self.index += 1
        empty = {**block, "input": {}} if block["type"] == "tool_use" else {**block, block["type"]: ""}
        return [
            *frames,
            _block_start(self.index, empty),
            _block_delta(self.index, delta),
            _block_stop(self.index),
        ]

    def end(self) -> list[bytes]:
        """Close the last block; an answer without text still ends with a (empty) text block."""
        frames = [] if self.had_text else self._switch("text")
        return [*frames, *self.close()]


async def _frames(
    events: AsyncGenerator[Event, None], message_id: str, model: str, estimate: int
) -> AsyncGenerator[bytes, None]:
    """A text answer's events: ``message_start`` (its ``input_tokens`` an estimate: the prompt is
    not read yet), ``ping``, the blocks (a reasoning model's ``<think>`` as a thinking block, then
    the text), ``message_delta`` with the stop reason and the exact usage, ``message_stop``;
    ``ping`` while waiting in a queue; a failure is an ``error`` event."""
    yield _start(message_id, model, estimate)
    yield PING
    splitter = translate.ThinkingSplitter()
    blocks = _Blocks()
    async for event in events:
        if isinstance(event, Queued):
            yield PING
        elif isinstance(event, TextDelta):
            for kind, piece in splitter.push(event.text):
                for frame in blocks.piece(kind, piece):
                    yield frame
        elif isinstance(event, Finished):
            for kind, piece in splitter.flush():
                for frame in blocks.piece(kind, piece):
                    yield frame
            for frame in blocks.end():
                yield frame
            for frame in _end(translate.stop_reason(event.finish_reason), translate.usage(event.usage)):
                yield frame
        elif isinstance(event, Failed):
            for frame in _failed(blocks, event):
                yield frame
            return


async def _with_tools(
    request: Request,
    body: MessagesRequest,
    call: _Call,
    principal: Principal,
    generation: GenerationService,
    message_id: str,
    request_id: str,
) -> Any:
    """One model turn offering the client's tools; the calls go back as ``tool_use`` blocks. A
    stream shows the text as the model writes it, up to its first call; then the rest of the
    text and each call (its input as one ``input_json_delta``) once the turn ends."""
    if body.stream:
        estimate = translate.estimate_tokens(call.turns, call.tools)

        def frames(events: AsyncGenerator[Event, None]) -> AsyncGenerator[bytes, None]:
            return _tool_frames(events, message_id, body.model, estimate, request_id, call.single)

        return await deliver.tool_stream(
            request, generation, call.native, principal, request_id, call.tools, frames
        )
    turn = await deliver.tool_turn(request, generation, call.native, principal, call.tools)
    calls = turn.tool_calls[:1] if call.single else turn.tool_calls
    thinking, text = translate.turn_text(turn.text)
    content: list[dict[str, Any]] = [translate.thinking_block(thinking)] if thinking is not None else []
    if text:
        content.append({"type": "text", "text": text})
    content.extend(translate.tool_use_blocks(calls, request_id))
    stop = "tool_use" if calls else translate.stop_reason(turn.finish_reason)
    return translate.message(message_id, body.model, content, stop, translate.usage(turn.usage))


async def _tool_frames(
    events: AsyncGenerator[Event, None],
    message_id: str,
    model: str,
    estimate: int,
    request_id: str,
    single: bool,
) -> AsyncGenerator[bytes, None]:
    """A tool turn's events: as ``_frames``, the text held at the model's first call
    (``translate.TextBeforeCalls``), then at the end the rest of the text and one ``tool_use``
    block per call."""
    yield _start(message_id, model, estimate)
    yield PING
    splitter = translate.ThinkingSplitter()
    before = translate.TextBeforeCalls()
    blocks = _Blocks()
    shown = ""

    def pieces(found: list[tuple[str, str]]) -> list[bytes]:
        nonlocal shown
        frames: list[bytes] = []
        for kind, piece in found:
            text = piece if kind == "thinking" else before.push(piece)
            if text:
                shown += text if kind == "text" else ""
                frames.extend(blocks.piece(kind, text))
        return frames

    async for event in events:
        if isinstance(event, Queued):
            yield PING
        elif isinstance(event, TextDelta):
            for frame in pieces(splitter.push(event.text)):
                yield frame
        elif isinstance(event, Finished):
            for frame in pieces(splitter.flush()):
                yield frame
            _, text = translate.turn_text(event.text)
            if text.startswith(shown) and len(text) > len(shown):
                for frame in blocks.piece("text", text[len(shown) :]):
                    yield frame
            calls = event.tool_calls[:1] if single else event.tool_calls
            for block in translate.tool_use_blocks(calls, request_id):
                delta = {"type": "input_json_delta", "partial_json": translate.json_text(block["input"])}
                for frame in blocks.whole(block, delta):
                    yield frame
            for frame in blocks.close():
                yield frame
            stop = "tool_use" if calls else translate.stop_reason(event.finish_reason)
            for frame in _end(stop, translate.usage(event.usage)):
                yield frame
        elif isinstance(event, Failed):
            for frame in _failed(blocks, event):
                yield frame
            return


@router.post("/messages/count_tokens")
async def count_tokens(
    request: Request,
    body: CountTokensRequest,
    principal: GenerateUser,
    generation: GenerationDep,
    request_id: RequestIdDep,
) -> dict[str, int]:
    """The prompt's tokens, exactly as ``/v1/messages`` counts them: the same request read by
    the same model with one token to generate (``input_tokens`` + ``cache_read_input_tokens``
    of the answer). The model reads the prompt, so its prefix cache then holds it for the turn
    that follows."""
    call = _Call(generation, body, {"max_tokens": 1})
    tools = call.tools or None
    count = await deliver.prompt_tokens(request, generation, call.native, principal, request_id, tools)
    return {"input_tokens": count}
