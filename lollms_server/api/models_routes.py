"""Model management under ``/api/v1/models`` (admin scope): pull with streamed progress, the
running and recent pulls, cancel, delete. Routes parse, authorize and delegate to the
:class:`~lollms_server.core.models.PullManager` on ``app.state.pulls``.

A client that leaves a pull's event stream stops listening; the pull goes on (another request
for the same files joins it; ``DELETE /api/v1/models/pulls/{id}`` stops it).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from lollms_server.api.deps import AdminUser, GenerateUser
from lollms_server.api.models import ERROR_RESPONSES
from lollms_server.api.sse import EventStreamResponse
from lollms_server.core.errors import LollmsError, NotFoundError
from lollms_server.core.models import Pull, PullManager
from lollms_server.core.models.first_run import FirstRun
from lollms_server.errors import error_body

router = APIRouter(prefix="/api/v1/models", tags=["models"], responses=ERROR_RESPONSES)


def get_pulls(request: Request) -> PullManager:
    pulls: PullManager = request.app.state.pulls
    return pulls


PullsDep = Annotated[PullManager, Depends(get_pulls)]


def get_first_run(request: Request) -> FirstRun:
    first_run: FirstRun = request.app.state.first_run
    return first_run


FirstRunDep = Annotated[FirstRun, Depends(get_first_run)]


class PullRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    binding: str = Field(..., max_length=128, description="Binding instance whose models folder receives it.")
    ref: str = Field(..., max_length=512, description="owner/repo/file.gguf, owner/repo:QUANT or owner/repo.")
    stream: bool = Field(True, description="Server-Sent Events of progress; false: one answer at the end.")


@router.post("/pull", response_model=None, responses={200: {"content": {"text/event-stream": {}}}})
async def pull_model(body: PullRequest, _: AdminUser, pulls: PullsDep) -> Response | dict[str, Any]:
    """Start (or join) a pull. Streamed: ``info`` events ``{file, completed, total}``, then
    ``final`` (``{models}``) or ``error``. Refusals (bad ref, source, size, disk) are plain 4xx."""
    pull = await pulls.start(body.binding, body.ref)
    if not body.stream:
        try:
            await pull.wait()
        except LollmsError:
            pass  # described below
        return pull.describe()

    async def nothing() -> None:
        return None

    return EventStreamResponse(_events(pull), on_close=nothing)


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode("utf-8") + b"\n\n"


async def _events(pull: Pull) -> AsyncGenerator[bytes, None]:
    yield _sse({"type": "info", "pull_id": pull.id, "status": "pulling", "model": pull.plan.installed_name})
    try:
        async for progress in pull.events():
            yield _sse({"type": "info", "pull_id": pull.id, **progress})
    except LollmsError as exc:
        yield _sse({"type": "error", "pull_id": pull.id, "status": exc.status_code, **error_body(
            exc.error_type, exc.message, exc.param)})  # fmt: skip
        return
    yield _sse({"type": "final", "pull_id": pull.id, "models": pull.result})


@router.get("/pulls")
async def list_pulls(_: AdminUser, pulls: PullsDep) -> dict[str, Any]:
    """Running pulls, then recent ones (newest first; a bounded list)."""
    return {"pulls": pulls.list()}


@router.get("/pulls/{pull_id}")
async def get_pull(pull_id: str, _: AdminUser, pulls: PullsDep) -> dict[str, Any]:
    return _pull(pulls, pull_id).describe()


@router.delete("/pulls/{pull_id}")
async def cancel_pull(pull_id: str, _: AdminUser, pulls: PullsDep) -> dict[str, Any]:
    """Stop a running pull (its partial files stay: the next pull of it resumes)."""
    pull = _pull(pulls, pull_id)
    pull.cancel()
    if pull.task is not None:
        try:
            await pull.wait()
        except LollmsError:
            pass
    return pull.describe()


def _pull(pulls: PullManager, pull_id: str) -> Pull:
    pull = pulls.get(pull_id) if len(pull_id) <= 64 else None
    if pull is None:
        raise NotFoundError("No such pull.", param="pull_id")
    return pull


@router.get("/default")
async def default_model(principal: GenerateUser, first_run: FirstRunDep) -> dict[str, Any]:
    """The default text model: ``status`` ready (``model``), pulling (``pull`` progress) or
    missing (``message``: the command and the folder to copy a GGUF into; the web UI shows it).
    ``models_folder`` and ``message`` are for admin keys only (they name server paths)."""
    described = first_run.describe()
    if "admin" not in principal.scopes:
        described["models_folder"] = None
        if described["message"]:
            described["message"] = "This server has no text model yet; an administrator can pull one."
    return described


@router.post("/default/pull")
async def pull_default_model(_: AdminUser, first_run: FirstRunDep) -> dict[str, Any]:
    """Start (or join) the pull of the default model (``[models] default_model``); it becomes
    ``defaults.ttt_model`` once installed. Follow it with ``GET /api/v1/models/default``."""
    pull = await first_run.pull_default()
    return {**first_run.describe(), "pull": pull.describe()}


@router.delete("/{instance}/{model:path}")
async def delete_model(instance: str, model: str, _: AdminUser, pulls: PullsDep) -> dict[str, Any]:
    """Delete an installed model's file or folder (409 while it is loaded, in use or pulled)."""
    await pulls.delete_model(instance, model)
    return {"deleted": model, "binding": instance}
