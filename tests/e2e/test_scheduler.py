"""The fair, observable scheduler end to end, on an in-process and a worker-process pool: a
light key is served right after the running stream although a heavy key queued many, a waiting
stream is told its place, and per-key limits answer 429 with rate-limit headers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import AUTH, ServerProcess, running_server
from tests.e2e.sse import iter_events

pytestmark = pytest.mark.e2e

FLOOD = "test-key-flood-0123456789"
LIGHT = "test-key-light-0123456789"
CAPPED = "test-key-capped-0123456789"
WORDS = " ".join(f"w{index}" for index in range(20))  # 2 s at 0.1 s a word


@pytest.fixture(scope="module", params=["inprocess", "process"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    isolation = request.param
    folder = tmp_path_factory.mktemp(f"scheduler-{isolation}")
    keys: list[Any] = [
        {"key": AUTH["X-API-Key"], "name": "admin", "scopes": ["generate", "admin"]},
        {"key": FLOOD, "name": "flood"},
        {"key": LIGHT, "name": "light"},
        {"key": CAPPED, "name": "capped", "max_concurrent": 1, "requests_per_minute": 3},
    ]
    with running_server(
        folder,
        None,
        security={"api_keys": keys},
        paths={"runtime_folder": str(folder / "run")},
        resource_manager={
            "generation_timeout": 60,
            "pools": {
                "default": {"limit": 2},
                "gpu": {"limit": 1, "queue_size": 32, "queue_timeout": 60, "isolation": isolation},
            },
        },
        bindings={
            "echo": {"type": "scripted_binding"},
            "slow": {"type": "scripted_binding", "pool": "gpu", "model_name": "echo", "delay": 0.1},
        },
    ) as process:
        yield process


def post(server: ServerProcess, key: str, prompt: str, stream: bool = False) -> httpx.Response:
    body = {"prompt": prompt, "binding_name": "slow", "stream": stream}
    return httpx.post(server.url + "/api/v1/generate", json=body, headers={"X-API-Key": key}, timeout=120)


def queued(server: ServerProcess) -> int:
    pools = httpx.get(server.url + "/api/v1/status", headers=AUTH, timeout=10).json()["pools"]
    return int(next(pool for pool in pools if pool["name"] == "gpu")["queued"])


def wait_until(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def in_thread(target: Any, *args: Any) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def test_a_light_key_is_served_right_after_the_running_stream(server: ServerProcess) -> None:
    finished: list[str] = []

    def run(key: str, name: str, prompt: str) -> None:
        assert post(server, key, prompt).status_code == 200
        finished.append(name)

    threads = [in_thread(run, FLOOD, "flood-running", WORDS + " " + WORDS)]  # 4 s
    wait_until(lambda: queued(server) == 0 and len(finished) == 0)
    time.sleep(0.3)
    for index in range(6):
        threads.append(in_thread(run, FLOOD, f"flood-{index}", "a b c d e"))
    wait_until(lambda: queued(server) == 6)
    threads.append(in_thread(run, LIGHT, "light", "hello"))
    wait_until(lambda: queued(server) == 7 or "flood-running" in finished)
    for thread in threads:
        thread.join(120)
    assert finished.index("light") <= 1, finished  # right after the stream that was running


def test_a_waiting_stream_is_told_its_place_until_admitted(server: ServerProcess) -> None:
    """A stream that waits more than 2 s starts with queued events (its place, an ETA)."""
    holders = [in_thread(post, server, FLOOD, WORDS + " " + WORDS)]  # 4 s
    wait_until(lambda: queued(server) == 0)
    time.sleep(0.3)
    holders += [in_thread(post, server, FLOOD, "a b c") for _ in range(2)]
    wait_until(lambda: queued(server) == 2)
    positions: list[int] = []
    admitted = False
    body = {"prompt": "my turn", "binding_name": "slow", "stream": True}
    with httpx.stream(
        "POST", server.url + "/api/v1/generate", json=body, headers={"X-API-Key": FLOOD}, timeout=120
    ) as response:
        assert response.status_code == 200
        for event in iter_events(response):
            if event["type"] == "info" and event["content"] == "queued":
                assert not admitted
                positions.append(int(event["metadata"]["queue_position"]))
                assert event["metadata"]["eta_seconds"] >= 0
            elif event["type"] == "info":
                admitted = True
            elif event["type"] == "final":
                break
    for thread in holders:
        thread.join(120)
    assert admitted and positions and positions[0] <= 3 and positions[-1] == 1, positions
    assert positions == sorted(positions, reverse=True), positions


def test_key_limits_answer_429_with_rate_limit_headers(server: ServerProcess) -> None:
    running = in_thread(post, server, CAPPED, WORDS)

    def capped_runs() -> bool:
        keys = httpx.get(server.url + "/api/v1/queue", headers=AUTH, timeout=10).json()["keys"]
        return bool(keys.get("capped", {}).get("running") == 1)

    wait_until(capped_runs)
    refused = post(server, CAPPED, "again")
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.headers["x-ratelimit-limit"] == "1" and "retry-after" in refused.headers
    running.join(60)
    assert post(server, CAPPED, "now").status_code == 200  # its running generation ended
    assert post(server, CAPPED, "third").status_code == 200  # refused requests do not count
    over = post(server, CAPPED, "fourth request this minute")
    assert over.status_code == 429 and over.headers["x-ratelimit-limit"] == "3", over.text
    assert 1 <= int(over.headers["x-ratelimit-reset"]) <= 60
    metrics = httpx.get(server.url + "/metrics", headers=AUTH, timeout=10).text
    assert 'lollms_rejections_total{pool="gpu",reason="concurrency"}' in metrics
    assert 'lollms_rejections_total{pool="gpu",reason="rate_limit"}' in metrics
    assert 'lollms_queue_wait_seconds_count{key="capped",pool="gpu"}' in metrics
