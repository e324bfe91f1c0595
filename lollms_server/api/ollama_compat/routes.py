"""The Ollama routes under ``/api`` (beside, never over, the native ``/api/v1``): each parses its
Ollama body (``protocol``), translates it (``translate``), runs it through the native
GenerationService (same keys, quotas, pools, fair scheduling and bindings as every route) and
shapes the answer: one JSON object, or with ``stream`` (the default) NDJSON lines. Every route
cancels its work when the client leaves; errors leave as ``{"error": ...}`` (``shape``)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from lollms_server import __version__
from lollms_server.api.deps import AdminUser, ConfigDep, GenerateUser, GenerationDep, RequestIdDep
from lollms_server.api.kit import deliver
from lollms_server.api.kit.catalog import known_model
from lollms_server.api.kit.events import Event, Failed, Finished, Started, TextDelta
from lollms_server.api.ollama_compat import catalog, keep_alive, pulls, translate
from lollms_server.api.ollama_compat.protocol import (
    ChatBody,
    Common,
    EmbedBody,
    EmbeddingsBody,
    GenerateBody,
    NamedBody,
)
from lollms_server.api.ollama_compat.shape import NDJSONStreamResponse
from lollms_server.core.errors import BadRequestError
from lollms_server.core.generation import GenerationService
from lollms_server.core.security import Principal
from lollms_server.core.types import GenerateRequest

logger = logging.getLogger(__name__)

OLLAMA_API_VERSION = "0.9.0"
"""The Ollama API version this emulation follows (clients such as Copilot check a minimum)."""
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"description": '`{"error": "message"}`'} for status in (400, 401, 403, 404, 429, 503)
}
router = APIRouter(prefix="/api", tags=["ollama"], responses=ERRORS)


@router.get("/version")
async def version(_: GenerateUser) -> dict[str, str]:
    return {"version": OLLAMA_API_VERSION, "lollms_server": __version__}


@router.get("/tags")
async def tags(request: Request, principal: GenerateUser, generation: GenerationDep) -> dict[str, Any]:
    """Every model the key may use: ``<instance>/<model>:latest``, and ``<instance>:latest``
    for each instance's default model."""
    listed = await catalog.listed_models(generation, principal, request.app.state.started_at)
    return {"models": [catalog.tag(name, entry) for name, entry in listed]}


@router.post("/show")
async def show(
    request: Request, body: NamedBody, principal: GenerateUser, generation: GenerationDep
) -> dict[str, Any]:
    instance_name, model = translate.model_target(str(body.model))
    if instance_name is None:
        raise BadRequestError("Name a model: '<instance>' or '<instance>/<model>'.", param="model")
    target, info = await known_model(generation, principal, instance_name, model, str(body.model))
    modified = await catalog.modified_time(target.instance, target.model, request.app.state.started_at)
    return catalog.show(target.instance, target.model, info, modified)


@router.get("/ps")
async def ps(principal: GenerateUser, generation: GenerationDep, config: ConfigDep) -> dict[str, Any]:
    """Loaded models of the key's instances; ``expires_at`` from their pool's idle unload."""
    await generation.pools.refresh()
    return {"models": catalog.running(config, generation, principal)}


# ---------------------------------------------------------------- chat and generate


@router.post("/chat")
async def chat(
    request: Request,
    body: ChatBody,
    principal: GenerateUser,
    generation: GenerationDep,
    request_id: RequestIdDep,
) -> Any:
    if not body.messages:  # Ollama: no messages loads the model (keep_alive 0: unloads it)
        return await keep_alive.load(request, generation, principal, body, {"message": _assistant("")})
    inputs = translate.chat_inputs(body.messages)  # read before the options, as always
    native = translate.native_request(body, inputs, translate.parameters(body.options, body.format))
    tools = translate.tools_offered(body.tools)
    if tools:
        return await _chat_with_tools(request, body, native, principal, generation, tools)
    return await _run(request, generation, principal, request_id, native, body, "message")


@router.post("/generate")
async def generate(
    request: Request,
    body: GenerateBody,
    principal: GenerateUser,
    generation: GenerationDep,
    request_id: RequestIdDep,
) -> Any:
    if not body.prompt and not body.images:  # Ollama: an empty prompt loads (or unloads) the model
        return await keep_alive.load(request, generation, principal, body, {"response": ""})
    inputs, extra = translate.generate_inputs(body)
    parameters = {**translate.parameters(body.options, body.format), **extra}
    if body.suffix:
        target = generation.resolve(principal, "ttt", *translate.model_target(body.model))
        if "insert" not in catalog.capabilities(target.instance):
            raise BadRequestError(f"{body.model} does not support insert", param="suffix")
        parameters["suffix"] = body.suffix
    native = translate.native_request(body, inputs, parameters)
    return await _run(request, generation, principal, request_id, native, body, "response")


def _assistant(content: str, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return message


def _piece(field: str, text: str) -> dict[str, Any]:
    return {field: _assistant(text) if field == "message" else text}


def _done(model: str, piece: dict[str, Any], finished: Finished, reason: str | None = None) -> dict[str, Any]:
    """An answer's last object: ``done``, its reason, counts and durations."""
    return {
        "model": model,
        "created_at": translate.now(),
        **piece,
        "done": True,
        "done_reason": reason or translate.done_reason(finished.metadata),
        **translate.durations(finished.metadata, finished.first_token_seconds),
    }


async def _run(
    request: Request,
    generation: GenerationService,
    principal: Principal,
    request_id: str,
    native: GenerateRequest,
    body: ChatBody | GenerateBody,
    field: str,
) -> Any:
    """A chat or generate answer: one object, or NDJSON pieces then the final object."""
    unload = translate.unloads(body.keep_alive)
    if not body.stream:
        answer = await deliver.answer(request, generation, native, principal, request_id)
        if unload:
            await keep_alive.unload(generation, principal, answer.metadata)
        return _done(body.model, _piece(field, answer.text), answer)
    seen: dict[str, Any] = {}

    async def after_close() -> None:
        if unload:
            await keep_alive.unload(generation, principal, seen)

    def lines(events: AsyncGenerator[Event, None]) -> AsyncGenerator[bytes, None]:
        return _lines(events, body.model, field, seen)

    return await deliver.stream(
        request,
        generation,
        native,
        principal,
        request_id,
        lines,
        response=NDJSONStreamResponse,
        after_close=after_close,
    )


async def _lines(
    events: AsyncGenerator[Event, None], model: str, field: str, seen: dict[str, Any]
) -> AsyncGenerator[bytes, None]:
    """Native stream events as Ollama NDJSON; a failure is a last ``{"error": ...}`` line."""
    async for event in events:
        if isinstance(event, Started):
            seen.update(binding=event.binding, model=event.model)
        elif isinstance(event, TextDelta):
            head = {"model": model, "created_at": translate.now()}
            yield translate.line({**head, **_piece(field, event.text), "done": False})
        elif isinstance(event, Finished):
            yield translate.line(_done(model, _piece(field, ""), event))
        elif isinstance(event, Failed):
            yield translate.line({"error": event.message})
            return


async def _chat_with_tools(
    request: Request,
    body: ChatBody,
    native: GenerateRequest,
    principal: Principal,
    generation: GenerationService,
    tools: list[dict[str, Any]],
) -> Any:
    """One model turn offering the client's tools; the calls go back to the client to run."""
    turn = await deliver.tool_turn(request, generation, native, principal, tools)
    if translate.unloads(body.keep_alive):
        await keep_alive.unload(generation, principal, turn.metadata)
    message = _assistant(turn.text, translate.tool_calls(turn.tool_calls))
    if not body.stream:
        return _done(body.model, {"message": message}, turn, "stop")

    head = {"model": body.model, "created_at": translate.now()}
    lines = [
        translate.line({**head, "message": message, "done": False}),
        translate.line(_done(body.model, _piece("message", ""), turn, "stop")),
    ]
    return deliver.replay(lines, NDJSONStreamResponse)


# ---------------------------------------------------------------- embeddings


async def _embed(
    request: Request, generation: GenerationService, principal: Principal, body: Common, texts: list[str]
) -> tuple[list[list[float]], dict[str, int]]:
    instance, model = translate.model_target(body.model)
    started = time.monotonic()
    target, vectors = await deliver.embed(request, generation, principal, instance, model, texts)
    if translate.unloads(body.keep_alive):
        await keep_alive.unload(
            generation, principal, {"binding": target.name, "model": target.model}, "embed"
        )
    return vectors, {"total_duration": int((time.monotonic() - started) * translate.NANOSECONDS)}


@router.post("/embed")
async def embed(
    request: Request, body: EmbedBody, principal: GenerateUser, generation: GenerationDep
) -> dict[str, Any]:
    texts = [body.input] if isinstance(body.input, str) else body.input
    vectors, timing = await _embed(request, generation, principal, body, texts)
    return {"model": body.model, "embeddings": vectors, **timing, "load_duration": 0}


@router.post("/embeddings")
async def embeddings(
    request: Request, body: EmbeddingsBody, principal: GenerateUser, generation: GenerationDep
) -> dict[str, Any]:
    """The older embedding route: one ``prompt``, one ``embedding``."""
    vectors, _ = await _embed(request, generation, principal, body, [body.prompt])
    return {"embedding": vectors[0]}


# ---------------------------------------------------------------- pull and delete


@router.post("/pull")
async def pull(request: Request, body: NamedBody, _: AdminUser) -> Any:
    """Pull ``<instance>/<ref>`` into the instance's models folder (admin scope)."""
    manager = pulls.manager(request)
    instance, ref = pulls.split_ref(str(body.model))
    started = await manager.start(instance, ref)
    if not body.stream:
        return await pulls.wait(started)
    # a client that leaves stops only its progress lines: the pull goes on for the others who
    # joined it, and for the listing
    return deliver.replay(pulls.progress_lines(started), NDJSONStreamResponse)


@router.delete("/delete")
async def delete(request: Request, body: NamedBody, _: AdminUser) -> Response:
    """Delete ``<instance>/<model>``'s files (admin scope; 409 while it is loaded)."""
    manager = pulls.manager(request)
    instance, model = pulls.split_ref(str(body.model))
    await manager.delete_model(instance, model)
    return JSONResponse({})
