"""``/lollms/v1``: the helper routes lollms_client's ``lollms`` text binding calls next to ``/v1``
(tokenize, detokenize, context size, models by type), in the shapes it reads. Without them it
falls back to tiktoken, which downloads its vocabulary (and counts another tokenizer's tokens).

``model`` is ``<instance>`` or ``<instance>/<model>``, as on ``/v1``. Same keys, scopes, pools and
limits as the native routes (they run through the GenerationService).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import ConfigDict, Field

from lollms_server.api.cancellation import cancellable
from lollms_server.api.deps import BindingsDep, GenerateUser, GenerationDep
from lollms_server.api.kit.catalog import listings
from lollms_server.api.kit.names import split_model
from lollms_server.api.models import ERROR_RESPONSES
from lollms_server.core.errors import NotFoundError
from lollms_server.core.types import RequestModel

router = APIRouter(prefix="/lollms/v1", tags=["lollms_client"], responses=ERROR_RESPONSES)

MODEL_TYPES = {"llm": "ttt", "tti": "tti", "tts": "tts", "stt": "stt", "ttm": "ttm", "ttv": "ttv"}
"""lollms_client's binding type -> our generation type."""
CONTEXT_KEYS = ("context_size", "n_ctx", "context_length", "max_position_embeddings")


class _LollmsModel(RequestModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, max_length=512, description="<instance> or <instance>/<model>.")


class LollmsTokenizeRequest(_LollmsModel):
    text: str = Field(..., description="Text to tokenize.")


class LollmsDetokenizeRequest(_LollmsModel):
    tokens: list[int] = Field(..., max_length=1_000_000, description="Token ids.")


@router.post("/tokenize")
async def tokenize(
    request: Request, body: LollmsTokenizeRequest, principal: GenerateUser, generation: GenerationDep
) -> dict[str, Any]:
    """``{tokens, count}`` from the instance's own tokenizer."""
    instance, model = split_model(body.model)
    tokens = await cancellable(request, lambda _: generation.tokenize(principal, instance, model, body.text))
    return {"tokens": tokens, "count": len(tokens)}


@router.post("/detokenize")
async def detokenize(
    request: Request, body: LollmsDetokenizeRequest, principal: GenerateUser, generation: GenerationDep
) -> dict[str, Any]:
    instance, model = split_model(body.model)
    text = await cancellable(
        request, lambda _: generation.detokenize(principal, instance, model, body.tokens)
    )
    return {"text": text}


@router.post("/context_size")
async def context_size(
    body: _LollmsModel, principal: GenerateUser, generation: GenerationDep, bindings: BindingsDep
) -> dict[str, Any]:
    """``{context_size}`` as the binding tells it (404 when it does not)."""
    instance, model = split_model(body.model)
    if instance is None:
        target = generation.resolve(principal, "ttt", None, None)
        instance, model = target.name, target.model
    info = await generation.model_info(principal, instance, model)
    for key in CONTEXT_KEYS:
        value = info.get(key)
        if isinstance(value, int) and value > 0:
            return {"context_size": value}
    raise NotFoundError(f"Binding '{bindings.instance(instance).name}' does not tell its context size.")


@router.get("/{model_type}/models")
async def models_of_type(
    model_type: Literal["llm", "tti", "tts", "stt", "ttm", "ttv"],
    principal: GenerateUser,
    generation: GenerationDep,
) -> dict[str, Any]:
    """``{data: [...]}``: each ``<instance>/<model>`` serving ``model_type`` this key may use."""
    generation_type = MODEL_TYPES[model_type]
    data: list[dict[str, Any]] = []
    for listing in await listings(
        generation, principal, lambda instance: generation_type in instance.card.generation_types
    ):
        instance = listing.instance.name
        for model in listing.models or []:  # an instance that cannot start lists nothing
            name = f"{instance}/{model['name']}"
            data.append({"id": name, "model_name": name, "binding": instance, "type": model_type})
    return {"object": "list", "data": data}
