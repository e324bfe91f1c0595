"""Every registered route: no key, bad key, wrong scope, good key, both header styles."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from lollms_server.api.ollama_compat import is_ollama_path
from tests.conftest import ADMIN_KEY, GOOD_KEY, LIMITED_KEY, ONLY_ADMIN_KEY

PUBLIC = {"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
MODEL_MANAGEMENT = {
    "/api/v1/models/pull",
    "/api/v1/models/pulls",
    "/api/v1/models/pulls/{pull_id}",
    "/api/v1/models/default/pull",  # the default text instance (echo) takes no pulls: 400
    "/api/v1/models/echo/{model}",  # {instance} -> echo (PATH_VALUES)
    "/api/pull",
    "/api/delete",
}
ADMIN_ONLY = {
    "/api/v1/status",
    "/api/v1/queue",
    "/metrics",
    "/api/v1/bindings/echo/commands",
    "/api/v1/bindings/echo/commands/word_count",
    "/api/v1/bindings/echo/settings",
    *MODEL_MANAGEMENT,
}
BODIES: dict[str, dict[str, Any]] = {
    "/api/v1/generate": {"prompt": "hello world", "binding_name": "echo", "model_name": "echo"},
    "/api/v1/tokenize": {"text": "hi", "binding_name": "echo", "model_name": "echo"},
    "/api/v1/count_tokens": {"text": "hi", "binding_name": "echo", "model_name": "echo"},
    "/api/v1/detokenize": {"tokens": [104, 105], "binding_name": "echo", "model_name": "echo"},
    "/v1/chat/completions": {"model": "echo/echo", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": "echo/echo", "prompt": "hi"},
    "/v1/messages": {"model": "echo/echo", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
    "/v1/messages/count_tokens": {"model": "echo/echo", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/responses": {"model": "echo/echo", "input": "hi"},
    "/v1/responses/input_tokens": {"model": "echo/echo", "input": "hi"},
    "/api/chat": {"model": "echo/echo", "messages": [{"role": "user", "content": "hi"}], "stream": False},
    "/api/generate": {"model": "echo", "prompt": "hi", "stream": False},
    "/api/show": {"model": "echo"},
    "/api/embed": {"model": "echo", "input": "hi"},
    "/api/embeddings": {"model": "echo", "prompt": "hi"},
    # model management on an instance that takes no pulls, or a model that is not there: a 4xx
    # after the key check, never a download or the deletion of a model other tests use
    "/api/pull": {"model": "echo/owner/repo/file.gguf"},
    "/api/delete": {"model": "llm/absent.gguf"},
    "/api/v1/models/pull": {"binding": "echo", "ref": "owner/repo/file.gguf", "stream": False},
    "/lollms/v1/tokenize": {"model": "echo/echo", "text": "hi"},
    "/lollms/v1/detokenize": {"model": "echo/echo", "tokens": [104, 105]},
    "/lollms/v1/context_size": {"model": "echo/echo"},
    "/api/v1/bindings/echo/commands/word_count": {"parameters": {"text": "a b"}},
    "/api/v1/bindings/echo/settings": {"settings": {"delay": 0.0}},
}
PATH_VALUES = {
    "{binding_name}": "echo",
    "{instance}": "echo",
    "{command}": "word_count",
    "{model_type}": "llm",
    "{response_id}": "resp_unknown",
}
# routes whose success needs a media or embedding binding: with a good key they must pass
# authentication and authorization (anything but 401/403); their behaviour is tested elsewhere
NEEDS_MEDIA = {
    "/v1/embeddings",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/audio/speech",
    "/v1/audio/transcriptions",
    "/api/embed",
    "/api/embeddings",
    *MODEL_MANAGEMENT,
    "/lollms/v1/context_size",  # 404 for a binding that does not tell its context size
}
# job routes answer a good key 202 (submit), 404 (no such job) or 409: tests/e2e/test_jobs.py
JOB_ROUTES = ("/api/v1/jobs/", "/v1/videos")
# a stored response's routes answer a good key 404 for an unknown id: tests/e2e/test_responses_api.py
STORED_RESPONSES = ("/v1/responses/resp_",)


def routes(app: Any) -> list[tuple[str, str]]:
    """Every API route, from the OpenAPI schema (which lists each registered path and method)."""
    found = []
    for path, operations in app.openapi()["paths"].items():
        for method in operations:
            for placeholder, value in PATH_VALUES.items():
                path = path.replace(placeholder, value)
            found.append((method.upper(), path))
    return found


def error_type(response: httpx.Response, path: str) -> str:
    """The error's type; Ollama paths answer ``{"error": "message"}``, typed by the status."""
    error = response.json()["error"]
    if is_ollama_path(path):
        assert isinstance(error, str) and error, (path, error)
        return {401: "authentication_error", 403: "permission_error"}[response.status_code]
    return str(error["type"])


async def call(client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    return await client.request(method, path, json=BODIES.get(path), headers=headers)


async def test_every_route_requires_a_valid_key_with_the_right_scope(app_client: Any) -> None:
    async with app_client() as client:
        checked = routes(client.app)
        assert len(checked) >= 12
        for method, path in checked:
            if path in PUBLIC:
                continue
            for headers in (
                {},
                {"X-API-Key": "wrong-key-123456"},
                {"Authorization": "Bearer wrong-key-123456"},
                {"Authorization": "Basic " + GOOD_KEY},
            ):
                response = await call(client, method, path, headers)
                assert response.status_code == 401, (method, path, headers)
                assert error_type(response, path) == "authentication_error"
                assert response.headers["www-authenticate"] == "Bearer"
            wrong_scope = GOOD_KEY if path in ADMIN_ONLY else ONLY_ADMIN_KEY
            response = await call(client, method, path, {"X-API-Key": wrong_scope})
            assert response.status_code == 403, (method, path)
            assert error_type(response, path) == "permission_error"
            good = ADMIN_KEY if path in ADMIN_ONLY else GOOD_KEY
            for headers in ({"X-API-Key": good}, {"Authorization": f"Bearer {good}"}):
                response = await call(client, method, path, headers)
                if (
                    path in NEEDS_MEDIA
                    or path.startswith(JOB_ROUTES + STORED_RESPONSES)
                    or (method, path) == ("POST", "/api/v1/jobs")
                ):
                    assert response.status_code not in (401, 403), (method, path, response.text)
                else:
                    assert response.status_code == 200, (method, path, response.text)


async def test_health_and_docs_are_public(app_client: Any) -> None:
    async with app_client() as client:
        health = await client.get("/health")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "version": "0.1.0", "api_key_required": True}
        assert (await client.get("/docs")).status_code == 200
        assert (await client.get("/openapi.json")).status_code == 200


@pytest.mark.parametrize("path", ["/api/v1/generate", "/api/v1/tokenize"])
async def test_key_limited_to_bindings(app_client: Any, path: str) -> None:
    async with app_client() as client:
        body = {**BODIES[path], "binding_name": "llm", "model_name": "tiny.gguf"}
        denied = await client.post(path, json=body, headers={"X-API-Key": LIMITED_KEY})
        assert denied.status_code == 403 and "llm" in denied.json()["error"]["message"]
        allowed = await client.post(path, json=BODIES[path], headers={"X-API-Key": LIMITED_KEY})
        assert allowed.status_code == 200
    async with app_client() as client:
        info = await client.get("/api/v1/list_available_models/llm", headers={"X-API-Key": LIMITED_KEY})
        assert info.status_code == 403


LOCAL = {"Host": "127.0.0.1:9601"}


async def test_unauthenticated_localhost_mode(app_client: Any) -> None:
    async with app_client(security={"api_keys": [], "allow_unauthenticated_localhost": True}) as client:
        assert (await client.get("/health")).json()["api_key_required"] is False
        assert (await client.get("/api/v1/list_bindings", headers=LOCAL)).status_code == 200
        for host in ("localhost:9601", "[::1]:9601", "127.0.0.1"):
            assert (await client.get("/api/v1/list_bindings", headers={"Host": host})).status_code == 200
        # the anonymous caller generates but is no admin unless configured
        assert (await client.get("/api/v1/status", headers=LOCAL)).status_code == 403


async def test_anonymous_mode_refuses_foreign_hosts_and_cross_site_origins(app_client: Any) -> None:
    """DNS rebinding: a page of attacker.example resolving to 127.0.0.1 sends its own Host."""
    async with app_client(
        security={
            "api_keys": [],
            "allow_unauthenticated_localhost": True,
            "anonymous_scopes": ["generate", "admin"],
        }
    ) as client:
        assert (await client.get("/api/v1/status", headers=LOCAL)).status_code == 200
        for headers in (
            {"Host": "attacker.example:9601"},
            {"Host": "127.0.0.1.attacker.example"},
            {**LOCAL, "Origin": "http://attacker.example"},
            {**LOCAL, "Origin": "null"},
        ):
            response = await client.get("/api/v1/status", headers=headers)
            assert response.status_code == 403, headers
            assert response.json()["error"]["type"] == "permission_error"
        page = {**LOCAL, "Origin": "http://localhost:3000"}
        assert (await client.get("/api/v1/list_bindings", headers=page)).status_code == 200


async def test_a_body_without_a_key_is_refused_before_it_is_read(app_client: Any) -> None:
    """16 MB of JSON without a key: 401 without the app parsing (or even receiving) the body."""
    async with app_client() as client:
        received: list[int] = []

        async def body() -> Any:
            for _ in range(16):
                received.append(1)
                yield b"[" + b"{}," * 350_000 + b"{}]"

        response = await client.post(
            "/api/v1/generate", content=body(), headers={"content-type": "application/json"}
        )
        assert response.status_code == 401, response.text
        assert response.json()["error"]["type"] == "authentication_error"
        assert len(received) <= 1, "the body was read before the key was checked"
        assert (await client.get("/health")).status_code == 200


async def test_docs_can_be_switched_off(app_client: Any) -> None:
    async with app_client() as client:
        assert (await client.get("/openapi.json")).status_code == 200  # public while on
    async with app_client(server={"docs": False}) as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await client.get(path, headers={"X-API-Key": ADMIN_KEY})).status_code == 404, path


async def test_listings_show_a_limited_key_only_its_bindings(app_client: Any) -> None:
    """Finding #23: list_bindings and list_models listed every instance whatever the allow-list."""
    async with app_client(
        bindings={
            "echo": {"type": "scripted_binding"},
            "remote": {"type": "openai_binding", "base_url": "http://user:secret-pw@127.0.0.1:9/v1"},
        }
    ) as client:
        limited = {"X-API-Key": LIMITED_KEY}
        listed = (await client.get("/api/v1/list_bindings", headers=limited)).json()
        assert set(listed["binding_instances"]) == {"echo"}
        everything = (await client.get("/api/v1/list_bindings", headers={"X-API-Key": ADMIN_KEY})).json()
        assert "secret-pw" not in str(everything), "URL credentials were shown"
        assert (
            everything["binding_instances"]["remote"]["settings"]["base_url"] == "http://***@127.0.0.1:9/v1"
        )
        info = await client.get("/api/v1/get_model_info/remote", headers={"X-API-Key": ADMIN_KEY})
        assert "secret-pw" not in info.text
        models = (await client.get("/api/v1/list_models", headers=limited)).json()["models"]
        assert set(models) <= {"scripted_binding"}, models
        assert (await client.get("/api/v1/get_model_info/remote", headers=limited)).status_code == 403
        assert (await client.get("/api/v1/get_model_info/nothing", headers=limited)).status_code == 403


async def test_tokenize_obeys_the_prompt_limit(app_client: Any) -> None:
    """Finding #16: /api/v1/tokenize took 12 M characters and answered 34 MiB."""
    async with app_client(limits={"max_prompt_chars": 1000}) as client:
        body = {"text": "x" * 1001, "binding_name": "echo", "model_name": "echo"}
        for path in ("/api/v1/tokenize", "/api/v1/count_tokens"):
            response = await client.post(path, json=body, headers={"X-API-Key": ADMIN_KEY})
            assert response.status_code == 400 and response.json()["error"]["param"] == "text", path
        ok = await client.post(
            "/api/v1/tokenize", json={**body, "text": "x" * 1000}, headers={"X-API-Key": ADMIN_KEY}
        )
        assert ok.status_code == 200
