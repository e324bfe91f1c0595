"""Durable async jobs under ``/api/v1/jobs``: submit any ``GenerateRequest``, then watch,
fetch, cancel or delete it. The logic lives in ``core/jobs``; routes parse, authorize and
delegate. A key sees only its own jobs (another key's job is a 404); admin keys see all."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse
from pydantic import Field

from lollms_server.api.deps import GenerateUser
from lollms_server.api.models import ERROR_RESPONSES, GenerateRequest, GenerateResponse
from lollms_server.api.sse import EventStreamResponse
from lollms_server.core.jobs import JobService

JOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    404: {**ERROR_RESPONSES[404], "description": "No such job (or another key's job)"},
    409: {**ERROR_RESPONSES[400], "description": "The job has not succeeded (no result yet)"},
    413: {**ERROR_RESPONSES[413], "description": "The key's stored job results are full"},
    429: {
        **ERROR_RESPONSES[400],
        "description": "The key has max_jobs_per_key unfinished jobs, max_request_mb_per_key of stored "
        "requests, or max_watchers_per_key event streams",
    },
}
router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"], responses=JOB_RESPONSES)

BACKSTOP_SECONDS = 10.0
"""Past a job event stream's deadline, the time its last database read may take."""
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


def get_jobs(request: Request) -> JobService:
    jobs: JobService = request.app.state.jobs
    return jobs


JobsDep = Annotated[JobService, Depends(get_jobs)]


class JobCreate(GenerateRequest):
    """Body of ``POST /api/v1/jobs``: a generation request, run later (``stream`` is ignored;
    ``priority`` is ``batch`` unless given)."""

    callback_url: str | None = Field(
        None, max_length=2048, description="POSTed the job's status when it ends (allowed hosts only)."
    )


@router.post("", status_code=202)
async def submit_job(body: JobCreate, principal: GenerateUser, jobs: JobsDep) -> JSONResponse:
    """Accept a job: 202 with its id, status ``queued`` and place in the queue."""
    request = GenerateRequest.model_validate(body.model_dump(exclude={"callback_url"}))
    job = await jobs.submit(principal, request, callback_url=body.callback_url)
    view = await jobs.public(job)
    headers = {"Location": f"/api/v1/jobs/{job.id}"}
    return JSONResponse({"job_id": job.id, **view}, status_code=202, headers=headers)


@router.get("")
async def list_jobs(
    principal: GenerateUser,
    jobs: JobsDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """The caller's jobs (every job for an admin key), newest first."""
    found = await jobs.list(principal, status, limit)
    return {"object": "list", "data": [await jobs.public(job) for job in found]}


@router.get("/{job_id}")
async def get_job(job_id: str, principal: GenerateUser, jobs: JobsDep) -> dict[str, Any]:
    """Status, queue position, progress (step of total), timestamps, error, outputs."""
    return await jobs.public(await jobs.find(principal, job_id))


@router.get("/{job_id}/result", response_model=GenerateResponse)
async def get_job_result(job_id: str, principal: GenerateUser, jobs: JobsDep) -> GenerateResponse:
    """The finished job's ``GenerateResponse`` (409 until it has succeeded)."""
    return await jobs.result(principal, job_id)


@router.get("/{job_id}/outputs/{index}", response_class=FileResponse)
async def get_job_output(
    job_id: str, index: Annotated[int, PathParam(ge=0, le=10_000)], principal: GenerateUser, jobs: JobsDep
) -> FileResponse:
    """One output as raw bytes with its mime type (no base64)."""
    path, mime_type = await jobs.output(principal, job_id, index)
    return FileResponse(path, media_type=mime_type)


@router.get("/{job_id}/events", responses={200: {"content": {"text/event-stream": {}}}})
async def job_events(job_id: str, principal: GenerateUser, jobs: JobsDep) -> EventStreamResponse:
    """Server-Sent Events: the job's status each time it changes, until it ends, for at most
    ``[jobs] events_max_seconds`` (reconnect to go on); ``max_watchers_per_key`` streams per key
    (429 beyond)."""
    await jobs.find(principal, job_id)  # 404 before the stream starts
    jobs.watchers.enter(principal.name)
    deadline = asyncio.get_running_loop().time() + jobs.settings.events_max_seconds

    async def events() -> AsyncGenerator[bytes, None]:
        async for view in jobs.events(principal, job_id, deadline):
            yield f"data: {json.dumps(view)}\n\n".encode()

    async def leave() -> None:
        jobs.watchers.leave(principal.name)

    # the stream ends itself at the deadline; the response's own deadline is a backstop
    return EventStreamResponse(events(), on_close=leave, deadline=deadline + BACKSTOP_SECONDS)


@router.delete("/{job_id}")
async def delete_job(job_id: str, principal: GenerateUser, jobs: JobsDep) -> dict[str, Any]:
    """Cancel a queued or running job (a running one stops between steps), or delete a
    finished one with its outputs."""
    job, deleted = await jobs.cancel_or_delete(principal, job_id)
    if deleted:
        return {"id": job.id, "object": "job.deleted", "deleted": True}
    return {**await jobs.public(job), "deleted": False}
