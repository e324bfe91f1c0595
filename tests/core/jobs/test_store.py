"""The jobs database layer on SQLite files: claims are exclusive and in submission order, leases
expire, interrupted jobs are retried once or fail, cancels and retention."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from lollms_server.core.config import config_from_dict
from lollms_server.core.errors import BadRequestError
from lollms_server.core.jobs.callbacks import check_callback_url
from lollms_server.core.jobs.store import JobStore


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    made = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    made.create_schema()
    return made


def add(store: JobStore, job_id: str, owner: str = "user") -> None:
    store.create(
        id=job_id,
        owner=owner,
        source="native",
        generation_type="tti",
        request_json="{}",
        extra_json="{}",
        status="queued",
        created_at=time.time(),
        result_bytes=0,
        attempts=0,
        cancel_requested=False,
    )


def test_claims_follow_submission_order_and_skip_held_jobs(store: JobStore) -> None:
    for index in range(3):
        add(store, f"job_{index}")
    first = store.claim("a", 30)
    second = store.claim("b", 30)
    assert (first and first.id, second and second.id) == ("job_0", "job_1")
    assert store.position(store.get("job_2").seq) == 3  # type: ignore[union-attr]
    assert store.claim("c", 30) is not None and store.claim("c", 30) is None


def test_racing_claims_from_many_threads_win_each_job_once(store: JobStore) -> None:
    for index in range(40):
        add(store, f"job_{index}")
    won: list[str] = []
    lock = threading.Lock()

    def claim_all(owner: str) -> None:
        while (job := store.claim(owner, 30)) is not None:
            with lock:
                won.append(job.id)

    threads = [threading.Thread(target=claim_all, args=(f"owner-{index}",)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(won) == sorted(f"job_{index}" for index in range(40))


def run(store: JobStore, job_id: str, owner: str, lease: float, survive: bool = True) -> None:
    """Claim and start ``job_id``; ``survive``: the run lasts a heartbeat (then its lease ends)."""
    assert store.claim(owner, lease) is not None and store.mark_running(job_id, owner)
    if survive:
        assert store.heartbeat(job_id, owner, lease, None, survived_start=True) is False


@pytest.mark.parametrize("retry", [True, False])
def test_a_running_job_whose_lease_expired_runs_once_more_or_fails_interrupted(
    store: JobStore, retry: bool
) -> None:
    add(store, "job_0")
    run(store, "job_0", "dead", 0.05)
    assert store.recover(retry, 60) == 0  # the lease still holds
    time.sleep(0.1)
    assert store.recover(retry, 60) == 1
    job = store.get("job_0")
    assert job is not None
    if not retry:
        assert (job.status, job.error_type) == ("failed", "interrupted")
        return
    assert job.status == "queued" and job.lease_owner is None and job.error_type is None
    run(store, "job_0", "next", 0.05)
    time.sleep(0.1)
    store.recover(True, 60)
    job = store.get("job_0")
    # the second death of the same job: it is not run a third time
    assert job is not None and (job.status, job.error_type, job.attempts) == ("failed", "crashed", 2)


@pytest.mark.parametrize("retry", [True, False])
def test_a_job_whose_process_died_at_its_start_is_never_run_again(store: JobStore, retry: bool) -> None:
    """T3-02: a job that kills its server (a request crashing llama.cpp) was retried after each
    restart; the attempt is stored before the run, so a death before its first heartbeat fails it."""
    add(store, "job_0")
    run(store, "job_0", "dead", 0.05, survive=False)
    running = store.get("job_0")
    assert running is not None and (running.status, running.attempts) == ("running", 1)
    time.sleep(0.1)
    assert store.recover(retry, 60) == 1
    job = store.get("job_0")
    assert job is not None and (job.status, job.error_type, job.attempts) == ("failed", "crashed", 1)
    assert store.claim("next", 30) is None


def test_a_job_stopped_by_a_graceful_shutdown_is_not_a_crash(store: JobStore) -> None:
    add(store, "job_0")
    run(store, "job_0", "old", 30, survive=False)  # stopped before its first heartbeat
    store.expire_leases("old")
    assert store.recover(True, 60) == 1
    job = store.get("job_0")
    assert job is not None and (job.status, job.error_type, job.attempts) == ("queued", None, 1)


def test_jobs_a_dead_server_held_keep_their_order_whatever_lease_expires_first(store: JobStore) -> None:
    add(store, "job_0")
    add(store, "job_1")
    run(store, "job_0", "dead", 0.6)
    assert store.claim("dead", 0.05) is not None  # queued behind job_0, its lease ends first
    time.sleep(0.1)
    assert store.recover(True, 60) == 0
    assert store.claim("next", 30) is None  # job_1 waits for job_0 to be back in the queue
    time.sleep(0.6)
    assert store.recover(True, 60) == 1
    first, second = store.claim("next", 30), store.claim("next", 30)
    assert (first and first.id, second and second.id) == ("job_0", "job_1")


def test_queued_jobs_a_dead_server_held_keep_their_order_when_their_leases_end_apart(store: JobStore) -> None:
    add(store, "job_0")
    add(store, "job_1")
    assert store.claim("dead", 0.6) is not None
    assert store.claim("dead", 0.05) is not None
    time.sleep(0.1)
    assert store.claim("next", 30) is None  # job_1's lease ended first; job_0 is still held
    time.sleep(0.6)
    first = store.claim("next", 30)
    assert first is not None and first.id == "job_0"


def test_a_new_server_takes_no_job_behind_another_servers_running_one_in_its_first_lease(
    store: JobStore,
) -> None:
    add(store, "job_0")
    add(store, "job_1")  # never claimed: the old server died first
    assert store.claim("old", 0.3) is not None and store.mark_running("job_0", "old")
    assert store.claim("new", 30, after_restart=True) is None
    assert store.claim("old", 30, after_restart=True) is not None  # its own running job is no reason
    store.delete_many(["job_1"])
    add(store, "job_2")
    assert store.claim("other", 30) is not None  # a server up for a while takes it


def test_a_claimed_job_not_started_is_simply_claimed_again(store: JobStore) -> None:
    add(store, "job_0")
    assert store.claim("dead", 0.05) is not None
    assert store.claim("other", 30) is None
    time.sleep(0.1)
    assert store.recover(True, 60) == 0
    job = store.claim("other", 30)
    assert job is not None and job.attempts == 0


def test_a_job_a_busy_pool_refused_lets_the_ones_behind_it_go_first(store: JobStore) -> None:
    add(store, "job_0")
    add(store, "job_1")
    refused = store.claim("a", 30)
    assert refused is not None and refused.id == "job_0"
    assert store.requeue("job_0", "a", delay=0.4)
    behind = store.claim("a", 30)
    assert behind is not None and behind.id == "job_1"  # not stuck behind job_0
    assert store.claim("b", 30) is None  # job_0 waits out its delay
    time.sleep(0.5)
    again = store.claim("b", 30)
    assert again is not None and again.id == "job_0"


def test_a_job_waiting_out_a_delay_can_be_cancelled(store: JobStore) -> None:
    add(store, "job_0")
    assert store.claim("a", 30) is not None and store.requeue("job_0", "a", delay=30)
    cancelled = store.request_cancel("job_0", 60)
    assert cancelled is not None and cancelled.status == "cancelled"


def test_only_the_lease_owner_writes_and_cancels_reach_it(store: JobStore) -> None:
    add(store, "job_0")
    add(store, "job_1")
    store.claim("me", 30)
    assert store.heartbeat("job_0", "someone else", 30, (1, 2)) is None
    assert store.heartbeat("job_0", "me", 30, (1, 2)) is False
    held = store.request_cancel("job_0", 60)
    assert held is not None and held.status == "queued" and held.cancel_requested
    assert store.heartbeat("job_0", "me", 30, None) is True
    free = store.request_cancel("job_1", 60)
    assert free is not None and free.status == "cancelled"  # nobody held it: cancelled at once
    assert not store.finish("job_0", "someone else", "succeeded", 60)
    assert store.finish("job_0", "me", "cancelled", 60)


def test_finished_jobs_expire_after_their_ttl(store: JobStore) -> None:
    add(store, "job_0")
    add(store, "job_1")
    store.claim("me", 30)
    store.finish("job_0", "me", "succeeded", 0.05, result_bytes=10)
    assert store.usage("user") == (1, 10)
    time.sleep(0.1)
    assert store.expired() == ["job_0"]
    store.delete_many(["job_0"])
    assert store.get("job_0") is None and store.get("job_1") is not None


def test_a_relative_sqlite_file_is_under_the_config_folder(tmp_path: Path) -> None:
    config = config_from_dict({"jobs": {"jobs_folder": "out"}}, base=tmp_path, environ={})
    assert config.jobs.database_url == f"sqlite:///{tmp_path / 'jobs.db'}"
    assert config.jobs.jobs_folder == tmp_path / "out"
    absolute = config_from_dict({"jobs": {"database_url": "sqlite:////var/x.db"}}, base=tmp_path, environ={})
    assert absolute.jobs.database_url == "sqlite:////var/x.db"


def test_callbacks_only_go_to_allowed_hosts() -> None:
    allowed = ["hooks.example", "127.0.0.1:8080"]
    assert check_callback_url("https://hooks.example/done", allowed)
    assert check_callback_url("http://127.0.0.1:8080/x", allowed)
    for url in (
        "http://127.0.0.1:9090/x",
        "http://evil.example/",
        "ftp://hooks.example/",
        "http://user:pw@hooks.example/",
        "http://hooks.example.evil.example/",
        "http://hooks.example/\x00",
    ):
        with pytest.raises(BadRequestError):
            check_callback_url(url, allowed)


def test_a_finished_job_keeps_no_request(store: JobStore, tmp_path: Path) -> None:
    """T3-08: finished rows kept their whole request (uploads included) for result_ttl_hours."""
    for job_id in ("job_0", "job_1", "job_2"):
        add(store, job_id)
    with store.engine.begin() as connection:
        connection.exec_driver_sql("update lollms_jobs set request_json = '" + "x" * 1000 + "'")
    assert store.request_chars("user") == 3000
    store.claim("me", 30)
    store.finish("job_0", "me", "failed", 60)
    store.request_cancel("job_1", 60)  # nobody held it: cancelled at once
    assert store.request_chars("user") == 1000  # only the queued job's request counts
    assert store.get("job_0").request_json == "{}" and store.get("job_1").request_json == "{}"  # type: ignore[union-attr]
    assert len(store.get("job_2").request_json) == 1000  # type: ignore[union-attr]
    with store.engine.begin() as connection:  # a finished row written by an older version
        connection.exec_driver_sql("update lollms_jobs set request_json = 'old' where id = 'job_0'")
    store.create_schema()
    assert store.get("job_0").request_json == "{}"  # type: ignore[union-attr]


def test_the_sqlite_file_is_private(tmp_path: Path) -> None:
    """T3-21: jobs.db holds every key's prompts: it was created with the umask's 0644."""
    import stat

    made = JobStore(f"sqlite:///{tmp_path / 'private' / 'jobs.db'}")
    made.create_schema()
    add(made, "job_0")
    for name in ("jobs.db", "jobs.db-wal"):
        path = tmp_path / "private" / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    assert (tmp_path / "private" / "jobs.db").exists()
