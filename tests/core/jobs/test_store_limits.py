"""A key's job limits in the database, on SQLite and PostgreSQL: checked and reserved in one
transaction per key, so threads (or servers) racing cannot all pass them (T3-17, R-05)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lollms_server.core.jobs.store import JobStore
from tests.postgres import PostgresServer, missing_reason


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.create_database(f"limits_{tmp_path.name.lower()[-40:]}".replace("-", "_"))
    made = JobStore(url)
    made.create_schema()
    yield made
    made.close()


def fields(job_id: str, owner: str = "user") -> dict[str, object]:
    return {
        "id": job_id,
        "owner": owner,
        "source": "native",
        "generation_type": "ttt",
        "request_json": "{}",
        "extra_json": "{}",
        "status": "queued",
        "created_at": time.time(),
        "result_bytes": 0,
        "attempts": 0,
        "cancel_requested": False,
    }


def race(count: int, work: object) -> list[object]:
    results: list[object] = []
    start = threading.Barrier(count)

    def run(index: int) -> None:
        start.wait()
        results.append(work(index))  # type: ignore[operator]

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_racing_submissions_never_pass_max_jobs_per_key(store: JobStore) -> None:
    made = race(16, lambda index: store.create_within(2, 10**9, 10**9, **fields(f"job_{index}"))[0])
    assert sum(job is not None for job in made) == 2
    assert store.usage("user") == (2, 0)
    other, _, _, _ = store.create_within(2, 10**9, 10**9, **fields("job_other", owner="other"))
    assert other is not None  # another key has its own count


def test_racing_results_never_pass_max_result_bytes(store: JobStore) -> None:
    for index in range(6):
        store.create(**fields(f"job_{index}"))
        assert store.claim("server-a", 60) is not None
    fits = race(6, lambda index: store.reserve_result(f"job_{index}", "server-a", "user", 100, 250))
    assert fits.count(True) == 2
    assert store.usage("user")[1] == 200
    assert store.reserve_result("job_0", "server-b", "user", 1, 10**9) is False  # not its lease
