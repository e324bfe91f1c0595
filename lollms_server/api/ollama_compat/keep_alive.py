"""Ollama's ``keep_alive`` and its load requests: an empty prompt (or no messages) loads the
model, ``keep_alive`` 0 unloads it once answered (``translate.unloads`` reads the value)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request

from lollms_server.api.cancellation import cancellable
from lollms_server.api.ollama_compat import translate
from lollms_server.api.ollama_compat.protocol import Common
from lollms_server.core.errors import LollmsError
from lollms_server.core.generation import GenerationService
from lollms_server.core.security import Principal

logger = logging.getLogger(__name__)


async def load(
    request: Request,
    generation: GenerationService,
    principal: Principal,
    body: Common,
    empty: dict[str, Any],
) -> dict[str, Any]:
    """Load the model (an empty prompt or no messages), or unload it with ``keep_alive`` 0 (an
    admin key; another key's ``keep_alive`` 0 loads it like Ollama would, and leaves it to the
    pool's idle rule)."""
    instance, model = translate.model_target(body.model)
    if translate.unloads(body.keep_alive) and generation.may_unload(principal):
        target = generation.resolve(principal, "ttt", instance, model)
        await generation.unload(principal, target)
        reason = "unload"
    else:
        await cancellable(request, lambda _: generation.preload(principal, "ttt", instance, model))
        reason = "load"
    return {"model": body.model, "created_at": translate.now(), **empty, "done": True, "done_reason": reason}


async def unload(
    generation: GenerationService, principal: Principal, answered: dict[str, Any], kind: str = "ttt"
) -> None:
    """``keep_alive: 0`` once answered by ``answered["binding"]``'s ``answered["model"]``: best
    effort (the answer is out; a model still in use by another request stays, and the pool's
    idle rule frees it later)."""
    binding, model = answered.get("binding"), answered.get("model")
    if not (binding and model):
        return
    try:
        await generation.unload(principal, generation.resolve(principal, kind, binding, model))
    except LollmsError as exc:
        logger.warning("keep_alive 0: %s/%s stays loaded (%s)", binding, model, exc.message)
