"""The jobs database: one SQLAlchemy Core schema for SQLite and PostgreSQL.

Every method of :class:`JobStore` is blocking and runs in a worker thread (``call``), never on
the event loop. Exclusive work is decided by the database: a server *claims* a job with a
conditional ``UPDATE`` (status queued, no live lease) that only one process can win, holds it
under a lease it renews, and writes every later change only while it still owns that lease.
Order is the submission order (``seq``, an auto-increment key).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, RowMapping, make_url
from sqlalchemy.exc import SQLAlchemyError

T = TypeVar("T")
logger = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
MAX_ATTEMPTS = 2
"""A job interrupted while running runs once more (``retry_interrupted``), never a third time."""
DROPPED_REQUEST = "{}"
"""``request_json`` of a finished job: its request is kept only while the job may still run, so
a finished row (kept ``result_ttl_hours``) holds no upload."""
CRASHED = "crashed"
"""Reason of a job whose server process died running it twice, or within its first moments."""
RUN_STARTING, RUN_STOPPED = CRASHED, "interrupted"
"""While a job runs, ``error_type`` is its run marker (a running job shows no error): written
with ``running`` before the run (:data:`RUN_STARTING`: found dead so, the process died within one
heartbeat of the start, most likely of this job), cleared by the first heartbeat a tick later,
and :data:`RUN_STOPPED` when its server stopped it on a graceful shutdown."""

metadata = MetaData()
jobs_table = Table(
    "lollms_jobs",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(40), nullable=False, unique=True),
    Column("owner", String(256), nullable=False, index=True),
    Column("source", String(16), nullable=False, default="native"),
    Column("generation_type", String(8), nullable=False),
    Column("request_json", Text, nullable=False),
    Column("extra_json", Text, nullable=False, default="{}"),
    Column("callback_url", Text, nullable=True),
    Column("status", String(16), nullable=False, index=True),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("expires_at", Float, nullable=True, index=True),
    Column("progress_step", Integer, nullable=True),
    Column("progress_total", Integer, nullable=True),
    Column("error_type", String(64), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("error_status", Integer, nullable=True),
    Column("result_json", Text, nullable=True),
    Column("outputs_json", Text, nullable=True),
    Column("result_bytes", BigInteger, nullable=False, default=0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_owner", String(128), nullable=True),
    Column("lease_expires", Float, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
)


@dataclass(frozen=True)
class JobRecord:
    """One row of the jobs table."""

    seq: int
    id: str
    owner: str
    source: str
    generation_type: str
    request_json: str
    extra_json: str
    callback_url: str | None
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    expires_at: float | None
    progress_step: int | None
    progress_total: int | None
    error_type: str | None
    error_message: str | None
    error_status: int | None
    result_json: str | None
    outputs_json: str | None
    result_bytes: int
    attempts: int
    lease_owner: str | None
    lease_expires: float | None
    cancel_requested: bool

    @classmethod
    def of(cls, row: RowMapping) -> JobRecord:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def extra(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.extra_json or "{}")
        return value

    @property
    def outputs(self) -> list[dict[str, Any]]:
        value: list[dict[str, Any]] = json.loads(self.outputs_json or "[]")
        return value


def engine_for(url: str) -> Engine:
    """An engine for ``sqlite:///file`` (WAL, waits for the lock) or ``postgresql://`` (psycopg 3)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=5)
    if parsed.database and parsed.database != ":memory:":
        _private_database_file(Path(parsed.database))
    engine = create_engine(parsed, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(connection: Any, _: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


def _private_database_file(path: Path) -> None:
    """The SQLite file exists with mode 0600 before SQLite opens it (its ``-wal`` and ``-shm``
    files take the database's mode): it holds every key's prompts and callback URLs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if file.is_file() and file.stat().st_mode & 0o077:
                file.chmod(0o600)
    except OSError:  # not ours to change (a read-only or foreign file): SQLite says what is wrong
        logger.warning("Could not make the jobs database %s private (mode 0600)", path, exc_info=True)


def _unleased(now: float) -> Any:
    """Nobody holds the job: no lease, or one that ran out (a job given back by a busy pool has
    no owner and a lease end in the near future: nobody takes it before then)."""
    column = jobs_table.c
    return or_(column.lease_expires.is_(None), column.lease_expires < now)


def _not_held(now: float) -> Any:
    """No server holds the job (it may still wait out a busy pool's delay)."""
    column = jobs_table.c
    return or_(column.lease_owner.is_(None), column.lease_expires < now)


class JobStore:
    """Jobs in a database: create, read, claim under a lease, finish, recover, clean up."""

    def __init__(self, url: str) -> None:
        self.engine = engine_for(url)
        self._limiter = anyio.CapacityLimiter(8)

    async def call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking store method in a thread (bounded: 8 at once per store)."""
        return await anyio.to_thread.run_sync(
            functools.partial(method, *args, **kwargs), limiter=self._limiter
        )

    def create_schema(self) -> None:
        """Create the table if missing (two servers starting at once: the loser sees it made),
        and drop the requests finished jobs of an older version still keep."""
        try:
            metadata.create_all(self.engine)
        except SQLAlchemyError:
            time.sleep(0.5)
            metadata.create_all(self.engine)
        column = jobs_table.c
        with self.engine.begin() as connection:
            connection.execute(
                update(jobs_table)
                .where(column.status.in_(FINISHED), column.request_json != DROPPED_REQUEST)
                .values(request_json=DROPPED_REQUEST)
            )

    def close(self) -> None:
        self.engine.dispose()

    # ---- submission and reading -----------------------------------------------------------
    def create(self, **fields: Any) -> JobRecord:
        with self.engine.begin() as connection:
            connection.execute(insert(jobs_table).values(**fields))
            return self._get(connection, fields["id"])  # type: ignore[return-value]

    def get(self, job_id: str) -> JobRecord | None:
        with self.engine.connect() as connection:
            return self._get(connection, job_id)

    @staticmethod
    def _get(connection: Connection, job_id: str) -> JobRecord | None:
        row = connection.execute(select(jobs_table).where(jobs_table.c.id == job_id)).mappings().first()
        return JobRecord.of(row) if row is not None else None

    def list_jobs(
        self,
        owner: str | None,
        status: str | None = None,
        generation_type: str | None = None,
        limit: int = 20,
        after_seq: int | None = None,
        newest_first: bool = True,
    ) -> list[JobRecord]:
        column = jobs_table.c
        query = select(jobs_table)
        if owner is not None:
            query = query.where(column.owner == owner)
        if status is not None:
            query = query.where(column.status == status)
        if generation_type is not None:
            query = query.where(column.generation_type == generation_type)
        if after_seq is not None:
            query = query.where(column.seq < after_seq if newest_first else column.seq > after_seq)
        query = query.order_by(column.seq.desc() if newest_first else column.seq).limit(limit)
        with self.engine.connect() as connection:
            return [JobRecord.of(row) for row in connection.execute(query).mappings()]

    def usage(self, owner: str) -> tuple[int, int]:
        """The owner's unfinished jobs and the bytes of its stored results."""
        with self.engine.connect() as connection:
            return self._usage(connection, owner)

    @staticmethod
    def _usage(connection: Connection, owner: str) -> tuple[int, int]:
        column = jobs_table.c
        active = connection.execute(
            select(func.count()).where(column.owner == owner, column.status.in_((QUEUED, RUNNING)))
        ).scalar_one()
        stored = connection.execute(
            select(func.coalesce(func.sum(column.result_bytes), 0)).where(column.owner == owner)
        ).scalar_one()
        return int(active), int(stored)

    def request_chars(self, owner: str) -> int:
        """The size (characters of JSON) of the owner's stored requests: those of its unfinished
        jobs, since a finished job's request is dropped."""
        with self.engine.connect() as connection:
            return self._request_chars(connection, owner)

    @staticmethod
    def _request_chars(connection: Connection, owner: str) -> int:
        column = jobs_table.c
        total = connection.execute(
            select(func.coalesce(func.sum(func.length(column.request_json)), 0)).where(
                column.owner == owner, column.status.in_((QUEUED, RUNNING))
            )
        ).scalar_one()
        return int(total)

    @contextmanager
    def _per_owner(self, owner: str) -> Iterator[Connection]:
        """One transaction that no other one about ``owner`` interleaves with, across threads,
        processes and servers: SQLite's ``BEGIN IMMEDIATE`` (one writer at a time), PostgreSQL's
        transaction-scoped advisory lock on the owner."""
        with self.engine.connect() as connection:
            if self.engine.dialect.name == "sqlite":
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                connection.execute(select(func.pg_advisory_xact_lock(func.hashtext("jobs:" + owner))))
            try:
                yield connection
            except BaseException:
                connection.rollback()
                raise
            connection.commit()

    def create_within(
        self, max_active: int, max_stored_bytes: float, max_request_chars: int, **fields: Any
    ) -> tuple[JobRecord | None, int, int, int]:
        """Insert the job only while its owner has fewer than ``max_active`` unfinished jobs,
        under ``max_stored_bytes`` of results and, with this request, at most
        ``max_request_chars`` of stored requests; checked and inserted atomically (concurrent
        submissions cannot all pass the counts). Returns (the job or None, active, stored,
        request characters held before this one)."""
        with self._per_owner(fields["owner"]) as connection:
            active, stored = self._usage(connection, fields["owner"])
            held = self._request_chars(connection, fields["owner"])
            size = len(fields["request_json"])
            if active >= max_active or stored >= max_stored_bytes or held + size > max_request_chars:
                return None, active, stored, held
            connection.execute(insert(jobs_table).values(**fields))
            return self._get(connection, fields["id"]), active, stored, held

    def reserve_result(self, job_id: str, lease_owner: str, owner: str, size: int, allowed: float) -> bool:
        """Count ``size`` bytes of results for the job (which ``lease_owner`` holds) only if its
        ``owner``'s stored results stay within ``allowed``; checked and reserved atomically, so
        results finishing together cannot all fit the same room."""
        column = jobs_table.c
        with self._per_owner(owner) as connection:
            others = connection.execute(
                select(func.coalesce(func.sum(column.result_bytes), 0)).where(
                    column.owner == owner, column.id != job_id
                )
            ).scalar_one()
            if int(others) + size > allowed:
                return False
            changed = connection.execute(
                update(jobs_table)
                .where(column.id == job_id, column.lease_owner == lease_owner)
                .values(result_bytes=size)
            )
            return changed.rowcount == 1

    def position(self, seq: int) -> int:
        """Place of a queued job among all queued jobs (1: the next to start)."""
        column = jobs_table.c
        with self.engine.connect() as connection:
            ahead = connection.execute(
                select(func.count()).where(column.status == QUEUED, column.seq < seq)
            ).scalar_one()
        return int(ahead) + 1

    # ---- the runner's side ---------------------------------------------------------------
    def claim(self, owner: str, lease_seconds: float, *, after_restart: bool = False) -> JobRecord | None:
        """The oldest queued job nobody holds, now held by ``owner``; None when there is none.
        One ``UPDATE ... RETURNING`` whose condition is checked again on the row it changes, so
        of two servers racing for a job one wins (PostgreSQL skips rows another claim locked;
        SQLite runs one writer at a time).

        Order across a crash: the leases of the jobs a dead server held expire at slightly
        different times, so a job is not taken while an earlier one of the same holder is still
        held (or running, waiting to be recovered). With ``after_restart`` (a server's first
        lease period, when another server's jobs may be those of the process that died before
        this one started), no job behind one held by another server is taken."""
        column = jobs_table.c
        now = time.time()
        ahead = jobs_table.alias("ahead")
        unfinished = ahead.c.status.in_((QUEUED, RUNNING))
        blocking = and_(unfinished, ahead.c.lease_owner == column.lease_owner)
        if after_restart:
            held_elsewhere = and_(unfinished, ahead.c.lease_owner.is_not(None), ahead.c.lease_owner != owner)
            blocking = or_(blocking, held_elsewhere)
        waiting = and_(
            column.status == QUEUED,
            column.cancel_requested.is_(False),
            _unleased(now),
            ~exists().where(ahead.c.seq < column.seq, blocking),
        )
        oldest = (
            select(column.seq).where(waiting).order_by(column.seq).limit(1).with_for_update(skip_locked=True)
        ).scalar_subquery()
        claim = (
            update(jobs_table)
            .where(column.seq == oldest, waiting)
            .values(lease_owner=owner, lease_expires=now + lease_seconds)
            .returning(column.id)
        )
        with self.engine.begin() as connection:
            job_id = connection.execute(claim).scalar()
            return self._get(connection, job_id) if job_id is not None else None

    def _owned(self, job_id: str, owner: str, **values: Any) -> bool:
        column = jobs_table.c
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(jobs_table).where(column.id == job_id, column.lease_owner == owner).values(**values)
            )
        return changed.rowcount == 1

    def mark_running(self, job_id: str, owner: str) -> bool:
        """The job holds its pool slot and is about to run: an attempt, stored (with the run
        marker, see :data:`RUN_STARTING`) before the generation starts."""
        column = jobs_table.c
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(jobs_table)
                .where(column.id == job_id, column.lease_owner == owner, column.status == QUEUED)
                .values(
                    status=RUNNING,
                    started_at=time.time(),
                    attempts=column.attempts + 1,
                    error_type=RUN_STARTING,
                )
            )
        return changed.rowcount == 1

    def heartbeat(
        self,
        job_id: str,
        owner: str,
        lease_seconds: float,
        progress: tuple[int, int] | None,
        survived_start: bool = False,
    ) -> bool | None:
        """Renew the lease (and record progress; ``survived_start``: the run has lasted a
        heartbeat, its marker is cleared); returns whether a cancel was asked, or None when the
        lease is no longer ours."""
        values: dict[str, Any] = {"lease_expires": time.time() + lease_seconds}
        if progress is not None:
            values.update(progress_step=progress[0], progress_total=progress[1])
        if survived_start:
            values.update(error_type=None)
        if not self._owned(job_id, owner, **values):
            return None
        job = self.get(job_id)
        return bool(job is not None and job.cancel_requested)

    def requeue(self, job_id: str, owner: str, delay: float = 0.0) -> bool:
        """Give back a claimed job that has not started (its pool or key was busy): it waits
        again, untaken for ``delay`` seconds, so jobs queued behind it (another pool, another key)
        are not held up by one that keeps being refused."""
        until = time.time() + delay if delay > 0 else None
        return self._owned(
            job_id, owner, lease_owner=None, lease_expires=until, status=QUEUED, error_type=None
        )

    def finish(self, job_id: str, owner: str, status: str, ttl_seconds: float, **values: Any) -> bool:
        """The end of a job this server holds; False when its lease was lost meanwhile."""
        now = time.time()
        return self._owned(
            job_id,
            owner,
            status=status,
            finished_at=now,
            expires_at=now + ttl_seconds,
            lease_owner=None,
            lease_expires=None,
            request_json=DROPPED_REQUEST,
            **values,
        )

    def expire_leases(self, owner: str) -> None:
        """At shutdown: every job of ``owner`` may be taken over at once (a running one was
        stopped, not crashed: :data:`RUN_STOPPED`)."""
        column = jobs_table.c
        with self.engine.begin() as connection:
            connection.execute(
                update(jobs_table)
                .where(column.lease_owner == owner, column.status == RUNNING)
                .values(lease_expires=0.0, error_type=RUN_STOPPED)
            )
            connection.execute(
                update(jobs_table).where(column.lease_owner == owner).values(lease_expires=0.0)
            )

    def recover(self, retry_interrupted: bool, ttl_seconds: float) -> int:
        """Jobs whose server died: one whose cancel was asked ends cancelled; a running one
        fails ``crashed`` when its process died within its first heartbeat (the job itself may
        kill it: never run blindly again) or on its second attempt, else runs once more
        (``retry_interrupted``) or fails ``interrupted``. Returns how many changed."""
        column = jobs_table.c
        now = time.time()
        dead = and_(column.lease_owner.is_not(None), column.lease_expires < now)
        ended = {
            "finished_at": now,
            "expires_at": now + ttl_seconds,
            "lease_owner": None,
            "lease_expires": None,
            "request_json": DROPPED_REQUEST,
        }
        changed = 0
        with self.engine.begin() as connection:
            changed += connection.execute(
                update(jobs_table)
                .where(dead, column.status.in_((QUEUED, RUNNING)), column.cancel_requested.is_(True))
                .values(
                    status=CANCELLED, error_type="cancelled", error_message="The job was cancelled.", **ended
                )
            ).rowcount
            interrupted = and_(dead, column.status == RUNNING)
            at_once = column.error_type == RUN_STARTING
            crashed_again = and_(column.error_type.is_(None), column.attempts >= MAX_ATTEMPTS)
            changed += connection.execute(
                update(jobs_table)
                .where(interrupted, or_(at_once, crashed_again))
                .values(
                    status=FAILED,
                    error_type=CRASHED,
                    error_status=500,
                    error_message=(
                        "The server process died while running this job (at its start, or on its "
                        "second attempt): it is not run again."
                    ),
                    **ended,
                )
            ).rowcount
            if retry_interrupted:
                changed += connection.execute(
                    update(jobs_table)
                    .where(interrupted, column.attempts < MAX_ATTEMPTS)
                    .values(
                        status=QUEUED,
                        lease_owner=None,
                        lease_expires=None,
                        progress_step=None,
                        error_type=None,
                    )
                ).rowcount
            changed += connection.execute(
                update(jobs_table)
                .where(interrupted)
                .values(
                    status=FAILED,
                    error_type="interrupted",
                    error_status=500,
                    error_message="The server running this job stopped before it finished.",
                    **ended,
                )
            ).rowcount
        return changed

    # ---- cancel, delete, retention -------------------------------------------------------
    def request_cancel(self, job_id: str, ttl_seconds: float) -> JobRecord | None:
        """Cancel a queued job nobody holds at once; for a held or running one, ask its server."""
        column = jobs_table.c
        now = time.time()
        with self.engine.begin() as connection:
            connection.execute(
                update(jobs_table)
                .where(column.id == job_id, column.status == QUEUED, _not_held(now))
                .values(
                    status=CANCELLED,
                    error_type="cancelled",
                    error_message="The job was cancelled.",
                    finished_at=now,
                    expires_at=now + ttl_seconds,
                    lease_owner=None,
                    lease_expires=None,
                    request_json=DROPPED_REQUEST,
                )
            )
            connection.execute(
                update(jobs_table)
                .where(column.id == job_id, column.status.in_((QUEUED, RUNNING)))
                .values(cancel_requested=True)
            )
            return self._get(connection, job_id)

    def delete(self, job_id: str) -> bool:
        """Remove a finished job's row."""
        column = jobs_table.c
        with self.engine.begin() as connection:
            removed = connection.execute(
                delete(jobs_table).where(column.id == job_id, column.status.in_(FINISHED))
            )
        return removed.rowcount == 1

    def expired(self, limit: int = 500) -> list[str]:
        """Finished jobs past their retention."""
        column = jobs_table.c
        query = (
            select(column.id)
            .where(column.status.in_(FINISHED), column.expires_at < time.time())
            .order_by(column.seq)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            return list(connection.execute(query).scalars())

    def delete_many(self, job_ids: list[str]) -> None:
        if job_ids:
            with self.engine.begin() as connection:
                connection.execute(delete(jobs_table).where(jobs_table.c.id.in_(job_ids)))
