"""The first run from the command line (``scripts/run.sh``): ``lollms-server pull`` with no
reference gets the default text model in the foreground, with progress bars, as the server's
start would in the background; ``lollms-server chat`` waits for the running server and sends it
one chat (the proof that the install works), or says exactly what to do instead."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from lollms_server.core.bindings import BindingManager
from lollms_server.core.config import AppConfig
from lollms_server.core.errors import LollmsError
from lollms_server.core.models.config_file import set_default_text_model

KEY_ENV = "LOLLMS_API_KEY"


def run_pull_default(config: AppConfig, args: argparse.Namespace) -> int:
    """The default text instance's model: 0 when it is there (an installed file adopted as
    ``defaults.ttt_model``) or was pulled (``[models] default_model``, else
    ``$LOLLMS_DEFAULT_MODEL``, else Qwen2.5 0.5B Instruct Q4_K_M); 1 with what to do otherwise."""
    from lollms_server.cli_models import pull_or_exit_code
    from lollms_server.core.models import installed_models, model_files_of
    from lollms_server.core.models.hints import default_ref, missing_default_model
    from lollms_server.core.models.hub import hub_offline

    bindings = BindingManager(config)
    name = args.binding or config.defaults.ttt_binding
    if not name or name not in bindings.instances:
        sys.stderr.write("lollms-server pull: name a model reference (no default text binding is set)\n")
        return 2
    instance = bindings.instances[name]
    try:
        kind = model_files_of(instance)
    except LollmsError as exc:
        sys.stderr.write(f"lollms-server pull: {exc.message}\n")
        return 2
    configured = config.defaults.ttt_model or instance.config.model_name
    hint = missing_default_model(config, bindings)
    if configured is not None:
        if hint is None:
            sys.stdout.write(f"The default text model {configured} is installed.\n")
            return 0
        sys.stderr.write(f"{hint}\n")
        return 1
    path = config.config_path
    found = installed_models(instance)
    if found:
        model = found[0]["name"]
    else:
        ref = default_ref(config, kind)
        if hub_offline():
            sys.stderr.write(f"The hub is offline (HF_HUB_OFFLINE is set): {ref} is not pulled.\n{hint}\n")
            return 1
        sys.stderr.write(f"Pulling the default text model {ref} into {instance.models_folder}\n")
        names = pull_or_exit_code(config, name, ref, "pull")
        if isinstance(names, int):
            sys.stderr.write(f"{hint}\n")
            return names
        model = names[0]
    if path is not None and name == config.defaults.ttt_binding:
        set_default_text_model(path, model)
        sys.stdout.write(f"{model} is now the default text model (defaults.ttt_model in {path}).\n")
    else:
        sys.stdout.write(f"{model}\n")
    return 0


def add_chat_command(commands: Any) -> None:
    chat = commands.add_parser(
        "chat",
        help="wait for the running server (this config's host and port), send it one chat, print the answer",
    )
    chat.add_argument("message", nargs="?", default="Hello! Who are you, in one sentence?")
    chat.add_argument("--key", help=f"API key (default: ${KEY_ENV})")
    chat.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the server to answer")
    chat.add_argument("--max-tokens", type=int, default=128)
    chat.add_argument("--config", default=argparse.SUPPRESS, help="config.toml to use")


def server_url(config: AppConfig) -> str:
    host = config.server.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - reaching a server that listens everywhere
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.server.port}"


def run_chat(config: AppConfig, args: argparse.Namespace) -> int:
    """0 and the answer on stdout; 1 and the server's words (what to do) on stderr."""
    import httpx

    url = server_url(config)
    key = args.key or os.environ.get(KEY_ENV)
    example = (
        f"curl {url}/v1/chat/completions -H 'Authorization: Bearer <your key>' "
        '-H \'Content-Type: application/json\' -d \'{"messages": [{"role": "user", "content": "Hello"}]}\''
    )
    if not key:
        sys.stdout.write(f"Chat with the server at {url} with your API key, e.g.:\n  {example}\n")
        return 0
    deadline = time.monotonic() + args.wait
    body = {"messages": [{"role": "user", "content": args.message}], "max_tokens": args.max_tokens}
    headers = {"Authorization": f"Bearer {key}"}
    while True:
        try:
            response = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=600)
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                sys.stderr.write(f"lollms-server chat: no server answers at {url}\n")
                return 1
            time.sleep(0.5)
            continue
        if response.status_code == 200:
            answer = response.json()["choices"][0]["message"]["content"]
            sys.stdout.write(
                f"\n> {args.message}\n{answer.strip()}\n\nThe server chats at {url}, e.g.:\n  {example}\n"
            )
            return 0
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        pulling = response.status_code == 503 and ("being pulled" in message or "being downloaded" in message)
        if pulling and time.monotonic() < deadline:
            time.sleep(2)
            continue
        sys.stderr.write(f"lollms-server chat: {response.status_code}: {message}\n")
        return 1
