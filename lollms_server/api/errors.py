"""Exception handlers: every error the app returns has the one JSON shape (DESIGN §8).

``LollmsError`` carries its status; FastAPI's validation errors become 422 (or the status of the
API family owning the path, ``api.families``: 400 where its clients expect it); Starlette's HTTP
errors (404 route, 405 method...) keep their status with our shape; a client that left gets an
empty 499. Families with their own error shape rewrite these bodies (``kit.errors``).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from lollms_server.api import families
from lollms_server.api.cancellation import CLIENT_CLOSED_REQUEST, ClientDisconnected
from lollms_server.errors import LollmsError, error_body

logger = logging.getLogger(__name__)

HTTP_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "method_not_allowed",
    413: "payload_too_large",
    422: "validation_error",
}


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as the one JSON shape (``lollms_server.errors.error_body``)."""

    async def lollms_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LollmsError)
        if exc.status_code >= 500:
            logger.warning("%s: %s", exc.error_type, exc.message)
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=exc.headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = []
        param = None
        for item in exc.errors()[:5]:
            location = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
            param = param or location or None
            problems.append(f"{location or 'body'}: {item.get('msg', 'invalid')}")
        message = "Invalid request: " + "; ".join(problems)
        family = families.claiming(request.url.path)
        if family is not None and family.validation_status == 400:  # OpenAI, Ollama, Anthropic clients
            return JSONResponse(error_body("invalid_request_error", message, param), status_code=400)
        return JSONResponse(error_body("validation_error", message, param), status_code=422)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error_type = HTTP_ERROR_TYPES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error."
        if exc.status_code == 404 and message == "Not Found":
            message = f"No route {request.method} {request.url.path}."
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
        headers: dict[str, Any] | None = getattr(exc, "headers", None)
        return JSONResponse(error_body(error_type, message), status_code=exc.status_code, headers=headers)

    async def client_disconnected(request: Request, exc: Exception) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    app.add_exception_handler(LollmsError, lollms_error)
    app.add_exception_handler(ClientDisconnected, client_disconnected)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
