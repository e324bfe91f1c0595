"""A key's job limits are checked and reserved atomically: concurrent submissions cannot all
pass ``max_jobs_per_key`` (T3-17), results finishing together cannot all fit the same room of
``max_result_mb_per_key`` (R-05); and they belong to one key only (T3-11)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from tests.conftest import ADMIN_KEY, GOOD_KEY

USER = {"X-API-Key": GOOD_KEY}
ADMIN = {"X-API-Key": ADMIN_KEY}


async def wait_finished(client: Any, job_id: str, headers: dict[str, str]) -> dict[str, Any]:
    for _ in range(400):
        view: dict[str, Any] = (await client.get(f"/api/v1/jobs/{job_id}", headers=headers)).json()
        if view["status"] not in ("queued", "running"):
            return view
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


async def test_concurrent_submissions_never_pass_max_jobs_per_key(app_client: Any) -> None:
    """T3-17: the count and the insert were two transactions: 13 of 32 were accepted with a limit of 2."""
    async with app_client(jobs={"poll_seconds": 30, "max_jobs_per_key": 2}) as client:

        async def submit(index: int) -> int:
            body = {
                "prompt": f"job {index} a b c",
                "binding_name": "echo",
                "model_name": "echo",
                "parameters": {"delay": 1.0},  # unfinished for seconds
            }
            return (await client.post("/api/v1/jobs", json=body, headers=USER)).status_code

        statuses = await asyncio.gather(*(submit(index) for index in range(32)))
        assert sorted(statuses) == [202, 202] + [429] * 30
        listed = (await client.get("/api/v1/jobs?limit=100", headers=USER)).json()["data"]
        unfinished = [job for job in listed if job["status"] in ("queued", "running")]
        assert len(listed) == 2 and len(unfinished) == 2


async def test_results_finishing_together_cannot_all_fit_the_same_room(app_client: Any) -> None:
    """R-05: each finishing job checked 'stored + its own' without a lock, so jobs of one key
    ending together all fitted a room for one."""
    sections = {
        "jobs": {"poll_seconds": 0.05, "concurrency": 4},
        "resource_manager": {"pools": {"default": {"limit": 4, "queue_size": 16, "queue_timeout": 30}}},
    }
    async with app_client(**sections) as client:
        state = client.app.state  # type: ignore[attr-defined]
        body = {"prompt": "same words here", "binding_name": "echo", "model_name": "echo"}
        probe = (await client.post("/api/v1/jobs", json=body, headers=ADMIN)).json()["job_id"]
        assert (await wait_finished(client, probe, ADMIN))["status"] == "succeeded"
        size = (await state.jobs.store.call(state.jobs.store.get, probe)).result_bytes
        assert size > 0
        state.jobs.settings.max_result_mb_per_key = size * 1.5 / 2**20  # room for one result
        results = state.jobs.runner.results
        save, together = results.save, threading.Barrier(4, timeout=20)

        def save_then_wait(*args: Any) -> Any:  # the four results are ready at the same moment
            saved = save(*args)
            together.wait()
            return saved

        results.save = save_then_wait
        slow = {**body, "parameters": {"delay": 0.1}}
        submitted = [(await client.post("/api/v1/jobs", json=slow, headers=USER)).json() for _ in range(4)]
        views = [await wait_finished(client, job["job_id"], USER) for job in submitted]
        statuses = sorted(view["status"] for view in views)
        assert statuses == ["failed", "failed", "failed", "succeeded"], views
        assert {view["error"]["type"] for view in views if view["status"] == "failed"} == {
            "payload_too_large"
        }


async def test_an_unnamed_key_never_shares_the_identity_of_a_named_one(app_client: Any) -> None:
    """T3-11: the unnamed second key was called 'key-2', the name Alice chose: Bob listed, read
    and cancelled her job and shared her job limit."""
    alice, bob = {"X-API-Key": "alice-key-0123456789"}, {"X-API-Key": "bob-key-9876543210"}
    keys = [
        {"name": "key-2", "key": "alice-key-0123456789", "scopes": ["generate"]},
        {"key": "bob-key-9876543210", "scopes": ["generate"]},
    ]
    async with app_client(
        security={"api_keys": keys}, jobs={"poll_seconds": 30, "max_jobs_per_key": 1}
    ) as client:
        body = {"prompt": "alice private prompt", "binding_name": "echo", "model_name": "echo"}
        slow = {**body, "parameters": {"delay": 1.0}}
        job_id = (await client.post("/api/v1/jobs", json=slow, headers=alice)).json()["job_id"]
        assert (await client.get("/api/v1/jobs", headers=bob)).json()["data"] == []
        assert (await client.get(f"/api/v1/jobs/{job_id}", headers=bob)).status_code == 404
        assert (await client.delete(f"/api/v1/jobs/{job_id}", headers=bob)).status_code == 404
        assert (await client.post("/api/v1/jobs", json=body, headers=bob)).status_code == 202  # own limit
