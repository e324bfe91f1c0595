"""The one status-to-exception map and the one error JSON shape."""

from __future__ import annotations

import pytest

from lollms_server.errors import (
    AuthenticationError,
    BadRequestError,
    BindingError,
    ConflictError,
    GenerationTimeoutError,
    LollmsError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ServiceUnavailableError,
    error_body,
    error_for_status,
)


# ---- our own backends (a pool's worker process): statuses pass through ------------------------
@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, PayloadTooLargeError),
        (422, BadRequestError),
        (504, GenerationTimeoutError),
    ],
)
def test_known_statuses_map_to_their_error(status: int, error_class: type[LollmsError]) -> None:
    error = error_for_status(status, "what the backend said")
    assert type(error) is error_class
    assert error.message == "what the backend said"
    assert error.status_code == (400 if status == 422 else status)


@pytest.mark.parametrize("status", [418, 429, 500, 502, 599, 302])
def test_other_statuses_are_a_binding_error(status: int) -> None:
    error = error_for_status(status, "boom")
    assert type(error) is BindingError and error.status_code == 500 and error.message == "boom"


def test_401_asks_for_a_bearer_key() -> None:
    error = error_for_status(401, "who are you")
    assert error.headers == {"WWW-Authenticate": "Bearer"} and error.message == "who are you"


@pytest.mark.parametrize(("retry_after", "seconds"), [("12", 12), (30, 30), (None, 5)])
def test_503_keeps_retry_after(retry_after: str | int | None, seconds: int) -> None:
    error = error_for_status(503, "busy", retry_after)
    assert isinstance(error, ServiceUnavailableError)
    assert error.status_code == 503 and error.message == "busy"
    assert error.retry_after == seconds
    assert error.headers == {"Retry-After": str(seconds)}


@pytest.mark.parametrize("retry_after", ["soon", "", "1.5", "Wed, 21 Oct 2026 07:28:00 GMT"])
def test_503_with_an_unreadable_retry_after_waits_5_seconds(retry_after: str) -> None:
    error = error_for_status(503, "busy", retry_after)
    assert isinstance(error, ServiceUnavailableError)
    assert error.retry_after == 5 and error.headers["Retry-After"] == "5"


@pytest.mark.parametrize("retry_after", ["0", "-3"])
def test_503_retry_after_header_is_at_least_one_second(retry_after: str) -> None:
    assert error_for_status(503, "busy", retry_after).headers["Retry-After"] == "1"


# ---- third-party APIs (OpenAI, Ollama...): never the caller's auth errors ----------------------
def test_third_party_404_is_an_unknown_model() -> None:
    error = error_for_status(404, "model 'x' not found", third_party=True)
    assert (
        type(error) is NotFoundError
        and error.param == "model_name"
        and error.message == "model 'x' not found"
    )


@pytest.mark.parametrize("status", [400, 409, 413, 422])
def test_third_party_other_4xx_is_a_bad_request(status: int) -> None:
    error = error_for_status(status, "bad", third_party=True)
    assert type(error) is BadRequestError and error.status_code == 400


@pytest.mark.parametrize("status", [401, 403, 429, 500, 502, 503, 504])
def test_third_party_auth_rate_limit_and_5xx_are_the_bindings_failure(status: int) -> None:
    error = error_for_status(status, "upstream said no", "7", third_party=True)
    assert type(error) is BindingError, f"{status} from a third party must not reach the caller as is"
    assert error.status_code == 500 and error.headers == {}


# ---- error_body -----------------------------------------------------------------------------------
def test_error_body_shape_without_param() -> None:
    assert error_body("invalid_request_error", "Bad thing.") == {
        "error": {"type": "invalid_request_error", "message": "Bad thing."},
        "detail": "Bad thing.",
    }


def test_error_body_shape_with_param() -> None:
    assert error_body("not_found_error", "No such model.", "model_name") == {
        "error": {"type": "not_found_error", "message": "No such model.", "param": "model_name"},
        "detail": "No such model.",
    }


def test_an_error_serialises_to_the_error_body() -> None:
    error = NotFoundError("No such model.", param="model_name")
    assert error.to_dict() == error_body("not_found_error", "No such model.", "model_name")
    busy = error_body("service_unavailable", "busy")
    busy["error"]["retry_after"] = 5  # a 503 says when to come back in its body too
    assert ServiceUnavailableError("busy").to_dict() == busy
