"""``lollms-server pull | models | rm`` and ``init --model``: models on disk from the command line,
through the same :class:`~lollms_server.core.models.PullManager` the server uses (a pull the
server is running at the same moment is refused: one process writes a ``.part`` at a time)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any, TextIO

from lollms_server.core.bindings import BindingManager
from lollms_server.core.config import AppConfig
from lollms_server.core.errors import ConfigError, LollmsError
from lollms_server.core.models.config_file import set_default_text_model

__all__ = ["add_model_commands", "run_models", "run_pull", "run_rm", "set_default_text_model"]


def add_model_commands(commands: Any) -> None:
    """The subcommands, on the parser's subparsers."""
    pull = commands.add_parser("pull", help="download a model from the hub into a binding's models folder")
    pull.add_argument(
        "ref",
        nargs="?",
        help="owner/repo/file.gguf, owner/repo:QUANT (e.g. :Q4_K_M) or owner/repo; omitted: the default "
        "text model when the default text binding has none ([models] default_model), set as "
        "defaults.ttt_model",
    )
    _common(pull)
    models = commands.add_parser("models", help="list the installed models of every binding, with sizes")
    _common(models)
    remove = commands.add_parser("rm", help="delete an installed model (its file or folder)")
    remove.add_argument("model", help="the model's name as `lollms-server models` lists it")
    _common(remove)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--binding", help="binding instance (default: the default text binding)")
    parser.add_argument("--config", default=argparse.SUPPRESS, help="config.toml to use")


def pick_instance(config: AppConfig, bindings: BindingManager, name: str | None) -> str:
    """``--binding``, else the default text binding, else the only binding that keeps files."""
    from lollms_server.core.models import model_files_of

    if name:
        return bindings.instance(name).name
    if config.defaults.ttt_binding:
        return config.defaults.ttt_binding
    with_files = []
    for instance in bindings.instances.values():
        try:
            model_files_of(instance)
            with_files.append(instance.name)
        except LollmsError:
            continue
    if len(with_files) == 1:
        return with_files[0]
    raise ConfigError("name the binding instance with --binding")


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


class ProgressBars:
    """One line per file on ``stream``: bar, bytes, speed and time left (redrawn in place on a
    terminal, one line per finished file otherwise)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.started: dict[str, tuple[float, int]] = {}
        self.done: set[str] = set()

    def update(self, file: str, completed: int, total: int) -> None:
        now = time.monotonic()
        first_seen, first_bytes = self.started.setdefault(file, (now, completed))
        finished = completed >= total
        if not self.tty and not finished:
            return
        if file in self.done:
            return
        elapsed = max(now - first_seen, 1e-6)
        speed = (completed - first_bytes) / elapsed
        left = (total - completed) / speed if speed > 0 else 0.0
        width = 24
        filled = int(width * completed / total) if total else width
        bar = "#" * filled + "-" * (width - filled)
        name = file if len(file) <= 40 else "..." + file[-37:]
        line = (
            f"{name:<40} [{bar}] {_human(completed)}/{_human(total)} "
            f"{_human(speed)}/s ETA {int(left // 60):d}:{int(left % 60):02d}"
        )
        self.stream.write(("\r" + line + " " * 4) if self.tty else line)
        if finished:
            self.done.add(file)
            self.stream.write("\n")
        self.stream.flush()


async def pull_model(config: AppConfig, instance: str | None, ref: str, stream: TextIO) -> list[str]:
    """Pull ``ref`` with progress bars on ``stream``; returns the installed model names."""
    from lollms_server.core.models import PullManager

    bindings = BindingManager(config)
    name = pick_instance(config, bindings, instance)
    pulls = PullManager(config, bindings)
    try:
        pull = await pulls.start(name, ref)
        bars = ProgressBars(stream)
        async for progress in pull.events():
            bars.update(progress["file"], progress["completed"], progress["total"])
        return pull.result
    finally:
        await pulls.close()


def pull_or_exit_code(config: AppConfig, instance: str | None, ref: str, command: str) -> list[str] | int:
    """Pull ``ref`` with progress bars: the installed model names, or the exit code of a failure
    (its message written, or the hint that the same command resumes an interrupted pull)."""
    try:
        return asyncio.run(pull_model(config, instance, ref, sys.stderr))
    except KeyboardInterrupt:
        sys.stderr.write("\nInterrupted; run the same command again to resume the download.\n")
        return 130
    except LollmsError as exc:
        sys.stderr.write(f"lollms-server {command}: {exc.message}\n")
        return 1


def run_pull(config: AppConfig, args: argparse.Namespace) -> int:
    names = pull_or_exit_code(config, args.binding, args.ref, "pull")
    if isinstance(names, int):
        return names
    for name in names:
        sys.stdout.write(f"{name}\n")
    return 0


def run_models(config: AppConfig, args: argparse.Namespace) -> int:
    from lollms_server.core.models import installed_models
    from lollms_server.core.models.hints import missing_default_model

    bindings = BindingManager(config)
    names = [bindings.instance(args.binding).name] if args.binding else list(bindings.instances)
    for name in names:
        instance = bindings.instances[name]
        try:
            found = installed_models(instance)
        except LollmsError:
            continue  # a remote binding: no files
        sys.stdout.write(f"{name} ({instance.card.type_name}, {instance.models_folder}):\n")
        for model in found:
            sys.stdout.write(f"  {model['name']:<60} {_human(model['size']):>10}\n")
        if not found:
            sys.stdout.write("  (none)\n")
    hint = missing_default_model(config, bindings)
    if hint is not None:
        sys.stdout.write(f"\n{hint}\n")
    return 0


def run_rm(config: AppConfig, args: argparse.Namespace) -> int:
    from lollms_server.core.models import PullManager

    bindings = BindingManager(config)
    try:
        name = pick_instance(config, bindings, args.binding)
        asyncio.run(PullManager(config, bindings).delete_model(name, args.model))
    except LollmsError as exc:
        sys.stderr.write(f"lollms-server rm: {exc.message}\n")
        return 1
    sys.stdout.write(f"Deleted {args.model} from {name}\n")
    return 0
