"""Commands and runtime settings of binding instances (the admin routes' service).

Commands: only the names the card declares, parameters checked against the declaration, run by
the binding (in a thread for blocking code). Settings: read with secrets masked; a change is
validated against the card's schema and applied once the running generations of that instance
have finished (new ones wait meanwhile, see ``gates``); ``persist`` also writes it to the config
file, keeping its comments (``tomlkit``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lollms_server.core.bindings import BindingManager
from lollms_server.core.bindings.cards import validate_settings
from lollms_server.core.bindings.commands import card_commands, checked_arguments, declared_command
from lollms_server.core.bindings.manager import SECRET_MASK, BindingInstance
from lollms_server.core.config import AppConfig
from lollms_server.core.errors import BadRequestError, ConfigError, ConflictError
from lollms_server.core.generation.gates import InstanceGates
from lollms_server.core.pools import PoolRegistry

logger = logging.getLogger(__name__)


class BindingAdmin:
    """Runs declared commands and changes settings of the configured instances."""

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
        """Validate ``changes`` over the current settings, apply them between generations of the
        instance, and with ``persist`` write them to the config file."""
        instance = self.bindings.instance(name)
        schema = instance.card.instance_schema
        changes = {
            key: value
            for key, value in changes.items()
            if not (key in schema and schema[key].secret and value == SECRET_MASK)  # kept as is
        }
        try:
            merged = validate_settings(name, instance.card, {**instance.settings, **changes})
        except ConfigError as exc:
            raise BadRequestError(exc.message, param="settings") from None
        if persist:
            path = self._config_file()
        host = self.pools.host(instance)
        if host.kind != "inprocess" and not persist:
            raise ConflictError(
                f"'{name}' runs in a {host.kind} pool: its settings change at restart "
                "(send persist=true to write them to the config file)."
            )
        if host.kind == "inprocess":
            async with self.gates.of(name).changing():
                if instance.binding is not None:
                    await instance.binding.apply_settings(merged)
                instance.settings = merged
        if persist:
            await _write_settings(path, name, {key: changes[key] for key in changes})
        logger.info("Settings of binding %s changed: %s", name, ", ".join(sorted(changes)) or "none")
        return self.settings(name)

    def _config_file(self) -> Path:
        path = self.config.config_path
        if path is None or not Path(path).is_file():
            raise ConflictError("This server was not started from a config file: nothing to persist to.")
        return Path(path)


async def _write_settings(path: Path, instance: str, changes: dict[str, Any]) -> None:
    """Write ``changes`` into ``[bindings.<instance>]`` of the TOML file, keeping its comments."""
    import asyncio

    await asyncio.to_thread(write_instance_settings, path, instance, changes)


def write_instance_settings(path: Path, instance: str, changes: dict[str, Any]) -> None:
    """Blocking: update ``[bindings.<instance>]`` in place with tomlkit (comments and layout kept);
    a temporary file then a rename, so a crash leaves the old file whole."""
    try:
        import tomlkit
    except ImportError:
        raise ConflictError("Persisting settings needs tomlkit (pip install tomlkit).") from None
    document = tomlkit.parse(path.read_text(encoding="utf-8"))
    bindings = document.setdefault("bindings", tomlkit.table())
    table = bindings.setdefault(instance, tomlkit.table())
    for key, value in changes.items():
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(tomlkit.dumps(document), encoding="utf-8")
    temporary.replace(path)
