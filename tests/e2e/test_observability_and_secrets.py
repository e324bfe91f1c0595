"""Metrics, status, access log, secrets crawl and graceful shutdown on a real server."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    ADMIN_KEY,
    AUTH,
    GOOD_KEY,
    LIMITED_KEY,
    ONLY_ADMIN_KEY,
    ServerProcess,
    running_server,
)

pytestmark = pytest.mark.e2e
SECRETS = [
    "super-secret-token-value",
    "remote-api-key-value",
    GOOD_KEY,
    ADMIN_KEY,
    ONLY_ADMIN_KEY,
    LIMITED_KEY,
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_folder: Path) -> Iterator[ServerProcess]:
    with running_server(
        tmp_path_factory.mktemp("observed"),
        models_folder,
        logging={"level": "DEBUG"},
        bindings={
            "echo": {"type": "scripted_binding", "api_token": "super-secret-token-value"},
            "remote": {
                "type": "openai_binding",
                "base_url": "http://127.0.0.1:9/v1",
                "api_key": "remote-api-key-value",
                "max_retries": 0,
            },
        },
    ) as process:
        yield process


def test_metrics_status_and_access_log(server: ServerProcess) -> None:
    for stream in (False, True):
        body = {"prompt": "one two three", "binding_name": "echo", "stream": stream}
        httpx.post(server.url + "/api/v1/generate", json=body, headers=AUTH, timeout=30)
    assert httpx.get(server.url + "/metrics", timeout=10).status_code == 401
    assert httpx.get(server.url + "/metrics", headers={"X-API-Key": GOOD_KEY}, timeout=10).status_code == 403
    text = httpx.get(server.url + "/metrics", headers=AUTH, timeout=10).text
    assert 'lollms_requests_total{method="POST",route="/api/v1/generate",status="200"} 2.0' in text
    assert 'lollms_tokens_generated_total{binding="echo",key="admin"} 6.0' in text
    assert 'lollms_generation_seconds_total{binding="echo",generation_type="ttt",key="admin"}' in text
    assert (
        'lollms_pool_queue_depth{pool="default"} 0.0' in text
        and 'lollms_pool_slots{pool="default"} 1.0' in text
    )
    assert 'lollms_loaded_models{pool="default"} 1.0' in text
    assert "lollms_request_seconds_bucket" in text
    status = httpx.get(server.url + "/api/v1/status", headers=AUTH, timeout=10).json()
    assert status["version"] == "0.1.0" and status["uptime_seconds"] > 0
    assert status["pools"][0]["models"][0]["model"] == "echo"
    log = server.output()
    assert "/api/v1/generate 200" in log and "key=admin" in log


def test_public_metrics(tmp_path: Path, models_folder: Path) -> None:
    with running_server(tmp_path, models_folder, server={"public_metrics": True}) as open_server:
        assert httpx.get(open_server.url + "/metrics", timeout=10).status_code == 200


def test_no_secret_anywhere(server: ServerProcess) -> None:
    """Crawl every GET route, error answers, metrics and the whole log for keys and secrets."""
    seen: list[str] = []
    schema = httpx.get(server.url + "/openapi.json", timeout=10).json()
    for path, operations in schema["paths"].items():
        if "get" not in operations:
            continue
        for name in ("echo", "remote", "ghost"):
            url = server.url + path.replace("{binding_name}", name)
            for headers in (AUTH, {}, {"X-API-Key": "wrong-key-123456"}):
                seen.append(httpx.get(url, headers=headers, timeout=30).text)
    failing = [
        {"prompt": "x", "binding_name": "remote", "model_name": "m"},  # unreachable remote with a key
        {"prompt": "x", "binding_name": "echo", "model_name": "broken"},
        {"prompt": "a b c", "binding_name": "echo", "parameters": {"fail_after": 1}, "stream": True},
    ]
    for body in failing:
        seen.append(httpx.post(server.url + "/api/v1/generate", json=body, headers=AUTH, timeout=30).text)
    seen.append(server.output())
    everything = "\n".join(seen)
    for secret in SECRETS:
        assert secret not in everything, "a secret leaked"
    from lollms_server.core.security import hash_key

    for key in (GOOD_KEY, ADMIN_KEY):
        assert hash_key(key)[7:] not in everything  # nor the hashes
    assert "Traceback" not in "\n".join(seen[:-1])  # tracebacks only in the log


def test_graceful_shutdown_lets_running_generations_finish(tmp_path: Path, models_folder: Path) -> None:
    with running_server(tmp_path, models_folder, server={"shutdown_grace_seconds": 5}) as server:
        body = {"prompt": "a b c d e f", "binding_name": "echo", "stream": True, "parameters": {"delay": 0.2}}
        events: list[dict[str, Any]] = []
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
            with client.stream("POST", "/api/v1/generate", json=body) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
                        if len(events) == 1:
                            server.process.send_signal(signal.SIGTERM)  # stop accepting; the stream finishes
        assert events[-1]["type"] == "final" and events[-1]["content"][0]["data"] == "a b c d e f "
        deadline = time.monotonic() + 10
        while server.process.poll() is None:
            assert time.monotonic() < deadline, "server did not stop"
            time.sleep(0.05)
