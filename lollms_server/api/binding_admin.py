"""``/api/v1/bindings/{instance}/commands`` and ``.../settings`` (admin scope): a binding's
declared commands, and its runtime settings (secrets masked on read, write-only)."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ConfigDict, Field

from lollms_server.api.cancellation import cancellable
from lollms_server.api.deps import AdminUser
from lollms_server.api.models import ERROR_RESPONSES
from lollms_server.core.generation.binding_admin import BindingAdmin
from lollms_server.core.types import RequestModel

router = APIRouter(prefix="/api/v1/bindings", tags=["binding admin"], responses=ERROR_RESPONSES)


def get_binding_admin(request: Request) -> BindingAdmin:
    """The app's BindingAdmin, built on first use over the app's managers."""
    state = request.app.state
    admin: BindingAdmin | None = getattr(state, "binding_admin", None)
    if admin is None:
        admin = BindingAdmin(state.config, state.bindings, state.pools, state.generation.gates)
        state.binding_admin = admin
    return admin


BindingAdminDep = Annotated[BindingAdmin, Depends(get_binding_admin)]


class CommandRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, Any] = Field(default_factory=dict, description="The command's parameters.")


class SettingsUpdate(RequestModel):
    model_config = ConfigDict(extra="forbid")

    settings: dict[str, Any] = Field(
        ..., description="Settings to change (a secret sent as ******** is kept)."
    )


def jsonable(value: Any) -> Any:
    """A command's result as JSON: bytes become ``{"base64": ...}``, unknown objects their text."""
    if isinstance(value, bytes | bytearray):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(item) for item in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


@router.get("/{instance}/commands")
async def list_commands(instance: str, _: AdminUser, admin: BindingAdminDep) -> dict[str, Any]:
    """The commands the instance's card declares."""
    return {"binding": instance, "commands": admin.commands(instance)}


@router.post("/{instance}/commands/{command}")
async def run_command(
    request: Request, instance: str, command: str, body: CommandRequest, _: AdminUser, admin: BindingAdminDep
) -> dict[str, Any]:
    """Run a declared command (404 when undeclared); its result as JSON."""
    result = await cancellable(request, lambda _: admin.run_command(instance, command, body.parameters))
    return {"binding": instance, "command": command, "result": jsonable(result)}


@router.get("/{instance}/settings")
async def get_settings(instance: str, _: AdminUser, admin: BindingAdminDep) -> dict[str, Any]:
    return admin.settings(instance)


@router.put("/{instance}/settings")
async def put_settings(
    instance: str,
    body: SettingsUpdate,
    _: AdminUser,
    admin: BindingAdminDep,
    persist: Annotated[bool, Query(description="Also write them to the config file.")] = False,
) -> dict[str, Any]:
    """Change settings: validated, applied after the instance's running generations finish."""
    return await admin.update_settings(instance, body.settings, persist)
