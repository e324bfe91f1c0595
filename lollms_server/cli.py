"""``lollms-server`` command line: run the server, ``init`` a fresh config with a new key (and a
model), ``pull``/``models``/``rm`` models (``cli_models``)."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from lollms_server import __version__
from lollms_server.cli_first_run import add_chat_command, run_chat, run_pull_default
from lollms_server.cli_models import add_model_commands, run_models, run_pull, run_rm
from lollms_server.core.config import AppConfig, load_config
from lollms_server.core.errors import ConfigError
from lollms_server.core.security import generate_key, hash_key
from lollms_server.utils.paths import shipped

EXAMPLE_CONFIG = shipped("config.toml.example")
KEYS_LINE = re.compile(r"^api_keys\s*=\s*\[\s*\]\s*$", re.MULTILINE)
PULL_DEFAULT_LINE = re.compile(r"^pull_default_on_start\s*=\s*false\b", re.MULTILINE)


def user_config_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("lollms_server")) / "config.toml"


def find_config(explicit: str | None) -> Path:
    """``--config``, else ``$LOLLMS_SERVER_CONFIG``, else ``./config.toml``, else the user folder."""
    if explicit:
        return Path(explicit)
    if os.environ.get("LOLLMS_SERVER_CONFIG"):
        return Path(os.environ["LOLLMS_SERVER_CONFIG"])
    for candidate in (Path.cwd() / "config.toml", user_config_path()):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        "no configuration found (looked for ./config.toml and "
        f"{user_config_path()}). Create one with:  lollms-server init config.toml"
    )


def write_initial_config(path: Path, force: bool = False) -> str:
    """Write a config from the example with a new admin key and ``[models] pull_default_on_start``
    on (a server started on it pulls a default text model when it has none); return the key
    (shown once)."""
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists (use --force to overwrite it)")
    try:
        template = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    except OSError:
        raise ConfigError(f"the example configuration {EXAMPLE_CONFIG} is missing") from None
    key = generate_key()
    entry = f'api_keys = [{{ key = "{hash_key(key)}", name = "admin", scopes = ["generate", "admin"] }}]'
    text, count = KEYS_LINE.subn(entry, template, count=1)
    if count != 1:
        raise ConfigError(f"{EXAMPLE_CONFIG}: no 'api_keys = []' line to fill in")
    text = PULL_DEFAULT_LINE.sub("pull_default_on_start = true", text, count=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    if os.name == "posix":
        path.chmod(0o600)
    load_config(path)  # the written file must be valid
    return key


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lollms-server", description="Multi-modal generation server.")
    parser.add_argument("--version", action="version", version=f"lollms_server {__version__}")
    parser.add_argument("--config", help="config.toml to use (default: ./config.toml, then the user folder)")
    parser.add_argument("--host", help="interface to bind (overrides server.host)")
    parser.add_argument("--port", type=int, help="port (overrides server.port)")
    parser.add_argument("--workers", type=int, help="uvicorn worker processes (overrides server.workers)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR (overrides logging.level)")
    commands = parser.add_subparsers(dest="command")
    init = commands.add_parser("init", help="write a fresh config.toml with a newly generated API key")
    init.add_argument(
        "path", nargs="?", default="config.toml", help="where to write it (default ./config.toml)"
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.add_argument(
        "--model",
        help="also pull this model (owner/repo:QUANT, owner/repo/file.gguf, owner/repo) and make it the "
        "default text model; with an existing config, only that",
    )
    init.add_argument("--binding", help="binding instance for --model (default: the default text binding)")
    add_model_commands(commands)
    add_chat_command(commands)
    commands.add_parser(
        "cluster-stop",
        help='stop the Ray actors of this config\'s pools (cluster.mode = "ray"), e.g. after changing '
        "their bindings; the next request starts them again",
    )
    return parser


def apply_overrides(config: AppConfig, args: argparse.Namespace) -> None:
    if args.host:
        config.server.host = args.host
    if args.port:
        config.server.port = args.port
    if args.workers:
        config.server.workers = args.workers
    if args.log_level:
        config.logging.level = args.log_level.upper()


KEEP_ALIVE_SECONDS = 30
"""How long an idle keep-alive connection stays open. Longer than the clients' own expiry (httpx,
so the ``openai`` and ``anthropic`` SDKs: 5 s; aiohttp: 15 s), so a client never sends a request on a
connection the server is closing at that moment (uvicorn's default, 5 s, equals httpx's: the
10-minute soak met that race once, a request reset before it reached the app)."""


def serve(config: AppConfig) -> None:
    import uvicorn

    from lollms_server.core.log_secrets import configured_secrets
    from lollms_server.main import CONFIG_ENV, create_app
    from lollms_server.utils.logs import configure_logging

    configure_logging(config.logging.level, config.logging.file, configured_secrets(config))
    common: dict[str, Any] = {
        "host": config.server.host,
        "port": config.server.port,
        "log_level": config.logging.level.lower(),
        "timeout_graceful_shutdown": int(config.server.shutdown_grace_seconds),
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
    }
    if config.server.workers > 1 and config.cluster.mode == "local":
        os.environ["LOLLMS_SERVER_OWNER_PID"] = str(os.getpid())  # pool workers live as long as this process
        logging.getLogger(__name__).warning(
            '%d workers: pools with isolation = "inprocess" exist once per worker process '
            '(use isolation = "process" to share a pool and its models)',
            config.server.workers,
        )
    if (
        config.server.workers > 1
        and config.cluster.mode == "ray"
        and not (config.cluster.address or os.environ.get("RAY_ADDRESS"))
    ):
        raise ConfigError(
            "cluster.address: several server processes must join one running Ray cluster "
            "(start it with `ray start --head` and set its address)"
        )
    if config.server.workers > 1:
        assert config.config_path is not None
        os.environ[CONFIG_ENV] = str(config.config_path)
        # the workers read the file again: they must know they are several (shared quotas)
        os.environ["LOLLMS_SERVER__SERVER__WORKERS"] = str(config.server.workers)
        uvicorn.run(
            "lollms_server.main:app_from_environment", factory=True, workers=config.server.workers, **common
        )
    else:
        uvicorn.run(create_app(config), **common)


def pull_command(config: AppConfig, args: argparse.Namespace) -> int:
    """``pull REF``; ``pull`` alone: the default text model (``scripts/run.sh``)."""
    return run_pull_default(config, args) if args.ref is None else run_pull(config, args)


MODEL_COMMANDS = {"pull": pull_command, "models": run_models, "rm": run_rm, "chat": run_chat}


def init_model(path: Path, args: argparse.Namespace) -> int:
    """``init --model``: pull the model, then make it the default text model of the config."""
    from lollms_server.cli_models import pull_or_exit_code, set_default_text_model

    config = load_config(path)
    instance = args.binding or config.defaults.ttt_binding
    names = pull_or_exit_code(config, instance, args.model, "init")
    if isinstance(names, int):
        return names
    if instance is not None and instance == config.defaults.ttt_binding:
        set_default_text_model(path, names[0])
        load_config(path)  # still valid
        sys.stdout.write(f"Pulled {names[0]}; it is now the default text model (defaults.ttt_model).\n")
    else:
        sys.stdout.write(f"Pulled {names[0]} into '{instance}'; name it as model_name to use it.\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "init":
            path = Path(args.path).expanduser().resolve()
            if not (args.model and path.exists() and not args.force):
                key = write_initial_config(path, force=args.force)
                sys.stdout.write(
                    f"Wrote {path}\n"
                    f"Your API key (shown only now; the file keeps only its hash):\n\n    {key}\n\n"
                    "Send it as 'X-API-Key: <key>' or 'Authorization: Bearer <key>'.\n"
                    + (
                        ""
                        if args.model
                        else "Without a text model, the server pulls a default one when it starts "
                        "([models] pull_default_on_start).\n"
                    )
                )
            return init_model(path, args) if args.model else 0
        config = load_config(find_config(args.config))
        apply_overrides(config, args)
        if args.command in MODEL_COMMANDS:
            return MODEL_COMMANDS[args.command](config, args)
        if args.command == "cluster-stop":
            from lollms_server.core.pools.ray_cluster import stop_actors

            if config.cluster.mode != "ray":
                raise ConfigError('cluster-stop: this configuration has cluster.mode = "local"')
            stopped = stop_actors(config)
            sys.stdout.write(f"Stopped the actors of pools: {', '.join(stopped) or 'none was running'}\n")
            return 0
        from lollms_server.core.bindings import BindingManager
        from lollms_server.core.security import KeyStore

        # refuse a bad configuration before uvicorn starts: keys, and every binding instance
        # against its card (reading the cards imports no binding code)
        KeyStore.from_config(config)
        try:
            BindingManager(config)
        except ConfigError as exc:
            raise ConfigError(f"{config.config_path}: {exc.message}") from None
        serve(config)
        return 0
    except ConfigError as exc:
        sys.stderr.write(f"lollms-server: {exc.message}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
