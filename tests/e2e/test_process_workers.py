"""Pools in a worker process shared by every server process (isolation = "process")."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AUTH, base_config
from tests.e2e.sse import (
    assert_served_in_arrival_order,
    events_killing_midway,
    staggered_streams,
)
from tests.processes import start_lollms

pytestmark = pytest.mark.e2e


def worker_pid(runtime: Path) -> int:
    return int(json.loads((runtime / "gpu.json").read_text())["pid"])


def alive(pid: int) -> bool:
    from lollms_server.utils.processes import pid_alive

    return pid_alive(pid)


def config(tmp: Path, models_folder: Path, workers: int = 1, **pool: Any) -> dict[str, Any]:
    return base_config(
        tmp,
        models_folder,
        server={"workers": workers},
        paths={"runtime_folder": str(tmp / "run")},
        resource_manager={
            "pools": {
                "default": {"limit": 1},
                "gpu": {"limit": 1, "queue_size": 32, "isolation": "process", **pool},
            }
        },
        bindings={
            "echo": {"type": "scripted_binding"},
            "llm": {
                "type": "llamacpp_binding",
                "pool": "gpu",
                "model_name": "tiny.gguf",
                "n_threads": 1,
                "n_ctx": 16384,
            },
        },
    )


def body(stream: bool = True, **parameters: Any) -> dict[str, Any]:
    return {
        "prompt": "Hello",
        "binding_name": "llm",
        "stream": stream,
        "parameters": {"max_tokens": 16, "ignore_eos": True, **parameters},
    }


def test_two_server_processes_share_one_worker_fifo(tmp_path: Path, models_folder: Path) -> None:
    server = start_lollms(config(tmp_path, models_folder, workers=2), tmp_path, tmp_path / "server.log")
    try:
        for _ in range(6):  # warm up: both server processes attach to the worker
            with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as warm:
                assert warm.post("/api/v1/generate", json=body(stream=False)).status_code == 200
        pid = worker_pid(tmp_path / "run")

        # the first runs for seconds (the batch engine streams the tiny model at ~2,000 tokens/s)
        # separate connections, so both server processes take requests
        bodies = [body(max_tokens=12000 if index == 0 else 16) for index in range(8)]
        # 0.5 s apart: two gateway processes hand requests on with some jitter under load
        results = asyncio.run(staggered_streams([server.url] * 8, bodies, [0.5] * 8))
        assert_served_in_arrival_order(results)
        # both server processes have served requests, so each has attached and reports the worker;
        # a status without it (None: the worker not answering) is a failure, not a skip
        for _ in range(4):  # new connections: either server process may answer
            status = httpx.get(server.url + "/api/v1/status", headers=AUTH, timeout=10).json()
            worker = status["workers"]["gpu"]
            assert worker is not None, status["workers"]
            assert [model["model"] for model in worker["pools"][0]["models"]] == ["tiny.gguf"]
        assert worker_pid(tmp_path / "run") == pid  # one worker for both server processes
    finally:
        server.stop()
    deadline = time.monotonic() + 10
    while alive(pid):
        assert time.monotonic() < deadline, "the worker outlived the server"
        time.sleep(0.1)


def test_worker_killed_mid_stream_gives_error_event_then_recovers(
    tmp_path: Path, models_folder: Path
) -> None:
    server = start_lollms(config(tmp_path, models_folder), tmp_path, tmp_path / "server.log")
    try:
        assert (
            httpx.post(
                server.url + "/api/v1/generate", json=body(stream=False), headers=AUTH, timeout=60
            ).status_code
            == 200
        )
        pid = worker_pid(tmp_path / "run")
        payload = {**body(max_tokens=4000), "model_name": "slow.gguf"}
        events = events_killing_midway(server.url, payload, pid)
        assert events[-1]["type"] == "error" and "worker" in events[-1]["content"]
        again = httpx.post(server.url + "/api/v1/generate", json=body(stream=False), headers=AUTH, timeout=60)
        assert again.status_code == 200, again.text
        assert worker_pid(tmp_path / "run") != pid
        # the native API of the worker answers through the gateway: tokenize, list models
        tokens = httpx.post(
            server.url + "/api/v1/tokenize",
            json={"text": "Hello", "binding_name": "llm"},
            headers=AUTH,
            timeout=30,
        )
        assert tokens.status_code == 200 and tokens.json()["count"] > 0
    finally:
        server.stop()


def test_worker_venv_runs_its_own_library_version(tmp_path: Path, models_folder: Path) -> None:
    import toml

    data = base_config(
        tmp_path,
        models_folder,
        paths={"runtime_folder": str(tmp_path / "run")},
        resource_manager={
            "pools": {
                "default": {"limit": 1},
                "isolated": {"isolation": "process", "venv": str(tmp_path / "venv")},
            }
        },
        bindings={
            "echo": {"type": "scripted_binding"},
            "versioned": {"type": "versioned_binding", "pool": "isolated", "model_name": "any"},
        },
    )
    server = start_lollms(data, tmp_path, tmp_path / "server.log")
    try:
        response = httpx.post(
            server.url + "/api/v1/generate",
            json={"prompt": "x", "binding_name": "versioned"},
            headers=AUTH,
            timeout=300,
        )
        assert response.status_code == 200, response.text + server.output()
        assert response.json()["output"][0]["data"] == "toml 0.10.0"
        assert toml.__version__ != "0.10.0"  # the server itself runs another version
    finally:
        server.stop()


def test_hung_worker_is_killed_after_the_generation_timeout(tmp_path: Path, models_folder: Path) -> None:
    data = config(tmp_path, models_folder)
    data["resource_manager"]["generation_timeout"] = 1.0
    server = start_lollms(data, tmp_path, tmp_path / "server.log")
    try:
        assert (
            httpx.post(
                server.url + "/api/v1/generate", json=body(stream=False), headers=AUTH, timeout=60
            ).status_code
            == 200
        )
        pid = worker_pid(tmp_path / "run")
        os.kill(pid, signal.SIGSTOP)  # a worker stuck in native code answers nothing
        started = time.monotonic()
        hung = httpx.post(server.url + "/api/v1/generate", json=body(), headers=AUTH, timeout=60)
        # found hung while admitting: a plain 504 before the stream starts
        assert hung.status_code == 504, hung.text
        assert hung.json()["error"]["type"] == "generation_timeout"
        assert time.monotonic() - started < 10
        deadline = time.monotonic() + 5
        while alive(pid):
            assert time.monotonic() < deadline, "the hung worker was not killed"
            time.sleep(0.05)
        again = httpx.post(server.url + "/api/v1/generate", json=body(stream=False), headers=AUTH, timeout=60)
        assert again.status_code == 200, again.text
    finally:
        server.stop()


def test_worker_status_shows_each_model_loaded_once(tmp_path: Path, models_folder: Path) -> None:
    server = start_lollms(config(tmp_path, models_folder, workers=2), tmp_path, tmp_path / "server.log")
    try:
        for _ in range(6):
            with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
                assert client.post("/api/v1/generate", json=body(stream=False)).status_code == 200
        runtime = tmp_path / "run"
        state = json.loads((runtime / "gpu.json").read_text())
        token = (runtime / "gpu.token").read_text().strip()
        status = httpx.get(
            f"http://127.0.0.1:{state['port']}/api/v1/status", headers={"X-API-Key": token}, timeout=10
        ).json()
        assert [model["model"] for model in status["pools"][0]["models"]] == ["tiny.gguf"]
        assert status["pools"][0]["served"] == 6  # both server processes went through this one worker
        assert httpx.get(f"http://127.0.0.1:{state['port']}/api/v1/status", timeout=10).status_code == 401
    finally:
        server.stop()
