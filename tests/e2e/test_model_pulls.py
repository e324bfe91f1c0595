"""End to end: a real server pulls from the local fake hub over /api/v1/models, serves the pulled
GGUF at once (no restart), refuses to delete it while loaded, and downloads a first-use model
outside its pool while that pool keeps serving."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AUTH, GOOD_KEY, ServerProcess, running_server
from tests.e2e.sse import aiter_events, parse_events
from tests.fixtures.fake_hub import FakeHub

pytestmark = pytest.mark.e2e

REPO = "tester/tiny-GGUF"
USER = {"X-API-Key": GOOD_KEY}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    from tests.tiny_models import build_tiny_gguf

    data = build_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf").read_bytes()
    with FakeHub.running() as running:
        running.state.add(REPO, {"tiny-Q4_K_M.gguf": data, "tiny-Q8_0.gguf": data, "tiny-Q6_K.gguf": data})
        yield running


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("pull-server")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "0")  # the server talks to the fake hub
        with running_server(
            folder,
            folder / "models",
            models={"hub_endpoint": hub.url, "allowed_sources": ["tester"]},
            resource_manager={
                "pools": {
                    "default": {"limit": 1, "queue_size": 16, "queue_timeout": 2, "idle_unload_seconds": 4}
                },
                "housekeeping_interval": 0.2,
            },
            bindings={
                "echo": {"type": "scripted_binding"},
                "llm": {"type": "llamacpp_binding", "n_threads": 1, "allow_download": True},
            },
        ) as running:
            yield running


def generate(model: str, stream: bool = False) -> dict[str, Any]:
    return {
        "binding_name": "llm",
        "model_name": model,
        "input_data": [{"type": "text", "role": "user_prompt", "data": "Hello there"}],
        "parameters": {"max_tokens": 4, "seed": 1},
        "stream": stream,
    }


def test_pull_streams_progress_then_the_model_serves_at_once(server: ServerProcess) -> None:
    url = server.url + "/api/v1/models"
    body = {"binding": "llm", "ref": f"{REPO}:Q4_K_M"}
    assert httpx.post(url + "/pull", json=body, headers=USER, timeout=30).status_code == 403  # admin only
    refused = httpx.post(url + "/pull", json={**body, "ref": "elsewhere/x:Q4_K_M"}, headers=AUTH, timeout=30)
    assert refused.status_code == 403 and "allowed_sources" in refused.json()["error"]["message"]
    bad = httpx.post(url + "/pull", json={**body, "ref": "../etc"}, headers=AUTH, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "ref"

    response = httpx.post(url + "/pull", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = parse_events(response.text)
    name = f"{REPO}/tiny-Q4_K_M.gguf"
    assert events[-1]["type"] == "final" and events[-1]["models"] == [name]
    progress = [event for event in events if event["type"] == "info" and "file" in event]
    assert progress and progress[-1]["completed"] == progress[-1]["total"] > 0

    listed = httpx.get(server.url + "/api/v1/list_available_models/llm", headers=AUTH, timeout=30).json()
    assert name in [model["name"] for model in listed["models"]]
    answer = httpx.post(server.url + "/api/v1/generate", json=generate(name), headers=AUTH, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["output"][0]["metadata"]["model"] == name

    pulls = httpx.get(url + "/pulls", headers=AUTH, timeout=10).json()["pulls"]
    assert pulls[0]["status"] == "succeeded" and pulls[0]["result"] == [name]
    assert httpx.get(url + "/pulls", headers=USER, timeout=10).status_code == 403

    # loaded (it unloads after 4 idle seconds): 409, then deleted
    deleted = httpx.delete(f"{url}/llm/{name}", headers=AUTH, timeout=10)
    assert deleted.status_code == 409 and "loaded" in deleted.json()["error"]["message"]
    deadline = time.monotonic() + 30
    while deleted.status_code == 409 and time.monotonic() < deadline:
        time.sleep(0.5)
        deleted = httpx.delete(f"{url}/llm/{name}", headers=AUTH, timeout=10)
    assert deleted.status_code == 200, deleted.text
    listed = httpx.get(server.url + "/api/v1/list_available_models/llm", headers=AUTH, timeout=30).json()
    assert name not in [model["name"] for model in listed["models"]]
    assert httpx.delete(f"{url}/llm/{name}", headers=AUTH, timeout=10).status_code == 404


async def test_a_first_use_downloads_outside_the_pool_which_keeps_serving(
    server: ServerProcess, hub: FakeHub
) -> None:
    hub.state.delay = 0.3  # about 10 s for the file: the 503 below comes after 4-5 s
    name = f"{REPO}/tiny-Q8_0.gguf"
    echo = {
        "binding_name": "echo",
        "model_name": "echo",
        "input_data": [{"type": "text", "role": "user_prompt", "data": "still here"}],
    }
    try:
        async with httpx.AsyncClient(base_url=server.url, headers=USER, timeout=120) as client:
            events: list[dict[str, Any]] = []

            async def first_use() -> None:
                async with client.stream(
                    "POST", "/api/v1/generate", json=generate(name, stream=True)
                ) as response:
                    assert response.status_code == 200
                    async for event in aiter_events(response):
                        events.append(event)

            streamed = asyncio.create_task(first_use())
            while not any(event.get("content") == "downloading" for event in events):
                assert not streamed.done(), events
                await asyncio.sleep(0.1)
            # the pool (limit 1) serves others meanwhile: the download holds no slot
            started = time.monotonic()
            served = await client.post("/api/v1/generate", json=echo)
            assert served.status_code == 200 and time.monotonic() - started < 3
            # a whole (not streamed) request for it waits up to queue_timeout (2 s), then 503
            busy = await client.post("/api/v1/generate", json=generate(name))
            assert busy.status_code == 503 and int(busy.headers["retry-after"]) > 0
            assert "being downloaded" in busy.json()["error"]["message"]
            await streamed
    finally:
        hub.state.delay = 0.0
    downloading = [event for event in events if event.get("content") == "downloading"]
    assert downloading[-1]["metadata"]["file"] == "tiny-Q8_0.gguf"
    assert events[-1]["type"] == "final", events[-3:]
    assert len(hub.state.downloads("tiny-Q8_0.gguf")) == 1  # the 503'd request joined, no second copy
    # a generate key may not start pulls from sources outside allowed_sources
    refused = httpx.post(
        server.url + "/api/v1/generate", json=generate("other/repo/x.gguf"), headers=USER, timeout=30
    )
    assert refused.status_code == 403


def test_the_ollama_client_pulls_lists_and_deletes(server: ServerProcess) -> None:
    import ollama

    client = ollama.Client(host=server.url, headers={"Authorization": f"Bearer {AUTH['X-API-Key']}"})
    progress = list(client.pull(f"llm/{REPO}:Q6_K", stream=True))
    assert progress[-1].status == "success"
    sizes = [(part.completed, part.total) for part in progress if part.total]
    assert sizes and sizes[-1][0] == sizes[-1][1] > 0
    name = f"llm/{REPO}/tiny-Q6_K.gguf"
    assert f"{name}:latest" in [model.model for model in client.list().models]
    client.delete(name)
    assert f"{name}:latest" not in [model.model for model in client.list().models]
    with pytest.raises(ollama.ResponseError) as refused:
        client.pull("llm/elsewhere/x:Q4_K_M")
    assert refused.value.status_code == 403


def test_start_up_names_the_command_for_a_missing_default_model(tmp_path: Path, models_folder: Path) -> None:
    with running_server(
        tmp_path,
        models_folder,
        defaults={"ttt_binding": "llm", "ttt_model": "nothere.gguf"},
    ) as running:
        output = running.output()
    assert "The default text model 'nothere.gguf' of binding 'llm' is not installed" in output
    assert "lollms-server init" in output and "--model" in output
