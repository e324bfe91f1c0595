"""Routing: which binding instance and model serve a request (request > personality >
``[defaults]``), and its parameters merged (server defaults < personality < request)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lollms_server.core.bindings import BindingInstance, BindingManager
from lollms_server.core.config import AppConfig
from lollms_server.core.errors import BadRequestError, LollmsError
from lollms_server.core.generation.media_inputs import validate_media_parameters
from lollms_server.core.generation.text_inputs import validate_text_parameters
from lollms_server.core.personalities import Personality
from lollms_server.core.security import Principal
from lollms_server.utils.paths import validate_model_name


@dataclass
class Target:
    """Where a request goes: the instance, its pool and the model."""

    instance: BindingInstance
    model: str
    generation_type: str

    @property
    def name(self) -> str:
        return self.instance.name

    @property
    def pool(self) -> str:
        return self.instance.pool


def resolve(
    config: AppConfig,
    bindings: BindingManager,
    principal: Principal,
    generation_type: str,
    binding_name: str | None,
    model_name: str | None,
    personality: Personality | None = None,
    no_model: Callable[[BindingInstance], LollmsError | None] | None = None,
) -> Target:
    """The target of a request: 400 when nothing names a binding or a model (or ``no_model``'s
    error: the first run's 503 saying how to get one), 403 when the key may not use the binding,
    404 for an unknown binding."""
    defaults = config.defaults
    recommended = personality.config if personality is not None and generation_type == "ttt" else None
    if binding_name is None and recommended is not None and recommended.recommended_binding:
        binding_name = recommended.recommended_binding
        if model_name is None:
            model_name = recommended.recommended_model
    name = binding_name or defaults.binding_for(generation_type)
    if not name:
        raise BadRequestError(
            f"No binding for generation_type '{generation_type}': name one in binding_name "
            f"or set [defaults] {generation_type}_binding.",
            param="binding_name",
        )
    principal.require_binding(name)  # before the lookup: a limited key learns no other names
    instance = bindings.instance(name)
    card_types = instance.card.generation_types
    if generation_type not in card_types and not (generation_type == "i2i" and "tti" in card_types):
        raise BadRequestError(
            f"Binding '{instance.name}' does not support generation_type '{generation_type}'.",
            param="generation_type",
        )
    model = model_name
    if model is None and name == defaults.binding_for(generation_type):
        model = defaults.model_for(generation_type)
    model = model or instance.config.model_name
    if not model:
        error = no_model(instance) if no_model is not None else None
        if error is not None:
            raise error
        raise BadRequestError(
            f"No model for binding '{instance.name}': give model_name or set its model_name.",
            param="model_name",
        )
    validate_model_name(model)
    return Target(instance=instance, model=model, generation_type=generation_type)


def merged_parameters(
    config: AppConfig,
    generation_type: str,
    request_parameters: dict[str, Any],
    personality: Personality | None = None,
) -> dict[str, Any]:
    """Server defaults < personality < request; the personality's anti-prompts join the stop
    sequences. A request without a seed gets a random one, recorded in the output metadata so
    the answer can be reproduced."""
    if generation_type == "ttt":
        from_personality = personality.parameter_defaults() if personality is not None else {}
        parameters = validate_text_parameters(
            {**config.defaults.parameters, **from_personality, **request_parameters}
        )
        if personality is not None and personality.config.anti_prompts:
            stop = parameters.get("stop") or []
            stop = [stop] if isinstance(stop, str) else list(stop)
            parameters["stop"] = list(dict.fromkeys([*stop, *personality.config.anti_prompts]))
    else:
        parameters = validate_media_parameters(request_parameters)
    parameters.setdefault("seed", secrets.randbelow(2**31))
    return parameters
