"""Commands and runtime settings of binding instances (the admin routes' service).

Commands: only the names the card declares, parameters checked against the declaration, run by
the binding (in a thread for blocking code). Settings: read with secrets masked; a change is
validated against the card's schema and applied once the running generations of that instance
have finished (new ones wait meanwhile, see ``gates``); ``persist`` also writes it to the config
file, keeping its comments (``tomlkit``): checked first to read back through the server's own
loader to the same settings, written under a lock through a fresh temp file (the file's mode
kept), and applied in memory only once written.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from lollms_server.core.bindings import BindingManager
from lollms_server.core.bindings.cards import validate_settings
from lollms_server.core.bindings.commands import card_commands, checked_arguments, declared_command
from lollms_server.core.bindings.manager import SECRET_MASK, BindingInstance
from lollms_server.core.config import AppConfig
from lollms_server.core.errors import BadRequestError, ConfigError, ConflictError
from lollms_server.core.generation.gates import ChangeWaitTimeout, InstanceGates
from lollms_server.core.pools import PoolRegistry

logger = logging.getLogger(__name__)


class BindingAdmin:
    """Runs declared commands and changes settings of the configured instances."""

    change_wait_seconds = 10.0
    """How long a settings change waits for the instance's running generations (then 409 and
    nothing changed). Requests for the instance wait meanwhile, holding no pool slot, so this
    also bounds how long a change can hold the instance's users back: short, like a queue wait,
    not a long generation's length (a change meeting one is refused, not waited for)."""

    def __init__(
        self, config: AppConfig, bindings: BindingManager, pools: PoolRegistry, gates: InstanceGates
    ) -> None:
        self.config = config
        self.bindings = bindings
        self.pools = pools
        self.gates = gates

    # ---- commands -----------------------------------------------------------
    def commands(self, name: str) -> list[dict[str, Any]]:
        return card_commands(self.bindings.instance(name).card)

    async def run_command(self, name: str, command: str, arguments: dict[str, Any]) -> Any:
        """The result of a declared command (404 undeclared, 400 bad parameters)."""
        instance = self.bindings.instance(name)
        declaration = declared_command(instance.card, command)
        checked = checked_arguments(declaration, arguments)
        binding = await self._local_binding(instance, "Commands")
        logger.info("Running command %s of binding %s", command, name)
        return await binding.run_command(command, checked, lambda step, total: None)

    async def _local_binding(self, instance: BindingInstance, what: str) -> Any:
        host = self.pools.host(instance)
        if host.kind != "inprocess":
            raise ConflictError(
                f"{what} of '{instance.name}' need its pool to run in this process "
                f"(pool '{instance.pool}' runs as {host.kind})."
            )
        return await host.binding(instance.name)

    # ---- settings -----------------------------------------------------------
    def settings(self, name: str) -> dict[str, Any]:
        """The instance's settings (secrets masked) and the schema they follow."""
        instance = self.bindings.instance(name)
        public = instance.public()
        return {
            "name": instance.name,
            "type": instance.card.type_name,
            "settings": public["settings"],
            "schema": {
                key: spec.model_dump(mode="json") for key, spec in instance.card.instance_schema.items()
            },
        }

    async def update_settings(self, name: str, changes: dict[str, Any], persist: bool) -> dict[str, Any]:
        """Validate ``changes`` over the current settings and, with ``persist``, that the config
        file with them is written and read back to the same settings by the server's own loader
        (else 400, nothing applied); then, between generations of the instance, write the file
        (with ``persist``) and only after that apply them in memory."""
        instance = self.bindings.instance(name)
        schema = instance.card.instance_schema
        changes = {
            key: value
            for key, value in changes.items()
            if not (key in schema and schema[key].secret and value == SECRET_MASK)  # kept as is
        }
        merged = self._merged(instance, changes)
        path = self._config_file() if persist else None
        host = self.pools.host(instance)
        if host.kind != "inprocess" and not persist:
            raise ConflictError(
                f"'{name}' runs in a {host.kind} pool: its settings change at restart "
                "(send persist=true to write them to the config file)."
            )
        if path is not None:  # fail fast, before waiting for the instance's generations
            await asyncio.to_thread(check_persistable, path, instance, changes, merged)
        if host.kind == "inprocess":
            try:
                async with self.gates.of(name).changing(self.change_wait_seconds):
                    await self._write_and_apply(instance, changes, path)
            except ChangeWaitTimeout:
                raise ConflictError(
                    f"'{name}' kept running generations for {self.change_wait_seconds:g} s: nothing "
                    "was changed; send the change again later."
                ) from None
        elif path is not None:
            merged = self._merged(instance, changes)
            await asyncio.to_thread(write_instance_settings, path, instance, changes, merged)
        logger.info("Settings of binding %s changed: %s", name, ", ".join(sorted(changes)) or "none")
        return self.settings(name)

    async def _write_and_apply(
        self, instance: BindingInstance, changes: dict[str, Any], path: Path | None
    ) -> None:
        """Holding the instance's gate: write the file (with ``path``), then apply in memory."""
        merged = self._merged(instance, changes)  # over what a change before this one left
        if path is not None:
            await asyncio.to_thread(write_instance_settings, path, instance, changes, merged)
        if instance.binding is not None:
            await instance.binding.apply_settings(merged)
        instance.settings = merged

    @staticmethod
    def _merged(instance: BindingInstance, changes: dict[str, Any]) -> dict[str, Any]:
        try:
            return validate_settings(instance.name, instance.card, {**instance.settings, **changes})
        except ConfigError as exc:
            raise BadRequestError(exc.message, param="settings") from None

    def _config_file(self) -> Path:
        path = self.config.config_path
        if path is None or not Path(path).is_file():
            raise ConflictError("This server was not started from a config file: nothing to persist to.")
        return Path(path)


_WRITE_LOCK = threading.Lock()
"""Serializes the writers of this process (``_file_lock`` those of the other processes)."""


def rendered_settings(text: str, instance: str, changes: dict[str, Any]) -> str:
    """The config text with ``changes`` in ``[bindings.<instance>]`` (tomlkit: comments and layout
    kept; a None removes the key); 400 for a value TOML cannot hold."""
    try:
        import tomlkit
    except ImportError:
        raise ConflictError("Persisting settings needs tomlkit (pip install tomlkit).") from None
    try:
        document = tomlkit.parse(text)
        bindings = document.setdefault("bindings", tomlkit.table())
        table = bindings.setdefault(instance, tomlkit.table())
        for key, value in changes.items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
        return tomlkit.dumps(document)
    except (tomlkit.exceptions.TOMLKitError, TypeError, ValueError) as exc:
        # e.g. a null inside a list or table: TOML has no null
        raise BadRequestError(
            f"These settings cannot be written to the config file ({type(exc).__name__}: TOML has no "
            "null and only string keys).",
            param="settings",
        ) from None


def check_read_back(
    text: str, path: Path, instance: BindingInstance, changes: dict[str, Any], merged: dict[str, Any]
) -> None:
    """400 unless the server's own loader reads ``text`` as a valid config in which the instance's
    changed settings are what ``merged`` applies (so the next start keeps them)."""
    from lollms_server.core.config import config_from_dict, parse_toml

    try:
        # as the next start reads it (this process's LOLLMS_SERVER__* overrides included)
        config = config_from_dict(parse_toml(text, str(path)), source=str(path), base=path.parent)
        read = validate_settings(instance.name, instance.card, config.bindings[instance.name].settings())
    except (ConfigError, KeyError) as exc:
        raise BadRequestError(
            f"With these settings the config file would not load: {getattr(exc, 'message', exc)}",
            param="settings",
        ) from None
    differ = sorted(key for key in changes if read.get(key) != merged.get(key))
    if differ:
        raise BadRequestError(
            f"These settings do not survive the config file (read back differently: {', '.join(differ)}; "
            "a null cannot be stored, send the value to keep instead).",
            param="settings",
        )


def check_persistable(
    path: Path, instance: BindingInstance, changes: dict[str, Any], merged: dict[str, Any]
) -> None:
    """Blocking: 400 unless the file with ``changes`` would load back to ``merged``; writes nothing."""
    check_read_back(rendered_settings(_read(path), instance.name, changes), path, instance, changes, merged)


def write_instance_settings(
    path: Path, instance: BindingInstance, changes: dict[str, Any], merged: dict[str, Any]
) -> None:
    """Blocking: under a lock (threads and processes), render ``changes`` into the current file,
    check it reads back to ``merged`` (400, nothing written), then replace the file atomically
    through a new temp file of the same folder (``O_EXCL|O_NOFOLLOW``: a planted name or link is
    never followed), with the file's mode (and owner, when root), fsynced."""
    with _WRITE_LOCK, _file_lock(path):
        text = rendered_settings(_read(path), instance.name, changes)
        check_read_back(text, path, instance, changes, merged)
        replace_file(path, text.encode("utf-8"))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConflictError(f"Cannot read the config file ({exc.strerror}).") from None


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the config file itself (no lock file to plant), taken again
    when another process replaced the file while this one waited."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: the thread lock only
        yield
        return
    while True:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            held = os.fstat(descriptor)
            if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                yield
                return
        finally:
            os.close(descriptor)


def replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: a unique temp file created with
    ``O_CREAT|O_EXCL|O_NOFOLLOW`` next to it, the original's mode (owner too, as root), fsync,
    ``os.replace``; the temp file is removed on any failure."""
    original = os.stat(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(16):
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            descriptor = os.open(temporary, flags, 0o600)
            break
        except FileExistsError:  # taken (or planted): another name
            continue
    else:
        raise ConflictError("Cannot create a temporary file next to the config file.")
    try:
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(descriptor, stat.S_IMODE(original.st_mode))
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                os.fchown(descriptor, original.st_uid, original.st_gid)
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        raise
    with suppress(OSError):  # the rename itself survives a crash
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
