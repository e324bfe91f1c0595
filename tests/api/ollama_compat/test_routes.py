"""The Ollama routes in process: the ``{"error": ...}`` shape on every Ollama path (and only
there), pull and delete over a pull manager written from its interface, metrics labels."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from lollms_server.core.errors import ConflictError, NotFoundError, PermissionDeniedError
from tests.conftest import AUTH, GOOD_KEY


class FakePull:
    """A pull per the pull manager interface: progress events, then an end or its error."""

    def __init__(self, ref: str, files: dict[str, int], error: Exception | None = None) -> None:
        self.id = "pull-1"
        self.ref = ref
        self.status = "running"
        self.files = files
        self.error = error

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        for name, total in self.files.items():
            for completed in (0, total // 2, total):
                yield {"file": name, "completed": completed, "total": total}
        if self.error is not None:
            self.status = "failed"
            raise self.error
        self.status = "succeeded"


class FakePulls:
    """What issue 20 puts on ``app.state.pulls``, reduced to what the routes call."""

    def __init__(self) -> None:
        self.started: list[tuple[str, str]] = []
        self.deleted: list[tuple[str, str]] = []

    async def start(self, instance: str, ref: str) -> FakePull:
        self.started.append((instance, ref))
        if ref.startswith("forbidden/"):
            raise PermissionDeniedError("Downloading 'forbidden/x' is not allowed on this server.")
        if ref.startswith("broken/"):
            return FakePull(ref, {"a.gguf": 10}, NotFoundError("The file vanished from the hub."))
        return FakePull(ref, {"model.gguf": 1000, "mmproj.gguf": 100})

    async def delete_model(self, instance: str, model: str) -> None:
        if model == "busy.gguf":
            raise ConflictError(f"Model '{model}' is loaded; unload it first.")
        self.deleted.append((instance, model))

    async def close(self) -> None:  # the app closes its pull manager at shutdown
        return None


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_errors_on_ollama_paths_are_ollama_shaped(app_client: Callable[..., Any]) -> None:
    async with app_client() as client:
        no_key = await client.get("/api/tags")
        assert no_key.status_code == 401 and no_key.json() == {
            "error": "Missing API key: send 'X-API-Key' or 'Authorization: Bearer'."
        }
        assert no_key.headers["www-authenticate"] == "Bearer"
        assert int(no_key.headers["content-length"]) == len(no_key.content)
        invalid = await client.post("/api/chat", json={"model": 5}, headers=AUTH)
        assert invalid.status_code == 400 and invalid.json()["error"].startswith("Invalid request: model")
        unknown_route = await client.post("/api/copy", json={}, headers=AUTH)
        assert unknown_route.status_code == 404 and set(unknown_route.json()) == {"error"}
        unknown_binding = await client.post(
            "/api/chat", json={"model": "ghost", "messages": [{"role": "user", "content": "x"}]}, headers=AUTH
        )
        assert unknown_binding.status_code == 404 and "ghost" in unknown_binding.json()["error"]
        no_admin = await client.post(
            "/api/pull", json={"model": "llm/a/b/c.gguf"}, headers={"X-API-Key": GOOD_KEY}
        )
        assert no_admin.status_code == 403 and isinstance(no_admin.json()["error"], str)
        # the native API keeps the server's one shape
        native = await client.post("/api/v1/generate", json={}, headers=AUTH)
        assert native.status_code == 422 and native.json()["error"]["type"] == "validation_error"
        native_no_key = await client.get("/api/v1/list_bindings")
        assert native_no_key.json()["error"]["type"] == "authentication_error"


async def test_chat_stream_and_metrics_label(app_client: Callable[..., Any]) -> None:
    async with app_client() as client:
        body = {"model": "echo", "messages": [{"role": "user", "content": "one two three"}]}
        streamed = await client.post("/api/chat", json=body, headers=AUTH)
        assert streamed.headers["content-type"].startswith("application/x-ndjson")
        parts = lines(streamed.text)
        assert "".join(part["message"]["content"] for part in parts) == "one two three "
        assert parts[-1]["done"] and parts[-1]["model"] == "echo" and parts[-1]["eval_count"] == 3
        whole = await client.post("/api/chat", json={**body, "stream": False}, headers=AUTH)
        assert whole.json()["message"]["content"] == "one two three "
        metrics = (await client.get("/metrics", headers=AUTH)).text
        assert 'route="/api/chat"' in metrics


async def test_pull_and_delete_go_to_the_servers_pull_manager(app_client: Callable[..., Any]) -> None:
    async with app_client() as client:
        assert client._transport.app.state.pulls is not None  # type: ignore[attr-defined]
        pull = await client.post("/api/pull", json={"model": "llm/tiny.gguf"}, headers=AUTH)
        assert pull.status_code == 400 and "owner/repo" in pull.json()["error"]  # not a hub name
        delete = await client.request(
            "DELETE", "/api/delete", json={"model": "llm/absent.gguf"}, headers=AUTH
        )
        assert delete.status_code == 404 and set(delete.json()) == {"error"}


async def test_pull_progress_as_ollama_ndjson(app_client: Callable[..., Any]) -> None:
    async with app_client() as client:
        pulls = FakePulls()
        client.app.state.pulls = pulls
        answer = await client.post("/api/pull", json={"model": "llm/owner/repo/model.gguf"}, headers=AUTH)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/x-ndjson")
        progress = lines(answer.text)
        assert pulls.started == [("llm", "owner/repo/model.gguf")]
        assert progress[0] == {"status": "pulling manifest"} and progress[-1] == {"status": "success"}
        assert progress[1] == {
            "status": "pulling model.gguf",
            "digest": "model.gguf",
            "total": 1000,
            "completed": 0,
        }
        assert {
            "status": "pulling mmproj.gguf",
            "digest": "mmproj.gguf",
            "total": 100,
            "completed": 100,
        } in progress
        whole = await client.post(
            "/api/pull", json={"name": "llm/owner/repo:Q4_K_M", "stream": False}, headers=AUTH
        )
        assert whole.json() == {"status": "success"} and pulls.started[-1] == ("llm", "owner/repo:Q4_K_M")

        failed = lines((await client.post("/api/pull", json={"model": "llm/broken/x"}, headers=AUTH)).text)
        assert failed[-1] == {"error": "The file vanished from the hub."}
        failed_whole = await client.post(
            "/api/pull", json={"model": "llm/broken/x", "stream": False}, headers=AUTH
        )
        assert failed_whole.status_code == 404 and failed_whole.json() == {
            "error": "The file vanished from the hub."
        }
        refused = await client.post("/api/pull", json={"model": "llm/forbidden/x"}, headers=AUTH)
        assert refused.status_code == 403 and "not allowed" in refused.json()["error"]
        no_instance = await client.post("/api/pull", json={"model": "justaname"}, headers=AUTH)
        assert no_instance.status_code == 400


async def test_delete_maps_onto_the_pull_manager(app_client: Callable[..., Any]) -> None:
    async with app_client() as client:
        pulls = FakePulls()
        client.app.state.pulls = pulls
        deleted = await client.request(
            "DELETE", "/api/delete", json={"model": "llm/old.gguf:latest"}, headers=AUTH
        )
        assert deleted.status_code == 200 and pulls.deleted == [("llm", "old.gguf")]
        busy = await client.request("DELETE", "/api/delete", json={"model": "llm/busy.gguf"}, headers=AUTH)
        assert busy.status_code == 409 and busy.json() == {
            "error": "Model 'busy.gguf' is loaded; unload it first."
        }


async def test_rate_limit_and_busy_pool_keep_status_and_retry_after(app_client: Callable[..., Any]) -> None:
    keys = [
        {"key": GOOD_KEY, "name": "user", "scopes": ["generate"], "requests_per_minute": 1},
        {"key": AUTH["X-API-Key"], "name": "admin", "scopes": ["generate", "admin"]},
    ]
    pools = {"default": {"limit": 1, "queue_size": 0, "queue_timeout": 5}}
    async with app_client(security={"api_keys": keys}, resource_manager={"pools": pools}) as client:
        body = {"model": "echo/echo", "messages": [{"role": "user", "content": "hi"}], "stream": False}
        headers = {"Authorization": f"Bearer {GOOD_KEY}"}
        assert (await client.post("/api/chat", json=body, headers=headers)).status_code == 200
        limited = await client.post("/api/chat", json=body, headers=headers)
        assert limited.status_code == 429 and isinstance(limited.json()["error"], str)
        assert int(limited.headers["retry-after"]) >= 1
        # the pool's only slot is busy and its queue holds nobody: 503 + Retry-After
        slow = {
            "prompt": "a b c d",
            "binding_name": "echo",
            "model_name": "echo",
            "parameters": {"delay": 0.5},
        }
        holding = asyncio.ensure_future(client.post("/api/v1/generate", json=slow, headers=AUTH))
        generation = client.app.state.generation
        while not generation.pools.snapshot()["pools"][0]["active"]:
            await asyncio.sleep(0.05)
        busy = await client.post("/api/chat", json=body, headers=AUTH)
        assert busy.status_code == 503 and isinstance(busy.json()["error"], str)
        assert int(busy.headers["retry-after"]) >= 1
        assert (await holding).status_code == 200
