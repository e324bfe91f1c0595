"""Background responses (``background: true``): durable jobs of the jobs API.

A background response is a job (``source = "responses"``, its id the response's id) that any
server on the jobs database may run, with the jobs' queue, leases, limits and retention. The
request and its conversation travel in the job's ``extra``. Until it has succeeded,
``GET /v1/responses/{id}`` shows the job's state (``queued``, ``in_progress``, ``failed``,
``cancelled``); once it has, the response is built from the job's result once and kept with the
stored responses (so its item and call ids never change, and ``previous_response_id`` can
continue it). An ``auto`` turn runs with the server's tool protocol in its system turn (a job
runs one generation), its calls read from the answer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from lollms_server.api.responses import output, tools
from lollms_server.api.responses.protocol import ResponsesRequest
from lollms_server.api.responses.store import ResponseStore, StoredResponse
from lollms_server.core.errors import NotFoundError
from lollms_server.core.jobs import JobService
from lollms_server.core.jobs.store import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobRecord
from lollms_server.core.security import Principal
from lollms_server.core.types import GenerateRequest

SOURCE = "responses"
STATUSES = {QUEUED: "queued", RUNNING: "in_progress", FAILED: "failed", CANCELLED: "cancelled"}


async def submit(
    jobs: JobService,
    principal: Principal,
    body: ResponsesRequest,
    native: GenerateRequest,
    builder: output.ResponseBuilder,
    items: list[dict[str, Any]],
) -> dict[str, Any]:
    """Queue the response as a job; returns the ``queued`` response object."""
    extra = {"request": body.model_dump(mode="json", exclude_none=True), "items": items}
    await jobs.submit(principal, native, source=SOURCE, extra=extra, job_id=builder.id)
    builder.background = True
    builder.status = "queued"
    return builder.response()


async def job_of(jobs: JobService, principal: Principal, response_id: str) -> JobRecord | None:
    """The key's own background response job (an admin key sees no other key's here)."""
    try:
        job = await jobs.find(principal, response_id)
    except NotFoundError:
        return None
    return job if job.source == SOURCE and job.owner == principal.name else None


def _builder(job: JobRecord) -> tuple[ResponsesRequest, output.ResponseBuilder]:
    body = ResponsesRequest.model_validate(job.extra["request"])
    builder = output.ResponseBuilder(body, job.id, stored=True)
    builder.background = True
    builder.created_at = int(job.created_at)
    return body, builder


def pending(job: JobRecord) -> dict[str, Any]:
    """The response object of a job that has not succeeded (yet)."""
    _, builder = _builder(job)
    builder.status = STATUSES.get(job.status, "in_progress")
    if job.status == FAILED:
        builder.error = {"code": job.error_type or "server_error", "message": job.error_message or ""}
    return builder.response()


async def settle(
    jobs: JobService, store: ResponseStore, principal: Principal, job: JobRecord
) -> StoredResponse | None:
    """A succeeded job's response, built from its result and stored (once: a concurrent reader
    that stored it first wins); None while it has not succeeded."""
    if job.status != SUCCEEDED:
        return None
    body, builder = _builder(job)
    result = await jobs.result(principal, job.id)
    answer = result.output[0]
    output.whole_answer(builder, tools.plan(body), str(answer.data), answer.metadata)
    response = builder.response()
    items = [*job.extra["items"], *response["output"]]
    try:
        await asyncio.to_thread(store.put, principal.name, response, items)
    except SQLAlchemyError:  # stored meanwhile by another reader: read theirs
        found = await asyncio.to_thread(store.get, principal.name, job.id)
        if found is not None:
            return found
        raise
    return StoredResponse(job.id, principal.name, response, items)
