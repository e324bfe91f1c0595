"""End to end: queue limits, idle unload, LRU eviction and failing bindings on a real server."""

from __future__ import annotations

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


def body(
    binding: str, model: str, stream: bool = False, prompt: str = "Hello", **parameters: Any
) -> dict[str, Any]:
    return {
        "input_data": [{"type": "text", "role": "user_prompt", "data": prompt}],
        "stream": stream,
        "binding_name": binding,
        "model_name": model,
        "parameters": {"max_tokens": 8, **parameters},
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_folder: Path) -> Iterator[ServerProcess]:
    # one sequence each: the budgets below are sized for one KV cache per model
    llama = {"type": "llamacpp_binding", "n_ctx": 4096, "n_threads": 1, "parallel": 1}
    with running_server(
        tmp_path_factory.mktemp("policies"),
        models_folder,
        resource_manager={
            "housekeeping_interval": 0.1,
            "pools": {
                "default": {"limit": 1, "queue_size": 8, "queue_timeout": 30},
                "busy": {"limit": 1, "queue_size": 1, "queue_timeout": 0.5},
                # two tiny models at n_ctx 512 (weights, KV and compute buffer: ~7.6 MB each), not three
                "lru": {"limit": 1, "memory_budget_mb": 18},
                "idle": {"limit": 1, "idle_unload_seconds": 0.5},
            },
        },
        bindings={
            "echo": {"type": "scripted_binding"},
            "llm_busy": {**llama, "pool": "busy"},
            "llm_lru": {**llama, "n_ctx": 512, "pool": "lru"},
            "llm_idle": {**llama, "pool": "idle"},
        },
        defaults={"ttt_binding": "echo", "ttt_model": "echo"},
    ) as process:
        yield process


def pool_status(server: ServerProcess, name: str) -> dict[str, Any]:
    pools = httpx.get(server.url + "/api/v1/status", headers=AUTH, timeout=10).json()["pools"]
    found: dict[str, Any] = next(pool for pool in pools if pool["name"] == name)
    return found


def generate(server: ServerProcess, payload: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + "/api/v1/generate", json=payload, headers=AUTH, timeout=60)


def test_queue_overflow_and_queue_timeout_answer_503_with_retry_after(server: ServerProcess) -> None:
    long_stream = body("llm_busy", "slow.gguf", stream=True, max_tokens=4000, ignore_eos=True)
    started = threading.Event()
    release = threading.Event()

    def hold_the_slot() -> None:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
            with client.stream("POST", "/api/v1/generate", json=long_stream) as response:
                for _ in response.iter_lines():
                    started.set()
                    if release.is_set():
                        return

    holder = threading.Thread(target=hold_the_slot)
    holder.start()
    try:
        assert started.wait(30)
        waiting: dict[str, httpx.Response] = {}
        waiter = threading.Thread(
            target=lambda: waiting.setdefault("r", generate(server, body("llm_busy", "tiny.gguf")))
        )
        waiter.start()
        deadline = time.monotonic() + 5
        while pool_status(server, "busy")["queued"] != 1:
            assert time.monotonic() < deadline, "second request never queued"
            time.sleep(0.01)
        overflow = generate(server, body("llm_busy", "tiny.gguf"))
        assert overflow.status_code == 503
        assert overflow.json()["error"]["type"] == "service_unavailable"
        assert int(overflow.headers["retry-after"]) >= 1
        waiter.join(10)
        timed_out = waiting["r"]
        assert timed_out.status_code == 503 and "0.5 s" in timed_out.json()["error"]["message"]
        assert int(timed_out.headers["retry-after"]) >= 1
        busy = pool_status(server, "busy")
        assert busy["rejected"] >= 1 and busy["timed_out"] >= 1 and busy["active"] == 1
    finally:
        release.set()
        holder.join(30)
    deadline = time.monotonic() + 5
    while pool_status(server, "busy")["active"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert generate(server, body("llm_busy", "tiny.gguf")).status_code == 200


def test_idle_models_are_unloaded(server: ServerProcess) -> None:
    assert generate(server, body("llm_idle", "tiny.gguf")).status_code == 200
    assert [model["model"] for model in pool_status(server, "idle")["models"]] == ["tiny.gguf"]
    deadline = time.monotonic() + 5
    while pool_status(server, "idle")["models"]:
        assert time.monotonic() < deadline, "idle model was not unloaded"
        time.sleep(0.1)
    assert generate(server, body("llm_idle", "tiny.gguf")).status_code == 200  # loads again


def test_memory_budget_evicts_least_recently_used(server: ServerProcess) -> None:
    def resident() -> set[str]:
        return {model["model"] for model in pool_status(server, "lru")["models"]}

    assert generate(server, body("llm_lru", "tiny.gguf")).status_code == 200
    assert generate(server, body("llm_lru", "tiny2.gguf")).status_code == 200
    assert resident() == {"tiny.gguf", "tiny2.gguf"}
    assert generate(server, body("llm_lru", "tiny.gguf")).status_code == 200  # tiny2 is now the LRU
    assert generate(server, body("llm_lru", "tiny3.gguf")).status_code == 200
    assert resident() == {"tiny.gguf", "tiny3.gguf"}
    lru = pool_status(server, "lru")
    assert lru["memory_used_mb"] <= lru["memory_budget_mb"]
    too_big = generate(server, body("llm_lru", "slow.gguf"))
    assert too_big.status_code == 422 and "needs about" in too_big.json()["error"]["message"]
    assert too_big.json()["error"]["type"] == "model_too_large"


def test_binding_failing_mid_stream_sends_error_event_and_server_keeps_serving(server: ServerProcess) -> None:
    failing = body("echo", "echo", stream=True, prompt="one two three four five", fail_after=2)
    response = generate(server, failing)
    assert response.status_code == 200
    events = parse_events(response.text)
    assert [event["type"] for event in events] == ["info", "chunk", "chunk", "error"]
    assert events[-1]["metadata"] == {"type": "binding_error", "status": 500}
    assert "secret" not in response.text and "passwd" not in response.text
    not_streamed = generate(server, {**failing, "stream": False})
    assert not_streamed.status_code == 500 and "passwd" not in not_streamed.text
    assert not_streamed.json()["error"]["type"] == "binding_error"
    ok = generate(server, body("echo", "echo", stream=True, prompt="still serving"))
    assert [event["type"] for event in parse_events(ok.text)][-1] == "final"
    assert pool_status(server, "default")["active"] == 0


def test_model_that_fails_to_load_is_a_clean_500(server: ServerProcess) -> None:
    for stream in (False, True):
        response = generate(server, body("echo", "broken", stream=stream))
        assert response.status_code == 500
        assert response.json()["error"]["type"] == "binding_error"
        assert "passwd" not in response.text
    assert pool_status(server, "default")["active"] == 0
