"""The job routes in process (the real server's life, restarts and PostgreSQL are in
tests/e2e/test_jobs.py): a text job through the scripted binding, and ``enabled = false``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_KEY, GOOD_KEY

USER = {"X-API-Key": GOOD_KEY}


async def test_a_text_job_runs_and_its_output_is_plain_text(app_client: Any, tmp_path: Path) -> None:
    async with app_client(jobs={"poll_seconds": 0.1}) as client:
        body = {"prompt": "hello jobs", "binding_name": "echo", "model_name": "echo", "stream": True}
        submitted = await client.post("/api/v1/jobs", json=body, headers=USER)
        assert submitted.status_code == 202, submitted.text
        assert submitted.headers["location"] == f"/api/v1/jobs/{submitted.json()['job_id']}"
        job_id = submitted.json()["job_id"]
        for _ in range(200):
            view = (await client.get(f"/api/v1/jobs/{job_id}", headers=USER)).json()
            if view["status"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.05)
        assert view["status"] == "succeeded", view
        output = await client.get(view["outputs"][0]["url"], headers=USER)
        assert output.headers["content-type"].startswith("text/plain")
        result = (await client.get(f"/api/v1/jobs/{job_id}/result", headers=USER)).json()
        assert result["output"][0]["data"] == output.text and "hello jobs" in output.text
        metrics = (await client.get("/metrics", headers={"X-API-Key": ADMIN_KEY})).text
        assert 'lollms_jobs_total{event="submitted",generation_type="ttt"} 1.0' in metrics
        assert 'lollms_jobs_total{event="succeeded",generation_type="ttt"} 1.0' in metrics
        bad = await client.get("/api/v1/jobs/..%2F..%2Fetc", headers=USER)
        assert bad.status_code == 404
    assert (tmp_path / "jobs.db").exists()


async def test_disabled_jobs_serve_no_job_routes(app_client: Any, tmp_path: Path) -> None:
    async with app_client(jobs={"enabled": False}) as client:
        for method, path in (("POST", "/api/v1/jobs"), ("GET", "/api/v1/jobs"), ("POST", "/v1/videos")):
            response = await client.request(method, path, json={"prompt": "x"}, headers=USER)
            assert response.status_code == 404, (method, path)
    assert not (tmp_path / "jobs.db").exists()


async def wait_finished(client: Any, job_id: str) -> dict[str, Any]:
    for _ in range(200):
        view: dict[str, Any] = (await client.get(f"/api/v1/jobs/{job_id}", headers=USER)).json()
        if view["status"] not in ("queued", "running"):
            return view
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


async def test_stored_results_are_bounded_per_key(app_client: Any) -> None:
    async with app_client(jobs={"poll_seconds": 0.1, "max_result_mb_per_key": 0.001}) as client:
        body = {"prompt": "x" * 2000, "binding_name": "echo", "model_name": "echo"}
        too_big = (await client.post("/api/v1/jobs", json=body, headers=USER)).json()["job_id"]
        view = await wait_finished(client, too_big)
        assert view["status"] == "failed" and view["error"]["type"] == "payload_too_large", view
        store = client.app.state.jobs.store
        await store.call(
            store.create,
            id="job_filler",
            owner="user",
            source="native",
            generation_type="tti",
            request_json="{}",
            extra_json="{}",
            status="succeeded",
            created_at=time.time(),
            result_bytes=2**20,
            attempts=1,
            cancel_requested=False,
        )
        refused = await client.post("/api/v1/jobs", json={**body, "prompt": "small"}, headers=USER)
        assert refused.status_code == 413 and refused.json()["error"]["type"] == "payload_too_large"
        other = await client.post(
            "/api/v1/jobs", json={**body, "prompt": "small"}, headers={"X-API-Key": ADMIN_KEY}
        )
        assert other.status_code == 202  # another key's results do not count


async def test_a_database_that_cannot_be_used_fails_the_start_without_its_password(app_client: Any) -> None:
    import pytest

    from lollms_server.core.errors import ConfigError

    url = "postgresql://lollms:s3cret-pw@127.0.0.1:1/jobs"
    with pytest.raises(ConfigError) as failure:
        async with app_client(jobs={"database_url": url}):
            pass
    assert "s3cret" not in str(failure.value) and "jobs.database_url" in str(failure.value)


@pytest.mark.parametrize(
    "parameters",
    [{"temperature": 99}, {"stop": ["s"] * 17}, {"stop": ["x" * 300]}],
    ids=["temperature", "too-many-stops", "long-stop"],
)
async def test_a_text_job_with_bad_parameters_is_refused_at_submission(
    app_client: Any, parameters: dict[str, Any]
) -> None:
    """T3-08's trigger (a job failing only when run) and stop lists past their bounds: a 400 when
    submitted, and nothing stored."""
    async with app_client() as client:
        body = {"prompt": "x", "binding_name": "echo", "model_name": "echo", "parameters": parameters}
        response = await client.post("/api/v1/jobs", json=body, headers=USER)
        assert response.status_code == 400, response.text
        listed = (await client.get("/api/v1/jobs", headers=USER)).json()
        assert listed["data"] == [] if "data" in listed else listed.get("jobs") == [], listed
