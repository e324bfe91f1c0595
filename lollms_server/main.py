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

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from lollms_server import __version__
from lollms_server.api.binding_admin import router as binding_admin_router
from lollms_server.api.endpoints import health_router, router
from lollms_server.api.errors import install_error_handlers
from lollms_server.api.families import mount as mount_families
from lollms_server.api.kit.errors import FamilyErrorShape
from lollms_server.api.lollms_v1 import router as lollms_v1_router
from lollms_server.api.middleware import KeyGateMiddleware, RequestGuardMiddleware
from lollms_server.api.models_routes import router as models_router
from lollms_server.core.bindings import BindingManager
from lollms_server.core.config import AppConfig, load_config
from lollms_server.core.functions import FunctionManager
from lollms_server.core.generation import GenerationService
from lollms_server.core.metrics import Metrics
from lollms_server.core.models import PullManager
from lollms_server.core.models.first_run import FirstRun
from lollms_server.core.models.hints import missing_default_model
from lollms_server.core.personalities import PersonalityManager
from lollms_server.core.pools import PoolRegistry
from lollms_server.core.security import KeyStore, is_loopback

logger = logging.getLogger(__name__)

CONFIG_ENV = "LOLLMS_SERVER_CONFIG"


def create_app(config: AppConfig, *, pool_worker: bool = False) -> FastAPI:
    """Build the app for one configuration; managers live on ``app.state``.

    ``pool_worker``: the app is the worker process of a pool (``python -m lollms_server.worker``)
    and also serves the pool-lease API its gateways use.
    """
    keys = KeyStore.from_config(config)  # refuse to build an unsecured app early
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        bindings = BindingManager(config)
        pools = PoolRegistry(config, bindings)
        await pools.start()  # ray mode joins the cluster now: a wrong address fails the start
        personalities = PersonalityManager(config)
        functions = FunctionManager(
            [config.paths.zoos_folder / "functions", config.paths.functions_folder],
            call_timeout=config.functions.call_timeout,
        )
        app.state.bindings = bindings
        app.state.pools = pools
        app.state.generation = GenerationService(config, bindings, pools, personalities, functions, metrics)
        if pool_worker:
            from lollms_server.core.pools.leases import LeaseTable
            from lollms_server.core.pools.local import LocalPoolHost

            (pool,) = config.resource_manager.pools
            host = pools.hosts[pool]
            assert isinstance(host, LocalPoolHost), "a pool worker runs its pool in process"
            app.state.leases = LeaseTable(host, config.resource_manager.generation_timeout)
        jobs_enabled = config.jobs.enabled and not pool_worker
        if jobs_enabled:  # durable async jobs: one runner per server process, leases in the database
            from lollms_server.core.jobs import JobService

            app.state.jobs = await JobService.open(config, app.state.generation, keys.principal_named)
        metrics.watch(pools.snapshot)
        app.state.pulls = pull_manager(config, bindings, pools)
        app.state.first_run = FirstRun(config, bindings, app.state.pulls)
        app.state.generation.model_fetcher = app.state.first_run.fetcher(app.state.pulls.for_first_use)
        app.state.generation.no_model = app.state.first_run.no_model
        if app.state.first_run.configured() is not None or app.state.first_run.instance is None:
            hint = await asyncio.to_thread(missing_default_model, config, bindings)
            if hint is not None:
                logger.warning("%s", hint)
        if not pool_worker:  # folders now; a missing default model in the background (the gateway's job)
            await app.state.first_run.start()
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
            await app.state.first_run.close()
            await app.state.pulls.close()
            if pool_worker:
                await app.state.leases.close_all()
            if jobs_enabled:
                await app.state.jobs.close()
            await pools.close()

    docs = config.server.docs if config.server.docs is not None else is_loopback(config.server.host)
    app = FastAPI(
        title="lollms_server",
        version=__version__,
        description="Multi-modal generation server with pluggable bindings.",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.config = config
    app.state.keys = keys
    app.state.metrics = metrics
    app.state.started_at = time.time()
    app.include_router(health_router)
    app.include_router(router)
    mount_families(app)  # /v1 (OpenAI), /api/chat... (Ollama, beside /api/v1), /v1/messages...
    app.include_router(models_router)
    app.include_router(lollms_v1_router)  # /lollms/v1 helpers for lollms_client
    app.include_router(binding_admin_router)  # /api/v1/bindings/{instance}/commands|settings
    if config.jobs.enabled and not pool_worker:
        from lollms_server.api.jobs import router as jobs_router
        from lollms_server.api.openai_compat.videos import router as videos_router

        app.include_router(jobs_router)
        app.include_router(videos_router)
    if pool_worker:
        from lollms_server.api.pool_rpc import router as pool_rpc_router

        app.include_router(pool_rpc_router)
    install_error_handlers(app)
    public_paths = {"/health"}
    if config.server.public_metrics:
        public_paths.add("/metrics")
    if docs:
        public_paths |= {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
    public_prefixes: tuple[str, ...] = ()
    if config.server.ui and not pool_worker:  # the web playground and dashboard: pages without a key
        from lollms_server.api.ui import UI_PUBLIC_PATHS, UI_PUBLIC_PREFIX
        from lollms_server.api.ui import router as ui_router

        app.include_router(ui_router)
        public_paths |= UI_PUBLIC_PATHS
        public_prefixes = (UI_PUBLIC_PREFIX,)
    # the last added is the outermost: request id and size limit, then CORS (preflights need no
    # key; a 401 carries CORS headers), then the key gate, before any route reads a body
    app.add_middleware(
        KeyGateMiddleware, keys=keys, public_paths=public_paths, public_prefixes=public_prefixes
    )
    if config.server.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.server.allowed_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.add_middleware(RequestGuardMiddleware, max_bytes=config.server.max_request_bytes, metrics=metrics)
    app.add_middleware(FamilyErrorShape)  # outermost: every error in its API family's shape
    return app


def pull_manager(config: AppConfig, bindings: BindingManager, pools: PoolRegistry) -> PullManager:
    """The pulls of this app; a delete asks every pool (remote ones too) what is loaded."""

    async def residency() -> set[tuple[str, str]]:
        await pools.refresh()
        return {
            (entry.get("binding"), entry.get("model"))
            for pool in pools.snapshot()["pools"]
            if isinstance(pool, dict)
            for entry in pool.get("models", [])
        }

    return PullManager(config, bindings, residency)


def app_from_environment() -> FastAPI:
    """App factory for multi-worker uvicorn: the config path comes from ``LOLLMS_SERVER_CONFIG``."""
    from lollms_server.core.log_secrets import configured_secrets
    from lollms_server.utils.logs import configure_logging

    config = load_config(os.environ[CONFIG_ENV])
    configure_logging(config.logging.level, config.logging.file, configured_secrets(config))
    return create_app(config)
