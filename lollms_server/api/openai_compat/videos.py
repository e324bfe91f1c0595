"""OpenAI-style video jobs on ``/v1/videos`` (create, retrieve, ``/content``, delete, list),
mapped onto the durable jobs of ``core/jobs``: the official ``openai`` SDK's ``client.videos``
works unchanged. ``model`` is ``<binding instance>`` or ``<binding instance>/<model>``
(omitted: ``[defaults] ttv_binding``); ``size`` becomes width and height; ``seconds`` becomes
``num_frames`` at ``VIDEO_FPS`` frames per second."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from starlette.datastructures import UploadFile

from lollms_server.api.deps import GenerateUser
from lollms_server.api.jobs import JOB_RESPONSES, JobsDep
from lollms_server.api.openai_compat.translate import native, size_parameters, split_model
from lollms_server.core.errors import BadRequestError, NotFoundError
from lollms_server.core.jobs import JobService
from lollms_server.core.jobs.store import JobRecord
from lollms_server.core.security import Principal
from lollms_server.core.types import GenerateRequest

router = APIRouter(prefix="/v1/videos", tags=["openai"], responses=JOB_RESPONSES)

VIDEO_FPS = 8
STATUSES = {
    "queued": "queued",
    "running": "in_progress",
    "succeeded": "completed",
    "failed": "failed",
    "cancelled": "failed",
}


async def _fields(request: Request) -> dict[str, Any]:
    """The create parameters from multipart form data (what the SDK sends) or JSON."""
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = await request.json()
        except ValueError:
            raise BadRequestError("The body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise BadRequestError("The body must be a JSON object.")
        return body
    form = await request.form()
    fields: dict[str, Any] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            raise BadRequestError("input_reference is not supported.", param=key)
        fields[key] = value
    return fields


def _text(fields: dict[str, Any], name: str, limit: int) -> str | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str | int) or len(str(value)) > limit:
        raise BadRequestError(f"{name} must be a string of at most {limit} characters.", param=name)
    return str(value)


def _request(fields: dict[str, Any]) -> tuple[GenerateRequest, dict[str, Any]]:
    prompt = _text(fields, "prompt", 32_000)
    if prompt is None:
        raise BadRequestError("prompt is required.", param="prompt")
    model, size, seconds = _text(fields, "model", 512), _text(fields, "size", 16), _text(fields, "seconds", 4)
    parameters: dict[str, Any] = dict(size_parameters(size))
    if seconds is not None:
        if not (seconds.isascii() and seconds.isdigit()) or not 1 <= int(seconds) <= 60:
            raise BadRequestError("seconds must be a whole number from 1 to 60.", param="seconds")
        parameters.update(num_frames=int(seconds) * VIDEO_FPS, fps=VIDEO_FPS)
    binding, model_name = split_model(model)
    try:  # a name the native request refuses (too long) is the client's 400, never a 500
        request = native(
            GenerateRequest,
            generation_type="ttv",
            prompt=prompt,
            binding_name=binding,
            model_name=model_name,
            parameters=parameters,
        )
    except BadRequestError as exc:
        raise BadRequestError(f"model: {exc.message}", param="model") from None
    return request, {"prompt": prompt, "model": model, "size": size, "seconds": seconds}


async def video_object(jobs: JobService, job: JobRecord) -> dict[str, Any]:
    """A job as OpenAI's ``Video``."""
    view = await jobs.public(job)
    extra = job.extra
    progress = view["progress"]
    percent = 100 if job.status == "succeeded" else int(100 * progress["fraction"]) if progress else 0
    error = None
    if view["error"] is not None:
        error = {"code": view["error"]["type"], "message": view["error"]["message"]}
    return {
        "id": job.id,
        "object": "video",
        "status": STATUSES[job.status],
        "created_at": int(job.created_at),
        "completed_at": int(job.finished_at) if job.finished_at is not None else None,
        "expires_at": int(job.expires_at) if job.expires_at is not None else None,
        "model": extra.get("model") or "default",
        "progress": percent,
        "prompt": extra.get("prompt"),
        "seconds": extra.get("seconds") or "",
        "size": extra.get("size") or "",
        "remixed_from_video_id": None,
        "error": error,
    }


CREATE_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["prompt"],
                    "properties": {
                        "prompt": {"type": "string", "minLength": 1, "maxLength": 32000},
                        "model": {"type": "string", "maxLength": 512},
                        "size": {"type": "string", "maxLength": 16, "example": "512x512"},
                        "seconds": {"type": "string", "maxLength": 4, "example": "4"},
                    },
                }
            }
        },
        "required": True,
    }
}


@router.post("", openapi_extra=CREATE_BODY)
async def create_video(request: Request, principal: GenerateUser, jobs: JobsDep) -> dict[str, Any]:
    """Start a video job (multipart form like OpenAI's, or JSON)."""
    generate, extra = _request(await _fields(request))
    job = await jobs.submit(principal, generate, source="openai_video", extra=extra)
    return await video_object(jobs, job)


@router.get("")
async def list_videos(
    principal: GenerateUser,
    jobs: JobsDep,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    found = await jobs.list(principal, None, limit + 1, "ttv", after, newest_first=order == "desc")
    page = found[:limit]
    data = [await video_object(jobs, job) for job in page]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(found) > limit,
    }


@router.get("/{video_id}")
async def retrieve_video(video_id: str, principal: GenerateUser, jobs: JobsDep) -> dict[str, Any]:
    return await video_object(jobs, await _video(jobs, principal, video_id))


@router.get("/{video_id}/content", response_class=FileResponse)
async def video_content(
    video_id: str,
    principal: GenerateUser,
    jobs: JobsDep,
    variant: Literal["video", "thumbnail", "spritesheet"] = "video",
) -> FileResponse:
    """The video's bytes (409 until it is completed)."""
    job = await _video(jobs, principal, video_id)
    if variant != "video":
        raise NotFoundError(f"No {variant} is made for videos here.", param="variant")
    index = next((item["index"] for item in job.outputs if item["type"] == "video"), 0)
    path, mime_type = await jobs.output(principal, job.id, index)
    return FileResponse(path, media_type=mime_type)


@router.delete("/{video_id}")
async def delete_video(video_id: str, principal: GenerateUser, jobs: JobsDep) -> dict[str, Any]:
    """Cancel an unfinished video job, or delete a finished one."""
    job = await _video(jobs, principal, video_id)
    await jobs.cancel_or_delete(principal, job.id)
    return {"id": job.id, "object": "video.deleted", "deleted": True}


async def _video(jobs: JobService, principal: Principal, video_id: str) -> JobRecord:
    job = await jobs.find(principal, video_id)
    if job.generation_type != "ttv":
        raise NotFoundError("No such video.", param="video_id")
    return job
