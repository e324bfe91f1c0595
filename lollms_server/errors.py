"""One exception hierarchy, mapped to one error JSON shape (DESIGN §8).

Every error the server returns looks like::

    {"error": {"type": "...", "message": "...", "param": "..."}, "detail": "..."}

``detail`` repeats the message so that existing lollms_server clients keep working.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "LollmsError",
    "error_body",
    "ConfigError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "ConflictError",
    "PayloadTooLargeError",
    "RateLimitError",
    "ServiceUnavailableError",
    "BindingError",
    "GenerationTimeoutError",
    "error_for_status",
]


class LollmsError(Exception):
    """Base of every error the server raises on purpose; carries its HTTP status."""

    status_code: int = 500
    error_type: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        return error_body(self.error_type, self.message, self.param)


def error_body(error_type: str, message: str, param: str | None = None) -> dict[str, Any]:
    """The one JSON shape of every error response."""
    error: dict[str, Any] = {"type": error_type, "message": message}
    if param is not None:
        error["param"] = param
    return {"error": error, "detail": message}


class ConfigError(LollmsError):
    """The configuration file or an override is invalid (raised at start-up)."""

    error_type = "config_error"


class BadRequestError(LollmsError):
    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationError(LollmsError):
    status_code = 401
    error_type = "authentication_error"

    def __init__(self, message: str = "A valid API key is required.") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class PermissionDeniedError(LollmsError):
    status_code = 403
    error_type = "permission_error"


class NotFoundError(LollmsError):
    status_code = 404
    error_type = "not_found_error"


class ConflictError(LollmsError):
    status_code = 409
    error_type = "conflict_error"


class PayloadTooLargeError(LollmsError):
    status_code = 413
    error_type = "payload_too_large"


class ServiceUnavailableError(LollmsError):
    """The server is busy (queue full, queue timeout) or a backend is unavailable."""

    status_code = 503
    error_type = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after)))})
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["error"]["retry_after"] = max(1, int(self.retry_after))
        return body


class RateLimitError(LollmsError):
    """A key is over one of its limits (concurrency, queue, requests or tokens per minute)."""

    status_code = 429
    error_type = "rate_limit_error"

    def __init__(
        self, message: str, *, limit: int, remaining: int, reset_seconds: float, reason: str = "rate_limit"
    ) -> None:
        reset = max(1, math.ceil(reset_seconds))
        super().__init__(
            message,
            headers={
                "Retry-After": str(reset),
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": str(max(0, remaining)),
                "X-RateLimit-Reset": str(reset),
            },
        )
        self.retry_after = reset
        self.reason = reason
        """``rate_limit`` (requests or tokens per minute) or ``concurrency`` (running, waiting)."""


class BindingError(LollmsError):
    """A binding failed while loading or generating; the message is safe to show."""

    status_code = 500
    error_type = "binding_error"


class GenerationTimeoutError(LollmsError):
    status_code = 504
    error_type = "generation_timeout"


_STATUS_ERRORS: dict[int, type[LollmsError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: BadRequestError,
    504: GenerationTimeoutError,
}


def error_for_status(
    status: int, message: str, retry_after: str | int | None = None, *, third_party: bool = False
) -> LollmsError:
    """The error to raise for an HTTP status a backend answered: the one status-to-exception map.

    A backend of this server (a pool's worker process) speaks our statuses, so they pass through
    (503 keeps its ``Retry-After``). A ``third_party`` API (OpenAI, Ollama...) does not: its
    404 is an unknown model, its other 4xx a bad request, and its auth errors, rate limits and
    5xx are this binding's failure (500), never the caller's 401 or 403.
    """
    if third_party:
        if status == 404:
            return NotFoundError(message, param="model_name")
        if 400 <= status < 500 and status not in (401, 403, 429):
            return BadRequestError(message)
        return BindingError(message)
    if status == 503:
        try:
            seconds = int(retry_after) if retry_after is not None else 5
        except ValueError:
            seconds = 5
        return ServiceUnavailableError(message, retry_after=seconds)
    if status == 401:
        return AuthenticationError(message)
    error_class = _STATUS_ERRORS.get(status, BindingError)
    return error_class(message)
