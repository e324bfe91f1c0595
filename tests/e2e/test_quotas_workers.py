"""Per-key quotas hold for the host, not per process: ``lollms-server --workers 2`` with a key
allowed 3 requests per minute accepts 3 of 12 requests sent on fresh connections (T3-13: each
worker kept its own window, so 6 passed)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest
import toml

from tests.conftest import base_config
from tests.processes import ServerProcess, free_port

pytestmark = pytest.mark.e2e

LIMITED = "rate-limited-key-0123456789"


def test_requests_per_minute_hold_across_two_worker_processes(tmp_path: Path, models_folder: Path) -> None:
    config = base_config(
        tmp_path,
        models_folder,
        paths={"runtime_folder": str(tmp_path / "run")},
        resource_manager={"pools": {"default": {"limit": 4, "queue_size": 16, "queue_timeout": 30}}},
        bindings={"echo": {"type": "scripted_binding"}},
    )
    config["security"]["api_keys"].append(
        {"key": LIMITED, "name": "three-a-minute", "scopes": ["generate"], "requests_per_minute": 3}
    )
    path = tmp_path / "config.toml"
    path.write_text(toml.dumps(config), encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "lollms_server.cli", "--config", str(path), "--port", str(port)]
    server = ServerProcess([*command, "--workers", "2"], url, url + "/health", tmp_path / "server.log")
    try:
        server.wait_ready()
        time.sleep(3)  # both worker processes accept connections
        statuses = []
        for _ in range(12):
            with httpx.Client(base_url=url, timeout=30) as client:  # a fresh connection each
                response = client.post(
                    "/api/v1/generate",
                    json={"prompt": "hi there", "binding_name": "echo", "model_name": "echo"},
                    headers={"X-API-Key": LIMITED},
                )
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert response.headers["X-RateLimit-Limit"] == "3"
        assert statuses.count(200) == 3 and statuses.count(429) == 9, statuses
        assert (tmp_path / "run" / "quotas.bin").exists()
    finally:
        server.stop()
