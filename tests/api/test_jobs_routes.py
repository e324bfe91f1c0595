"""The job routes in process (the real server's life, restarts and PostgreSQL are in
tests/e2e/test_jobs.py): a text job through the scripted binding, and ``enabled = false``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

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
