"""``/api/v1/models`` in process: scopes, a whole (not streamed) pull, cancel over HTTP, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AUTH, GOOD_KEY
from tests.fixtures.fake_hub import FakeHub

REPO = "tester/tiny-GGUF"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with FakeHub.running() as running:
        running.state.add(REPO, {"tiny-Q4_K_M.gguf": bytes(range(256)) * 1024})  # 256 KiB
        yield running


def sections(tmp_path: Path, hub: FakeHub) -> dict[str, Any]:
    return {
        "paths": {"models_folder": str(tmp_path / "pulled")},
        "models": {"hub_endpoint": hub.url},
    }


async def test_scopes_a_whole_pull_and_errors(
    tmp_path: Path, hub: FakeHub, app_client: Callable[..., Any]
) -> None:
    async with app_client(**sections(tmp_path, hub)) as client:
        body = {"binding": "llm", "ref": f"{REPO}:Q4_K_M", "stream": False}
        user = await client.post("/api/v1/models/pull", json=body, headers={"X-API-Key": GOOD_KEY})
        assert user.status_code == 403
        done = await client.post("/api/v1/models/pull", json=body, headers=AUTH)
        assert done.status_code == 200, done.text
        described = done.json()
        assert described["status"] == "succeeded" and described["result"] == [f"{REPO}/tiny-Q4_K_M.gguf"]
        assert described["completed"] == described["total"] == 256 * 1024
        got = await client.get(f"/api/v1/models/pulls/{described['id']}", headers=AUTH)
        assert got.json()["id"] == described["id"]
        assert (await client.get("/api/v1/models/pulls/nope", headers=AUTH)).status_code == 404
        unknown = await client.post("/api/v1/models/pull", json={**body, "binding": "nope"}, headers=AUTH)
        assert unknown.status_code == 404
        remote = await client.post("/api/v1/models/pull", json={**body, "binding": "echo"}, headers=AUTH)
        assert remote.status_code == 400 and "keeps no model files" in remote.json()["error"]["message"]
        extra = await client.post("/api/v1/models/pull", json={**body, "extra": 1}, headers=AUTH)
        assert extra.status_code == 422
        listed = await client.get("/api/v1/list_models", headers=AUTH)
        assert f"{REPO}/tiny-Q4_K_M.gguf" in listed.json()["models"]["llamacpp_binding"]


async def test_cancel_over_http(tmp_path: Path, hub: FakeHub, app_client: Callable[..., Any]) -> None:
    hub.state.delay = 0.1
    async with app_client(**sections(tmp_path, hub)) as client:
        body = {"binding": "llm", "ref": f"{REPO}:Q4_K_M", "stream": False}
        waiting = asyncio.create_task(client.post("/api/v1/models/pull", json=body, headers=AUTH))
        pulls: list[dict[str, Any]] = []
        while not pulls:
            await asyncio.sleep(0.05)
            pulls = (await client.get("/api/v1/models/pulls", headers=AUTH)).json()["pulls"]
        assert pulls[0]["status"] == "running"
        cancelled = await client.delete(f"/api/v1/models/pulls/{pulls[0]['id']}", headers=AUTH)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        answer = (await waiting).json()
        assert answer["status"] == "cancelled" and answer["error"]["type"] == "cancelled"
        missing = await client.delete(f"/api/v1/models/llm/{REPO}/tiny-Q4_K_M.gguf", headers=AUTH)
        assert missing.status_code == 404
