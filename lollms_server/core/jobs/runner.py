"""The job runner of one server process: claims queued jobs from the database under a lease,
runs each through :class:`GenerationService` (same pools, fair scheduler, key quotas, metrics
and provenance as any other generation; priority ``batch`` unless the job asked otherwise),
renews the lease while it runs, and records the end.

Durability comes from the database, not from this process: a job is claimed in submission
order by exactly one server (``JobStore.claim``); it becomes ``running`` only once it holds
its pool slot; every server sweeps jobs whose lease expired (their server died: ``kill -9``,
a crash, a lost host) back to the queue once, or to ``failed: interrupted``. A busy pool (503)
or a key over its quota (429) before the start puts the job back in the queue to wait.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from lollms_server.core.bindings import CancelToken
from lollms_server.core.config import JobsConfig
from lollms_server.core.errors import LollmsError, RateLimitError, ServiceUnavailableError
from lollms_server.core.generation.service import GenerationService, GenerationWatcher
from lollms_server.core.jobs.results import ResultFiles, SavedResult
from lollms_server.core.jobs.store import CANCELLED, FAILED, SUCCEEDED, JobRecord, JobStore
from lollms_server.core.security import Principal
from lollms_server.core.types import GenerateRequest, GenerateResponse

logger = logging.getLogger(__name__)

ENTER_WAIT_SECONDS = 10.0
"""The next claimed job starts once the previous one is in its pool's queue (so the queue keeps
the submission order), or after this long at most."""
BUSY_BACKOFF_SECONDS = 5.0


class JobWatch(GenerationWatcher):
    """What the runner hears of one generation; safe to call from any thread."""

    def __init__(self, before_run: Callable[[], Awaitable[None]] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._before_run = before_run
        self.entered = asyncio.Event()
        """The generation is in its pool's queue, or holds its slot, or has ended."""
        self.started = asyncio.Event()
        self.latest: tuple[int, int] | None = None

    def _set(self, event: asyncio.Event) -> None:
        if threading.get_ident() == self._thread:
            event.set()
        else:
            self._loop.call_soon_threadsafe(event.set)

    def position(self, position: int, eta: float) -> None:
        self._set(self.entered)

    def admitted(self) -> None:
        self._set(self.entered)
        self._set(self.started)

    async def starting(self) -> None:
        if self._before_run is not None:
            await self._before_run()

    def progress(self, step: int, total: int) -> None:
        self.latest = (step, total)


@dataclass(frozen=True)
class Outcome:
    status: str
    saved: SavedResult | None = None
    error_type: str | None = None
    message: str | None = None
    error_status: int | None = None


class RunningJob:
    """One claimed job: its generation and the heartbeat that renews its lease."""

    def __init__(self, runner: JobRunner, job: JobRecord) -> None:
        self.runner = runner
        self.job = job
        self.watch = JobWatch(self._mark_running)
        self.cancel_token = CancelToken()
        self.cancel_asked = False
        self.lost = False
        self.marked = False
        """The database says ``running`` (an attempt counted)."""
        self.marked_at: float | None = None
        self._marking = asyncio.Lock()
        self.survived_start = False
        """The run has lasted a heartbeat: the database no longer holds its start marker."""
        self.requeue_delay = 0.0
        """Seconds a job given back by a busy pool or key stays untaken."""
        self.work: asyncio.Future[GenerateResponse] | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"job-{self.job.id}")

    def cancel(self) -> None:
        """Stop the generation (a queued one leaves its pool's queue; a running one stops
        between steps and gives its slot back)."""
        self.cancel_asked = True
        self.cancel_token.set()
        if self.work is not None:
            self.work.cancel()

    async def _mark_running(self) -> None:
        """Before the run: the attempt and its marker are in the database (``JobStore.recover``
        tells a process that died of this run from one that died later)."""
        async with self._marking:  # the heartbeat may try at the same time
            if self.marked or self.lost:
                return
            runner = self.runner
            self.marked = await runner.store.call(runner.store.mark_running, self.job.id, runner.owner)
            if not self.marked:  # the lease was lost (another server took the job over)
                self.lost = True
                self.cancel()
                return
            self.marked_at = time.monotonic()

    async def _run(self) -> None:
        store, job_id = self.runner.store, self.job.id
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            try:
                outcome = await self._generate()
            finally:
                heartbeat.cancel()
                await asyncio.gather(heartbeat, return_exceptions=True)
                self.watch.entered.set()
            if self.watch.started.is_set() and not self.marked:  # ended within a heartbeat tick
                self.marked = await store.call(store.mark_running, job_id, self.runner.owner)
            if outcome is None:  # given back to the queue
                await store.call(store.requeue, job_id, self.runner.owner, self.requeue_delay)
                return
            await self._record(outcome)
        except SQLAlchemyError:
            logger.exception("Job %s: the jobs database failed; its lease will expire", job_id)
        except Exception:  # never leave a job to be claimed again and again
            logger.exception("Job %s failed unexpectedly", job_id)
            with suppress(Exception):
                await store.call(
                    store.finish,
                    job_id,
                    self.runner.owner,
                    FAILED,
                    self.runner.config.result_ttl_hours * 3600,
                    error_type="internal_error",
                    error_message="The job failed unexpectedly.",
                    error_status=500,
                )
        finally:
            self.runner.active.pop(job_id, None)
            self.runner.wake()

    async def _generate(self) -> Outcome | None:
        principal = self.runner.principal_named(self.job.owner)
        if principal is None:
            return Outcome(
                FAILED, None, "permission_error", "The job's API key is no longer configured.", 403
            )
        try:
            request = GenerateRequest.model_validate_json(self.job.request_json)
        except ValueError:  # kept by an older version whose requests this one no longer takes
            return Outcome(
                FAILED, None, "invalid_request_error", "The stored request is no longer valid.", 400
            )
        generation = self.runner.generation
        work = asyncio.ensure_future(
            generation.generate(request, principal, self.job.id, self.cancel_token, watch=self.watch)
        )
        self.work = work
        if self.cancel_asked:
            work.cancel()
        try:
            response = await work
        except asyncio.CancelledError:
            if not self.cancel_asked or self.runner.closing:
                raise
            return Outcome(CANCELLED, None, "cancelled", "The job was cancelled.", None)
        except (ServiceUnavailableError, RateLimitError) as exc:
            if self.watch.started.is_set():
                return Outcome(FAILED, None, exc.error_type, exc.message, exc.status_code)
            delay = min(BUSY_BACKOFF_SECONDS, max(0.5, float(getattr(exc, "retry_after", None) or 0)))
            self.runner.back_off(delay)
            self.requeue_delay = delay  # this job waits that long; the ones behind it may go first
            return None
        except LollmsError as exc:
            return Outcome(FAILED, None, exc.error_type, exc.message, exc.status_code)
        except Exception:
            logger.exception("Job %s failed", self.job.id)
            return Outcome(FAILED, None, "internal_error", "The job failed unexpectedly.", 500)
        if self.cancel_asked:
            return Outcome(CANCELLED, None, "cancelled", "The job was cancelled.", None)
        try:
            saved = await asyncio.to_thread(self.runner.results.save, self.job.id, response)
        except OSError as exc:
            logger.error("Job %s: its outputs could not be stored (%s)", self.job.id, exc)
            await asyncio.to_thread(self.runner.results.remove, self.job.id)
            return Outcome(FAILED, None, "internal_error", "The job's outputs could not be stored.", 500)
        allowed = self.runner.config.max_result_mb_per_key * 2**20
        store = self.runner.store
        fits = await store.call(  # checked and counted in one transaction (results ending together)
            store.reserve_result, self.job.id, self.runner.owner, self.job.owner, saved.total_bytes, allowed
        )
        if not fits:
            await asyncio.to_thread(self.runner.results.remove, self.job.id)
            message = (
                f"The result ({saved.total_bytes / 2**20:.1f} MB) does not fit in this key's "
                f"{self.runner.config.max_result_mb_per_key:g} MB of stored results."
            )
            return Outcome(FAILED, None, "payload_too_large", message, 413)
        return Outcome(SUCCEEDED, saved)

    async def _record(self, outcome: Outcome) -> None:
        runner, job_id = self.runner, self.job.id
        values: dict[str, object] = {
            "error_type": outcome.error_type,
            "error_message": outcome.message,
            "error_status": outcome.error_status,
        }
        if outcome.saved is not None:
            values.update(
                result_json=outcome.saved.response_json,
                outputs_json=_json(outcome.saved.outputs),
                result_bytes=outcome.saved.total_bytes,
            )
        if self.watch.latest is not None:
            values.update(progress_step=self.watch.latest[0], progress_total=self.watch.latest[1])
        ttl = runner.config.result_ttl_hours * 3600
        if not await runner.store.call(
            runner.store.finish, job_id, runner.owner, outcome.status, ttl, **values
        ):
            logger.warning("Job %s ended after its lease was lost; its result is dropped", job_id)
            if outcome.saved is not None:
                await asyncio.to_thread(runner.results.remove, job_id)
            return
        if runner.generation.metrics is not None:
            runner.generation.metrics.observe_job(self.job.generation_type, outcome.status)
        if runner.on_finish is not None:
            finished = await runner.store.call(runner.store.get, job_id)
            if finished is not None:
                await runner.on_finish(finished)

    async def _heartbeat(self) -> None:
        """Renew the lease, record progress and the start, and notice a cancel asked elsewhere."""
        runner, job_id = self.runner, self.job.id
        tick = min(0.5, runner.config.lease_seconds / 3)
        written = None
        while True:
            try:
                if self.watch.started.is_set() and not self.marked:
                    await self._mark_running()
                progress = self.watch.latest if self.watch.latest != written else None
                survived = (
                    not self.survived_start
                    and self.marked_at is not None
                    and time.monotonic() - self.marked_at >= tick * 0.9
                )
                asked = await runner.store.call(
                    runner.store.heartbeat,
                    job_id,
                    runner.owner,
                    runner.config.lease_seconds,
                    progress,
                    survived,
                )
                written = self.watch.latest if progress is not None else written
                self.survived_start = self.survived_start or (survived and asked is not None)
                if asked is None:  # another server took the job over: stop, record nothing
                    logger.warning("Job %s: lease lost, stopping", job_id)
                    self.lost = True
                    self.cancel()
                    return
                if asked and not self.cancel_asked:
                    self.cancel()
            except SQLAlchemyError as exc:
                logger.warning("Job %s: lease renewal failed (%s)", job_id, type(exc).__name__)
            if self.marked or self.watch.started.is_set():
                await asyncio.sleep(tick)
            else:
                with suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.watch.started.wait(), tick)


def _json(value: object) -> str:
    return json.dumps(value)


class JobRunner:
    """Claims and runs jobs for this process (``concurrency`` at once)."""

    def __init__(
        self,
        store: JobStore,
        generation: GenerationService,
        principal_named: Callable[[str], Principal | None],
        results: ResultFiles,
        config: JobsConfig,
        on_finish: Callable[[JobRecord], Awaitable[None]] | None = None,
        on_cleanup: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.store = store
        self.generation = generation
        self.principal_named = principal_named
        self.results = results
        self.config = config
        self.on_finish = on_finish
        self.on_cleanup = on_cleanup
        self.owner = f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(4)}"
        self.active: dict[str, RunningJob] = {}
        self._wake = asyncio.Event()
        self._busy_until = 0.0
        self._started = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self.closing = False

    def start(self) -> None:
        self._started = time.monotonic()
        self._task = asyncio.create_task(self._loop(), name="job-runner")

    def wake(self) -> None:
        """Look for work now (a job was submitted or one ended)."""
        self._wake.set()

    def back_off(self, seconds: float) -> None:
        """A pool or a key was busy: claim nothing new for a while."""
        self._busy_until = time.monotonic() + min(BUSY_BACKOFF_SECONDS, max(0.5, float(seconds)))

    def cancel_local(self, job_id: str) -> bool:
        """Cancel a job this process runs, at once; False when it runs elsewhere (or nowhere)."""
        running = self.active.get(job_id)
        if running is None:
            return False
        running.cancel()
        return True

    async def close(self, grace_seconds: float = 0.0) -> None:
        """Stop claiming; jobs that have not started go back to the queue at once, running ones
        get ``grace_seconds`` to finish; then the rest stop, and other servers (or the next
        start) take them over at once (a running one counts as interrupted)."""
        self.closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        jobs = list(self.active.values())
        running = {job.task for job in jobs if job.task is not None and job.watch.started.is_set()}
        for job in jobs:
            if job.task is not None and job.task not in running:
                job.task.cancel()
        if running and grace_seconds > 0:
            await asyncio.wait(running, timeout=grace_seconds)
        tasks = [job.task for job in jobs if job.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with suppress(SQLAlchemyError):
            await self.store.call(self.store.expire_leases, self.owner)

    async def _loop(self) -> None:
        last_cleanup = 0.0
        config = self.config
        while True:
            self._wake.clear()
            try:
                await self.store.call(
                    self.store.recover, config.retry_interrupted, config.result_ttl_hours * 3600
                )
                if time.monotonic() - last_cleanup >= config.cleanup_interval_seconds:
                    last_cleanup = time.monotonic()
                    if self.on_cleanup is not None:
                        await self.on_cleanup()
                await self._fill()
            except SQLAlchemyError as exc:
                logger.warning("The jobs database is not answering (%s)", type(exc).__name__)
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._pause())

    def _pause(self) -> float:
        busy = self._busy_until - time.monotonic()
        return max(0.05, busy) if busy > 0 else self.config.poll_seconds

    async def _fill(self) -> None:
        """Claim jobs up to ``concurrency``, each once the previous one is in its queue."""
        while len(self.active) < self.config.concurrency and time.monotonic() >= self._busy_until:
            after_restart = time.monotonic() - self._started < self.config.lease_seconds
            job = await self.store.call(
                self.store.claim, self.owner, self.config.lease_seconds, after_restart=after_restart
            )
            if job is None:
                return
            running = RunningJob(self, job)
            self.active[job.id] = running
            running.start()
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(running.watch.entered.wait(), ENTER_WAIT_SECONDS)
