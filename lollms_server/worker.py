"""A pool's worker process (``isolation = "process"``): a lollms_server holding only that pool's
binding instances and its queue, on 127.0.0.1, answering only to a per-start token; it serves
the pool-lease API (``api/pool_rpc.py``) its gateways admit and generate through.

Started by :class:`lollms_server.core.pools.process_supervisor.WorkerSupervisor`; exits when
its owner (the server, or the uvicorn master of several server processes) is gone.

    python -m lollms_server.worker --config PATH --pool NAME --port N --token-file F --owner-pid PID
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from lollms_server.core.config import ApiKeyConfig, AppConfig, load_config
from lollms_server.utils.processes import pid_alive


def pool_config(config: AppConfig, pool: str, token: str) -> AppConfig:
    """The server's config reduced to one pool, run in process, guarded by ``token``."""
    config = config.for_pool(pool)
    config.security.api_keys = [ApiKeyConfig(key=token, name="gateway", scopes=["generate", "admin"])]
    config.security.allow_unauthenticated_localhost = False
    config.server.host = "127.0.0.1"
    return config


async def serve(config: AppConfig, port: int, owner_pid: int) -> None:
    import uvicorn

    from lollms_server.main import create_app

    server = uvicorn.Server(
        uvicorn.Config(create_app(config, pool_worker=True), host="127.0.0.1", port=port, log_level="warning")
    )

    async def watch_owner() -> None:
        while not server.should_exit:
            await asyncio.sleep(0.5)
            if not pid_alive(owner_pid):
                server.should_exit = True

    watcher = asyncio.create_task(watch_owner())
    try:
        await server.serve()
    finally:
        watcher.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description="lollms_server pool worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--pool", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--owner-pid", type=int, required=True)
    args = parser.parse_args()
    from lollms_server.core.log_secrets import configured_secrets
    from lollms_server.utils.logs import configure_logging

    token = Path(args.token_file).read_text(encoding="utf-8").strip()
    config = pool_config(load_config(args.config), args.pool, token)
    configure_logging(config.logging.level, config.logging.file, configured_secrets(config))
    asyncio.run(serve(config, args.port, args.owner_pid))


if __name__ == "__main__":
    main()
