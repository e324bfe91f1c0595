"""``Annotated`` dependencies over ``app.state`` (no module globals)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Header, Request

from lollms_server.core.bindings import BindingManager
from lollms_server.core.config import AppConfig
from lollms_server.core.generation import GenerationService
from lollms_server.core.pools import PoolRegistry
from lollms_server.core.security import KeyStore, Principal, extract_key


def get_config(request: Request) -> AppConfig:
    config: AppConfig = request.app.state.config
    return config


def get_bindings(request: Request) -> BindingManager:
    bindings: BindingManager = request.app.state.bindings
    return bindings


def get_pools(request: Request) -> PoolRegistry:
    pools: PoolRegistry = request.app.state.pools
    return pools


def get_generation(request: Request) -> GenerationService:
    generation: GenerationService = request.app.state.generation
    return generation


def get_request_id(request: Request) -> str:
    request_id: str = request.scope.get("state", {}).get("request_id", "")
    return request_id


def authenticate(
    request: Request,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    """The caller's Principal from ``X-API-Key`` or ``Authorization: Bearer`` (401 otherwise)."""
    keys: KeyStore = request.app.state.keys
    principal = keys.authenticate(extract_key(x_api_key, authorization))
    request.scope.setdefault("state", {})["principal"] = principal.name
    return principal


def require_scope(scope: str) -> Callable[[Principal], Principal]:
    """A dependency that authenticates and then checks ``scope`` (403 without it)."""

    def check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        principal.require_scope(scope)
        return principal

    return check


def read_metrics(
    request: Request,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """``/metrics`` needs the admin scope unless ``server.public_metrics`` is on."""
    if not request.app.state.config.server.public_metrics:
        authenticate(request, x_api_key, authorization).require_scope("admin")


ConfigDep = Annotated[AppConfig, Depends(get_config)]
MetricsReader = Annotated[None, Depends(read_metrics)]
BindingsDep = Annotated[BindingManager, Depends(get_bindings)]
PoolsDep = Annotated[PoolRegistry, Depends(get_pools)]
GenerationDep = Annotated[GenerationService, Depends(get_generation)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
GenerateUser = Annotated[Principal, Depends(require_scope("generate"))]
AdminUser = Annotated[Principal, Depends(require_scope("admin"))]
