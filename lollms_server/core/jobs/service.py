"""Durable async jobs: what the ``/api/v1/jobs`` and ``/v1/videos`` routes call.

A job is a ``GenerateRequest`` kept in the database (``store``) until a server's runner
(``runner``) takes it; its outputs are files (``results``). Keys see only their own jobs (a
job of another key is a 404, as if it did not exist); keys with the ``admin`` scope see all.
A job is owned by its key's *name*, never the key itself.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from lollms_server.core.config import AppConfig
from lollms_server.core.errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
)
from lollms_server.core.generation.media_inputs import check_inputs
from lollms_server.core.generation.service import GenerationService
from lollms_server.core.generation.text_inputs import validate_text_parameters
from lollms_server.core.jobs.callbacks import check_callback_url, notify
from lollms_server.core.jobs.results import ResultFiles
from lollms_server.core.jobs.runner import JobRunner
from lollms_server.core.jobs.store import QUEUED, RUNNING, SUCCEEDED, JobRecord, JobStore
from lollms_server.core.jobs.watchers import Watchers
from lollms_server.core.security import Principal
from lollms_server.core.types import GenerateRequest, GenerateResponse

EVENTS_POLL_SECONDS = 0.5
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def new_job_id(prefix: str = "job") -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class JobService:
    """Submit, read, cancel and delete jobs; owns this process's runner."""

    def __init__(
        self,
        config: AppConfig,
        store: JobStore,
        generation: GenerationService,
        principal_named: Callable[[str], Principal | None],
    ) -> None:
        self.config = config
        self.settings = config.jobs
        self.store = store
        self.generation = generation
        self.results = ResultFiles(config.jobs.jobs_folder)
        self.runner = JobRunner(
            store,
            generation,
            principal_named,
            self.results,
            config.jobs,
            on_finish=self._finished,
            on_cleanup=self.cleanup,
        )
        self._callbacks: set[asyncio.Task[bool]] = set()
        self.watchers = Watchers(config.jobs.max_watchers_per_key)

    @classmethod
    async def open(
        cls,
        config: AppConfig,
        generation: GenerationService,
        principal_named: Callable[[str], Principal | None],
    ) -> JobService:
        """Connect, create the schema if needed and start the runner (a database that cannot be
        used fails the start with a ConfigError that does not echo the URL and its password)."""
        try:
            store = JobStore(config.jobs.database_url)
            await store.call(store.create_schema)
        except (ImportError, ValueError, SQLAlchemyError) as exc:
            raise ConfigError(
                f"jobs.database_url: the jobs database cannot be used ({type(exc).__name__}); "
                "postgresql:// needs lollms_server[postgres]"
            ) from None
        service = cls(config, store, generation, principal_named)
        service.runner.start()
        return service

    async def close(self) -> None:
        """Stop the runner (running jobs get ``server.shutdown_grace_seconds`` to finish)."""
        await self.runner.close(self.config.server.shutdown_grace_seconds)
        for task in list(self._callbacks):
            task.cancel()
        await asyncio.gather(*self._callbacks, return_exceptions=True)
        await self.store.call(self.store.close)

    # ---- submission ------------------------------------------------------------------------
    async def submit(
        self,
        principal: Principal,
        request: GenerateRequest,
        *,
        callback_url: str | None = None,
        source: str = "native",
        extra: dict[str, Any] | None = None,
        job_id: str | None = None,
    ) -> JobRecord:
        """Check the request like a generation would (400/403/404 now, not later), the key's job
        limits (429: too many unfinished jobs; 413: stored results full), then keep it."""
        if callback_url is not None:
            check_callback_url(callback_url, self.settings.allowed_callback_hosts)
        personality = self.generation.personality_of(request)
        self.generation.resolve(
            principal, request.generation_type, request.binding_name, request.model_name, personality
        )
        check_inputs(request.input_data, self.config.limits)
        if request.generation_type == "ttt":  # stop lists, sampling ranges: 400 now, not when it runs
            validate_text_parameters(dict(request.parameters))
        stored_request = request.model_copy(update={"stream": False, "priority": request.priority or "batch"})
        request_json = stored_request.model_dump_json()
        request_limit = self._request_limit(len(request_json))
        allowed = self.settings.max_result_mb_per_key * 2**20
        job, active, stored, held = await self.store.call(  # counted and inserted in one transaction
            self.store.create_within,
            self.settings.max_jobs_per_key,
            allowed,
            request_limit,
            id=job_id or new_job_id(),
            owner=principal.name,
            source=source,
            generation_type=request.generation_type,
            request_json=request_json,
            extra_json=json.dumps(extra or {}),
            callback_url=callback_url,
            status=QUEUED,
            created_at=time.time(),
            result_bytes=0,
            attempts=0,
            cancel_requested=False,
        )
        if job is None and active >= self.settings.max_jobs_per_key:
            raise RateLimitError(
                f"This key has {active} unfinished jobs; the limit is {self.settings.max_jobs_per_key}.",
                limit=self.settings.max_jobs_per_key,
                remaining=0,
                reset_seconds=self.settings.poll_seconds * 5,
                reason="jobs",
            )
        if job is None and held + len(request_json) > request_limit:
            raise RateLimitError(
                f"This key's unfinished jobs hold {held / 2**20:.1f} MB of requests; with this one "
                f"({len(request_json) / 2**20:.1f} MB) that is over the "
                f"{self.settings.max_request_mb_per_key:g} MB allowed ([jobs] max_request_mb_per_key): "
                "wait until some have run.",
                limit=request_limit,
                remaining=max(0, request_limit - held),
                reset_seconds=self.settings.poll_seconds * 5,
                reason="job_bytes",
            )
        if job is None:
            raise PayloadTooLargeError(
                f"This key's stored job results use {stored / 2**20:.1f} MB of the "
                f"{self.settings.max_result_mb_per_key:g} MB allowed: delete finished jobs or wait "
                "until they expire."
            )
        if self.generation.metrics is not None:
            self.generation.metrics.observe_job(request.generation_type, "submitted")
        self.runner.wake()
        return job

    def _request_limit(self, size: int) -> int:
        """The key's unfinished jobs keep their requests (inputs included) in the database:
        together at most ``max_request_mb_per_key`` (429 until some have run, checked with the
        insert); one request larger than all of it is a 413 at once."""
        limit = int(self.settings.max_request_mb_per_key * 2**20)
        if size > limit:
            raise PayloadTooLargeError(
                f"This job's request is {size / 2**20:.1f} MB; a key's unfinished jobs may hold "
                f"{self.settings.max_request_mb_per_key:g} MB ([jobs] max_request_mb_per_key)."
            )
        return limit

    # ---- reading ---------------------------------------------------------------------------
    async def find(self, principal: Principal, job_id: str) -> JobRecord:
        """The caller's job (any job for an admin key), else 404."""
        job = await self.store.call(self.store.get, job_id) if JOB_ID.fullmatch(job_id) else None
        if job is None or not _may_see(principal, job):
            raise NotFoundError("No such job.", param="job_id")
        return job

    async def list(
        self,
        principal: Principal,
        status: str | None = None,
        limit: int = 20,
        generation_type: str | None = None,
        after: str | None = None,
        newest_first: bool = True,
    ) -> list[JobRecord]:
        after_seq = (await self.find(principal, after)).seq if after else None
        owner = None if "admin" in principal.scopes else principal.name
        return await self.store.call(
            self.store.list_jobs, owner, status, generation_type, limit, after_seq, newest_first
        )

    async def public(self, job: JobRecord) -> dict[str, Any]:
        """The status a client sees."""
        position = await self.store.call(self.store.position, job.seq) if job.status == QUEUED else None
        progress = None
        if job.progress_total:
            step = job.progress_step or 0
            progress = {
                "step": step,
                "total": job.progress_total,
                "fraction": round(step / job.progress_total, 4),
            }
        error = None
        if job.error_type is not None and job.finished:  # a running one's is the store's run marker
            error = {
                "type": job.error_type,
                "reason": job.error_type,
                "message": job.error_message,
                "status": job.error_status,
            }
        base = f"/api/v1/jobs/{job.id}"
        outputs = [
            {key: item[key] for key in ("index", "type", "mime_type", "bytes")}
            | {"url": f"{base}/outputs/{item['index']}"}
            for item in job.outputs
        ]
        return {
            "id": job.id,
            "object": "job",
            "status": job.status,
            "generation_type": job.generation_type,
            "owner": job.owner,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "expires_at": job.expires_at,
            "queue_position": position,
            "progress": progress,
            "attempts": job.attempts,
            "cancel_requested": job.cancel_requested,
            "error": error,
            "outputs": outputs,
            "result_url": f"{base}/result" if job.status == SUCCEEDED else None,
        }

    async def result(self, principal: Principal, job_id: str) -> GenerateResponse:
        """The job's ``GenerateResponse`` (409 until it has succeeded)."""
        job = self._succeeded(await self.find(principal, job_id))
        assert job.result_json is not None
        try:
            return await asyncio.to_thread(self.results.response, job.id, job.result_json, job.outputs)
        except FileNotFoundError:  # its files went with a cleanup that raced this read
            raise NotFoundError("No such job.", param="job_id") from None

    async def output(self, principal: Principal, job_id: str, index: int) -> tuple[Path, str]:
        """One output's file and mime type (409 until succeeded, 404 for an unknown index)."""
        job = self._succeeded(await self.find(principal, job_id))
        outputs = job.outputs
        if not 0 <= index < len(outputs):
            raise NotFoundError(f"The job has {len(outputs)} outputs.", param="index")
        path = self.results.path(job.id, outputs[index])
        if not await asyncio.to_thread(path.is_file):  # removed by a cleanup meanwhile
            raise NotFoundError("No such job.", param="job_id")
        return path, str(outputs[index]["mime_type"])

    @staticmethod
    def _succeeded(job: JobRecord) -> JobRecord:
        if job.status != SUCCEEDED:
            raise ConflictError(f"The job is {job.status}; its result exists once it has succeeded.")
        return job

    async def events(
        self, principal: Principal, job_id: str, deadline: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The job's status each time it changes, until it ends or the loop time ``deadline``
        passes (read from the database, so a job another server runs is watched the same way)."""
        loop = asyncio.get_running_loop()
        last: dict[str, Any] | None = None
        first = True
        while True:
            try:
                job = await self.find(principal, job_id)
            except NotFoundError:
                if first:
                    raise  # before the stream: a plain 404
                yield {"id": job_id, "object": "job", "status": "deleted"}  # gone while watched
                return
            first = False
            view = await self.public(job)
            if view != last:
                last = view
                yield view
            if view["status"] not in (QUEUED, RUNNING):
                return
            if deadline is not None and loop.time() + EVENTS_POLL_SECONDS > deadline:
                return  # a clean end: the client reconnects to watch on
            await asyncio.sleep(EVENTS_POLL_SECONDS)

    # ---- cancel, delete, retention ---------------------------------------------------------
    async def cancel_or_delete(self, principal: Principal, job_id: str) -> tuple[JobRecord, bool]:
        """Cancel a queued or running job (its server stops it between steps), or delete a
        finished one with its outputs; returns the job and whether it was deleted."""
        job = await self.find(principal, job_id)
        if job.finished:
            if await self.store.call(self.store.delete, job.id):
                await asyncio.to_thread(self.results.remove, job.id)
            return job, True
        changed = await self.store.call(
            self.store.request_cancel, job.id, self.settings.result_ttl_hours * 3600
        )
        self.runner.cancel_local(job.id)
        return changed or job, False

    async def cleanup(self) -> int:
        """Remove jobs past ``result_ttl_hours`` and their files."""
        expired = await self.store.call(self.store.expired)
        await self.store.call(self.store.delete_many, expired)  # rows first: no job without its files
        for job_id in expired:
            await asyncio.to_thread(self.results.remove, job_id)
        return len(expired)

    async def _finished(self, job: JobRecord) -> None:
        if job.callback_url is None:
            return
        payload = await self.public(job)
        task = asyncio.create_task(notify(job.callback_url, payload, self.settings.callback_timeout))
        self._callbacks.add(task)
        task.add_done_callback(self._callbacks.discard)


def _may_see(principal: Principal, job: JobRecord) -> bool:
    return job.owner == principal.name or "admin" in principal.scopes
