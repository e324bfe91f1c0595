"""Native API under ``/api/v1`` (DESIGN §3): routes parse, authorize and delegate."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from lollms_server import __version__
from lollms_server.api.cancellation import cancellable
from lollms_server.api.deps import (
    AdminUser,
    BindingsDep,
    ConfigDep,
    GenerateUser,
    GenerationDep,
    MetricsReader,
    PoolsDep,
    RequestIdDep,
)
from lollms_server.api.models import (
    ERROR_RESPONSES,
    BindingsPublic,
    CountTokensResponse,
    DefaultBindingsPublic,
    DetokenizeRequest,
    DetokenizeResponse,
    GenerateRequest,
    GenerateResponse,
    HealthPublic,
    ModelsPublic,
    TokenizeRequest,
    TokenizeResponse,
)
from lollms_server.api.sse import EventStreamResponse
from lollms_server.core.generation import GenerationStream
from lollms_server.core.generation.queued import QueuedStream
from lollms_server.core.generation.workflows import WorkflowRun
from lollms_server.core.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from lollms_server.core.types import GENERATION_TYPES
from lollms_server.utils.paths import validate_model_name

health_router = APIRouter(tags=["health"])
router = APIRouter(prefix="/api/v1", tags=["native"], responses=ERROR_RESPONSES)


@health_router.get("/health", response_model=HealthPublic)
async def health(request: Request) -> HealthPublic:
    return HealthPublic(
        status="ok", version=__version__, api_key_required=request.app.state.keys.api_key_required
    )


@router.get("/list_bindings", response_model=BindingsPublic)
async def list_bindings(principal: GenerateUser, bindings: BindingsDep) -> BindingsPublic:
    """Binding types, and the instances this key may use."""
    return BindingsPublic(
        binding_types={name: card.public() for name, card in bindings.cards.items()},
        binding_instances={
            name: instance.public()
            for name, instance in bindings.instances.items()
            if principal.can_use_binding(name)
        },
    )


@router.get("/list_active_bindings")
async def list_active_bindings(principal: GenerateUser, bindings: BindingsDep) -> dict[str, Any]:
    active = [instance for instance in bindings.active() if principal.can_use_binding(instance.name)]
    return {"active_bindings": {instance.name: instance.public() for instance in active}}


@router.get("/list_available_models/{binding_name}")
async def list_available_models(
    binding_name: str, principal: GenerateUser, generation: GenerationDep
) -> dict[str, Any]:
    models = await generation.list_models(principal, binding_name)
    return {"binding_name": generation.bindings.instance(binding_name).name, "models": models}


@router.get("/list_models", response_model=ModelsPublic)
async def list_models(principal: GenerateUser, bindings: BindingsDep) -> ModelsPublic:
    """Model files per models sub-folder (for a key limited to some bindings: their folders)."""
    allowed = None
    if principal.allowed_bindings is not None:
        allowed = [name for name in bindings.instances if principal.can_use_binding(name)]
    return ModelsPublic(models=await anyio.to_thread.run_sync(bindings.model_files, allowed))


@router.get("/list_personalities")
async def list_personalities(_: GenerateUser, generation: GenerationDep) -> dict[str, Any]:
    """Personalities with their description, welcome message and disclaimer."""
    return {"personalities": generation.personalities.public()}


@router.get("/list_functions")
async def list_functions(_: GenerateUser, generation: GenerationDep) -> dict[str, Any]:
    """Functions (``module.function``) with their description and JSON schema."""
    return {"functions": generation.functions.public()}


@router.get("/get_default_bindings", response_model=DefaultBindingsPublic)
async def get_default_bindings(_: GenerateUser, config: ConfigDep) -> DefaultBindingsPublic:
    defaults = config.defaults
    return DefaultBindingsPublic(
        defaults={
            **{f"{kind}_binding": defaults.binding_for(kind) for kind in GENERATION_TYPES},
            **{f"{kind}_model": defaults.model_for(kind) for kind in GENERATION_TYPES},
            "personality": defaults.personality,
        }
    )


@router.get("/get_model_info/{binding_name}")
async def get_model_info(
    binding_name: str, principal: GenerateUser, generation: GenerationDep, model_name: str | None = None
) -> dict[str, Any]:
    if model_name is not None:
        validate_model_name(model_name)
    return await generation.model_info(principal, binding_name, model_name)


@router.get("/status")
async def status(_: AdminUser, pools: PoolsDep, request: Request) -> dict[str, Any]:
    """Pools (queue depth, waits, active slots), loaded models with footprint and idle time,
    what the hosts of remote pools report, uptime and version."""
    workers = await pools.refresh()
    return {
        **pools.snapshot(),
        "workers": workers,
        "version": __version__,
        "uptime_seconds": round(time.time() - request.app.state.started_at, 3),
    }


@router.get("/queue")
async def queue(_: AdminUser, pools: PoolsDep, generation: GenerationDep) -> dict[str, Any]:
    """Per pool: the waiting requests in the order they will be served (key name, priority,
    seconds waited, position) and each key's running count and usage; per key: its quotas'
    use (running, waiting, requests and tokens of the last minute)."""
    await pools.refresh()
    await generation.quotas.refresh()  # in Ray mode, the cluster's counts
    fields = ("name", "isolation", "limit", "active", "queued", "waiting", "keys")
    return {
        "pools": [{key: pool.get(key) for key in fields} for pool in pools.snapshot()["pools"]],
        "keys": generation.quotas.usage(),
    }


@health_router.get("/metrics", response_class=PlainTextResponse, responses=ERROR_RESPONSES)
async def metrics(request: Request, _: MetricsReader, pools: PoolsDep) -> PlainTextResponse:
    """Prometheus metrics (admin scope, unless ``server.public_metrics``)."""
    await pools.refresh()
    return PlainTextResponse(request.app.state.metrics.render(), media_type=METRICS_CONTENT_TYPE)


@router.post(
    "/generate", response_model=GenerateResponse, responses={200: {"content": {"text/event-stream": {}}}}
)
async def generate(
    request: Request,
    body: GenerateRequest,
    principal: GenerateUser,
    generation: GenerationDep,
    request_id: RequestIdDep,
) -> Response | GenerateResponse:
    """Generate; with ``stream: true`` the answer is Server-Sent Events of StreamChunk JSON."""
    if body.stream:
        # admitted (a slot, the model loaded) before the response starts; a client that leaves
        # while it waits leaves the queue
        stream = await cancellable(request, lambda _: generation.open_stream(body, principal, request_id))
        return EventStreamResponse(
            _sse_events(stream), on_close=stream.aclose, deadline=lambda: stream.deadline
        )
    return await cancellable(request, lambda cancel: generation.generate(body, principal, request_id, cancel))


async def _sse_events(stream: GenerationStream | QueuedStream | WorkflowRun) -> AsyncGenerator[bytes, None]:
    events = stream.events()
    try:
        async for event in events:
            yield b"data: " + event.model_dump_json().encode("utf-8") + b"\n\n"
    finally:
        await events.aclose()


@router.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(
    request: Request, body: TokenizeRequest, principal: GenerateUser, generation: GenerationDep
) -> TokenizeResponse:
    tokens = await cancellable(
        request, lambda _: generation.tokenize(principal, body.binding_name, body.model_name, body.text)
    )
    return TokenizeResponse(tokens=tokens, count=len(tokens))


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(
    request: Request, body: DetokenizeRequest, principal: GenerateUser, generation: GenerationDep
) -> DetokenizeResponse:
    text = await cancellable(
        request, lambda _: generation.detokenize(principal, body.binding_name, body.model_name, body.tokens)
    )
    return DetokenizeResponse(text=text)


@router.post("/count_tokens", response_model=CountTokensResponse)
async def count_tokens(
    request: Request, body: TokenizeRequest, principal: GenerateUser, generation: GenerationDep
) -> CountTokensResponse:
    """``/tokenize``'s count, without the tokens."""
    return CountTokensResponse(count=(await tokenize(request, body, principal, generation)).count)
