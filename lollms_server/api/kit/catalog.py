"""Model listings, for every API family: the instances a key may use, the models each can load,
and what a bare ``<instance>`` name means there.

One loop over the instances serves OpenAI's ``/v1/models``, Ollama's ``/api/tags`` and
``/api/show`` and ``/lollms/v1/<type>/models``; each family shapes the entries its own way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lollms_server.core.bindings import BindingInstance
from lollms_server.core.errors import LollmsError, NotFoundError
from lollms_server.core.generation import GenerationService
from lollms_server.core.generation.routing import Target
from lollms_server.core.security import Principal


@dataclass
class Listing:
    """One instance the key may use, and the models it lists (None: it could not list them,
    an instance that cannot start)."""

    instance: BindingInstance
    models: list[dict[str, Any]] | None


async def listings(
    generation: GenerationService,
    principal: Principal,
    serves: Callable[[BindingInstance], bool] | None = None,
) -> list[Listing]:
    """Every instance the key may use (and that ``serves`` accepts), in config order, with its
    models."""
    found = []
    for instance in generation.bindings.instances.values():
        if not principal.can_use_binding(instance.name) or (serves is not None and not serves(instance)):
            continue
        try:
            models: list[dict[str, Any]] | None = await generation.list_models(principal, instance.name)
        except LollmsError:
            models = None
        found.append(Listing(instance, models))
    return found


async def lists(generation: GenerationService, principal: Principal, instance: str, model: str) -> bool:
    """Whether ``instance`` lists ``model`` among the models it can load."""
    return model in [str(item.get("name")) for item in await generation.list_models(principal, instance)]


def kind(instance: BindingInstance) -> str:
    """The generation type a bare model name means here: text, else embeddings, else the first."""
    types = instance.card.generation_types
    return "ttt" if "ttt" in types else "embed" if "embed" in types else (types[0] if types else "ttt")


def default_model(
    generation: GenerationService, principal: Principal, instance: BindingInstance
) -> str | None:
    """The model ``<instance>`` alone names, as routing picks it (``[defaults]``, then the
    instance's ``model_name``); None when there is none."""
    try:
        return generation.resolve(principal, kind(instance), instance.name, None).model
    except LollmsError:
        return None


async def known_model(
    generation: GenerationService,
    principal: Principal,
    instance_name: str,
    model: str | None,
    name: str | None = None,
) -> tuple[Target, dict[str, Any]]:
    """The target ``<instance>[/<model>]`` names and the binding's info on its model; 403 for an
    instance the key may not use (before the lookup: no other names leak), 404 for an unknown
    instance or a model it neither lists nor has loaded (``name``: the model as the client
    named it, for that message)."""
    principal.require_binding(instance_name)
    generation_type = kind(generation.bindings.instance(instance_name))
    target = generation.resolve(principal, generation_type, instance_name, model)
    info = await generation.model_info(principal, target.instance.name, target.model)
    if not info.get("loaded") and not await lists(generation, principal, target.instance.name, target.model):
        raise NotFoundError(f"model '{name or f'{target.instance.name}/{target.model}'}' not found")
    return target, info
