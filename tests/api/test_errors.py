"""One error shape for 400/401/403/404/405/413/422/500, with nothing internal leaked."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import AUTH, GOOD_KEY


def assert_error_shape(body: dict[str, Any], error_type: str) -> None:
    assert set(body) == {"error", "detail"}
    assert body["error"]["type"] == error_type
    assert body["detail"] == body["error"]["message"] and body["detail"]
    assert set(body["error"]) <= {"type", "message", "param"}


@pytest.mark.parametrize(
    ("method", "path", "payload", "headers", "status", "error_type"),
    [
        (
            "POST",
            "/api/v1/generate",
            {"prompt": "x", "model_name": "../../etc/passwd"},
            AUTH,
            400,
            "invalid_request_error",
        ),
        (
            "POST",
            "/api/v1/generate",
            {"prompt": "x", "parameters": {"temperature": -1}},
            AUTH,
            400,
            "invalid_request_error",
        ),
        (
            "POST",
            "/api/v1/generate",
            {"prompt": "x", "generation_type": "tti"},
            AUTH,
            400,
            "invalid_request_error",
        ),
        ("GET", "/api/v1/list_bindings", None, {}, 401, "authentication_error"),
        ("GET", "/api/v1/status", None, {"X-API-Key": GOOD_KEY}, 403, "permission_error"),
        ("POST", "/api/v1/generate", {"prompt": "x", "binding_name": "ghost"}, AUTH, 404, "not_found_error"),
        ("GET", "/api/v1/no_such_route", None, AUTH, 404, "not_found_error"),
        ("GET", "/api/v1/list_available_models/ghost", None, AUTH, 404, "not_found_error"),
        ("DELETE", "/api/v1/generate", None, AUTH, 405, "method_not_allowed"),
        ("POST", "/api/v1/generate", {"input_data": []}, AUTH, 422, "validation_error"),
        ("POST", "/api/v1/generate", {"prompt": "x", "unknown_field": 1}, AUTH, 422, "validation_error"),
        ("POST", "/api/v1/generate", {"prompt": "x", "stream": "maybe"}, AUTH, 422, "validation_error"),
        ("POST", "/api/v1/generate", {"prompt": "x", "model_name": "broken"}, AUTH, 500, "binding_error"),
    ],
)
async def test_error_shape(
    app_client: Any,
    method: str,
    path: str,
    payload: Any,
    headers: dict[str, str],
    status: int,
    error_type: str,
) -> None:
    async with app_client() as client:
        response = await client.request(method, path, json=payload, headers=headers)
        assert response.status_code == status, response.text
        assert_error_shape(response.json(), error_type)
        assert "Traceback" not in response.text and "passwd" not in response.json()["detail"]


async def test_invalid_json_is_422(app_client: Any) -> None:
    async with app_client() as client:
        response = await client.post(
            "/api/v1/generate", content=b"{not json", headers={**AUTH, "content-type": "application/json"}
        )
        assert response.status_code == 422
        assert_error_shape(response.json(), "validation_error")


async def test_body_over_the_limit_is_413_before_it_is_read(app_client: Any) -> None:
    async with app_client(server={"max_request_bytes": 2048, "auto_install_requirements": False}) as client:
        big = {"prompt": "x" * 4096}
        response = await client.post("/api/v1/generate", json=big, headers=AUTH)
        assert response.status_code == 413
        assert_error_shape(response.json(), "payload_too_large")

        async def chunks() -> Any:  # no content-length: counted while streaming in
            for _ in range(10):
                yield b"x" * 1024

        streamed = await client.post("/api/v1/generate", content=chunks(), headers=AUTH)
        assert streamed.status_code == 413
        assert_error_shape(streamed.json(), "payload_too_large")
        small = await client.post(
            "/api/v1/generate", json={"prompt": "ok", "binding_name": "echo"}, headers=AUTH
        )
        assert small.status_code == 200


async def test_unexpected_exception_is_a_generic_500(app_client: Any) -> None:
    async with app_client() as client:

        async def boom() -> None:
            raise RuntimeError("internal secret detail")

        binding = await client.app.state.bindings.get("echo")
        binding.list_available_models = boom
        response = await client.get("/api/v1/list_available_models/echo", headers=AUTH)
        assert response.status_code == 500
        assert_error_shape(response.json(), "internal_error")
        assert "secret" not in response.text
        assert response.headers["x-request-id"]


async def test_every_response_has_a_request_id(app_client: Any) -> None:
    async with app_client() as client:
        ok = await client.post("/api/v1/generate", json={"prompt": "a b c"}, headers=AUTH)
        assert ok.json()["request_id"] == ok.headers["x-request-id"]
        error = await client.get("/api/v1/list_bindings")
        assert len(error.headers["x-request-id"]) == 32


async def test_cors_only_for_configured_origins(app_client: Any) -> None:
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
    async with app_client() as client:
        response = await client.options("/api/v1/generate", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    async with app_client(
        server={"allowed_origins": ["http://app.example"], "auto_install_requirements": False}
    ) as c:
        response = await c.options("/api/v1/generate", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "http://app.example"
        other = await c.options("/api/v1/generate", headers={**preflight, "Origin": "http://evil.example"})
        assert other.headers.get("access-control-allow-origin") != "http://evil.example"
