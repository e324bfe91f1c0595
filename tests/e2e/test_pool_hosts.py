"""Every pool host keeps the same promises (in process and in a worker process; the Ray host is
covered in test_cluster.py): a full queue or a queue timeout is a plain HTTP 503 with
Retry-After before a stream starts, the queue wait does not count against the generation
timeout, and a client that leaves frees its place in the queue or its slot at once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AUTH, ServerProcess, running_server
from tests.e2e.sse import parse_events

pytestmark = pytest.mark.e2e

WORDS = " ".join(f"w{index}" for index in range(25))  # 25 words: 2.5 s at 0.1 s a word


@pytest.fixture(scope="module", params=["inprocess", "process"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    isolation = request.param
    folder = tmp_path_factory.mktemp(f"hosts-{isolation}")
    pool = {"limit": 1, "isolation": isolation}
    with running_server(
        folder,
        None,
        paths={"runtime_folder": str(folder / "run")},
        resource_manager={
            "generation_timeout": 3,
            "pools": {
                "default": {"limit": 2},
                "tight": {**pool, "queue_size": 1, "queue_timeout": 30},
                "slow": {**pool, "queue_size": 4, "queue_timeout": 0.5},
                "long": {**pool, "queue_size": 4, "queue_timeout": 30},
                "media": {**pool, "queue_size": 4, "queue_timeout": 30},
            },
        },
        bindings={
            "echo_tight": {"type": "scripted_binding", "pool": "tight", "model_name": "echo", "delay": 0.1},
            "echo_slow": {"type": "scripted_binding", "pool": "slow", "model_name": "echo", "delay": 0.1},
            "echo_long": {"type": "scripted_binding", "pool": "long", "model_name": "echo", "delay": 0.1},
            "media": {
                "type": "scripted_media_binding",
                "pool": "media",
                "model_name": "steps",
                "steps": 200,
                "step_seconds": 0.05,
            },
        },
    ) as process:
        process.folder = folder  # type: ignore[attr-defined]
        yield process


def stream_body(binding: str, prompt: str = WORDS) -> dict[str, Any]:
    return {"prompt": prompt, "binding_name": binding, "stream": True}


def pool_status(server: ServerProcess, name: str) -> dict[str, Any]:
    pools = httpx.get(server.url + "/api/v1/status", headers=AUTH, timeout=10).json()["pools"]
    found: dict[str, Any] = next(pool for pool in pools if pool["name"] == name)
    return found


def wait_for(condition: Any, timeout: float, what: str) -> float:
    """Poll ``condition()`` until true; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what} within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - started


class Stream(threading.Thread):
    """A streamed generation read to its end in a thread; ``events`` and ``status`` after join."""

    def __init__(self, server: ServerProcess, body: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.server, self.body = server, body
        self.status = 0
        self.events: list[dict[str, Any]] = []

    def run(self) -> None:
        response = httpx.post(self.server.url + "/api/v1/generate", json=self.body, headers=AUTH, timeout=60)
        self.status = response.status_code
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            self.events = parse_events(response.text)


def hold(server: ServerProcess, binding: str, pool: str) -> Stream:
    """A stream that holds the pool's one slot for about 2.5 s."""
    stream = Stream(server, stream_body(binding))
    stream.start()
    wait_for(lambda: pool_status(server, pool)["active"] == 1, 30, "the first stream holds the slot")
    return stream


def refused_before_the_stream(server: ServerProcess, binding: str) -> httpx.Response:
    with httpx.stream(
        "POST", server.url + "/api/v1/generate", json=stream_body(binding), headers=AUTH, timeout=30
    ) as response:
        response.read()
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json"), "a stream had started"
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["error"]["type"] == "service_unavailable"
    return response


def test_a_full_queue_is_a_503_with_retry_after_before_the_stream(server: ServerProcess) -> None:
    first = hold(server, "echo_tight", "tight")
    queued = Stream(server, stream_body("echo_tight", "queued behind"))
    queued.start()
    wait_for(lambda: pool_status(server, "tight")["queued"] == 1, 10, "the second stream queues")
    refused_before_the_stream(server, "echo_tight")
    first.join(30)
    queued.join(30)
    assert first.events[-1]["type"] == "final" and queued.events[-1]["type"] == "final", queued.events
    assert pool_status(server, "tight")["rejected"] >= 1


def test_a_queue_timeout_is_a_503_with_retry_after_before_the_stream(server: ServerProcess) -> None:
    first = hold(server, "echo_slow", "slow")
    started = time.monotonic()
    refused_before_the_stream(server, "echo_slow")
    assert time.monotonic() - started < 2.4, "the queue timeout (0.5 s) did not end the wait"
    first.join(30)
    assert first.events[-1]["type"] == "final"
    assert pool_status(server, "slow")["timed_out"] >= 1


def test_a_stream_queued_behind_a_long_one_is_not_cut_by_the_generation_timeout(
    server: ServerProcess,
) -> None:
    runtime = Path(server.folder) / "run" / "long.json"  # type: ignore[attr-defined]
    first = hold(server, "echo_long", "long")
    pid_before = json.loads(runtime.read_text())["pid"] if runtime.exists() else None
    second = Stream(server, stream_body("echo_long"))  # 2.5 s queued + 2.5 s running > 3 s timeout
    started = time.monotonic()
    second.start()
    first.join(30)
    second.join(30)
    assert time.monotonic() - started > 3, "the second stream did not wait long enough to prove it"
    assert first.events[-1]["type"] == "final", first.events[-1]
    assert second.events[-1]["type"] == "final", second.events[-1]
    metadata = second.events[-1]["content"][0]["metadata"]
    assert metadata["timings"]["queue_wait"] > 1.5
    if pid_before is not None:  # the worker waited, it did not hang: nobody killed it
        assert json.loads(runtime.read_text())["pid"] == pid_before


def test_a_queued_stream_whose_client_leaves_leaves_the_queue(server: ServerProcess) -> None:
    first = hold(server, "echo_long", "long")
    with pytest.raises(httpx.ReadTimeout):  # the client gives up while it waits for a slot
        httpx.post(
            server.url + "/api/v1/generate",
            json=stream_body("echo_long"),
            headers=AUTH,
            timeout=httpx.Timeout(0.5, connect=5),
        )
    left = wait_for(lambda: pool_status(server, "long")["queued"] == 0, 5, "the waiter left the queue")
    assert left < 1.0, f"the waiter stayed {left:.2f} s in the queue after its client left"
    first.join(30)
    assert first.events[-1]["type"] == "final"
    assert pool_status(server, "long")["active"] == 0


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/v1/images/generations", {"model": "media", "prompt": "a red square", "n": 1}),
        ("/v1/audio/speech", {"model": "media", "input": "hello there", "response_format": "wav"}),
    ],
)
def test_a_v1_media_request_whose_client_leaves_frees_the_slot(
    server: ServerProcess, path: str, payload: dict[str, Any]
) -> None:
    wait_for(lambda: pool_status(server, "media")["active"] == 0, 30, "the media pool is free")
    with pytest.raises(httpx.ReadTimeout):  # 200 steps of 0.05 s: the client leaves after 1 s
        httpx.post(server.url + path, json=payload, headers=AUTH, timeout=httpx.Timeout(1.0, connect=5))
    freed = wait_for(lambda: pool_status(server, "media")["active"] == 0, 10, "the slot is freed")
    assert freed < 4.0, f"the slot stayed held {freed:.2f} s after the client left"  # 9 s if not cancelled
