"""The FastAPI application: ``create_app(config)`` builds everything in its lifespan.

No configuration is read at import time. ``app_from_environment()`` is the factory uvicorn
uses when it runs several worker processes (it reads ``LOLLMS_SERVER_CONFIG``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lollms_server import __version__
from lollms_server.api.endpoints import health_router, router
from lollms_server.api.middleware import RequestGuardMiddleware
from lollms_server.api.openai_compat import router as openai_router
from lollms_server.core.bindings import BindingManager
from lollms_server.core.config import AppConfig, load_config
from lollms_server.core.errors import LollmsError, error_body
from lollms_server.core.functions import FunctionManager
from lollms_server.core.generation import GenerationService
from lollms_server.core.metrics import Metrics
from lollms_server.core.personalities import PersonalityManager
from lollms_server.core.resource_manager import ResourceManager
from lollms_server.core.security import KeyStore

logger = logging.getLogger(__name__)

CONFIG_ENV = "LOLLMS_SERVER_CONFIG"
HTTP_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "method_not_allowed",
    413: "payload_too_large",
    422: "validation_error",
}


def create_app(config: AppConfig) -> FastAPI:
    """Build the app for one configuration; managers live on ``app.state``."""
    keys = KeyStore.from_config(config)  # refuse to build an unsecured app early
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if config.cluster.mode == "ray":  # join the cluster now: a wrong address fails the start
            from lollms_server.core.cluster import connect

            await asyncio.to_thread(connect, config.cluster)
        bindings = BindingManager(config)
        resources = ResourceManager(config.resource_manager, config.remote_pools())
        app.state.bindings = bindings
        app.state.resources = resources
        personalities = PersonalityManager(config)
        functions = FunctionManager(
            [config.paths.zoos_folder / "functions", config.paths.functions_folder],
            call_timeout=config.functions.call_timeout,
        )
        app.state.generation = GenerationService(
            config, bindings, resources, personalities, functions, metrics
        )
        metrics.watch(resources)
        resources.start()
        logger.info(
            "lollms_server %s ready: %d binding types, %d instances, %d personalities, %d functions",
            __version__,
            len(bindings.cards),
            len(bindings.instances),
            len(personalities.personalities),
            len(functions.functions),
        )
        try:
            yield
        finally:
            await resources.stop()
            await bindings.close()

    app = FastAPI(
        title="lollms_server",
        version=__version__,
        description="Multi-modal generation server with pluggable bindings.",
        lifespan=lifespan,
    )
    app.state.config = config
    app.state.keys = keys
    app.state.metrics = metrics
    app.state.started_at = time.time()
    app.include_router(health_router)
    app.include_router(router)
    app.include_router(openai_router)
    _install_error_handlers(app)
    if config.server.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.server.allowed_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.add_middleware(RequestGuardMiddleware, max_bytes=config.server.max_request_bytes, metrics=metrics)
    return app


def _install_error_handlers(app: FastAPI) -> None:
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
        if request.url.path.startswith("/v1/"):  # OpenAI clients expect 400 invalid_request_error
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

    app.add_exception_handler(LollmsError, lollms_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


def app_from_environment() -> FastAPI:
    """App factory for multi-worker uvicorn: the config path comes from ``LOLLMS_SERVER_CONFIG``."""
    from lollms_server.utils.logs import configure_logging

    config = load_config(os.environ[CONFIG_ENV])
    configure_logging(config.logging.level, config.logging.file)
    return create_app(config)
