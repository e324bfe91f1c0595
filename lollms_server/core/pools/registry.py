"""One host per pool, chosen from the config (``config.pool_host``): the only place that
decides where a pool runs. Host kinds are imported lazily, only when a pool uses them, so Ray
stays optional."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from typing import Any

from lollms_server.core.bindings import BindingInstance, BindingManager
from lollms_server.core.config import AppConfig
from lollms_server.core.devices import FOOTPRINTS_FILE, Devices, FootprintStore
from lollms_server.core.pools.host import PoolHost, PoolSession
from lollms_server.core.resource_manager import ResourceManager, Ticket

HOST_KINDS = {
    "inprocess": "lollms_server.core.pools.local:LocalPoolHost",
    "process": "lollms_server.core.pools.process:WorkerProcessHost",
    "ray": "lollms_server.core.pools.ray:RayPoolHost",
}


def host_class(kind: str) -> Any:
    module_name, _, class_name = HOST_KINDS[kind].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


class PoolRegistry:
    """The pools of the app: admission, listings and status, whatever hosts each pool."""

    def __init__(self, config: AppConfig, bindings: BindingManager) -> None:
        self.config = config
        self.bindings = bindings
        kinds = {pool: config.pool_host(pool) for pool in config.resource_manager.pools}
        self.resources = ResourceManager(
            config.resource_manager,
            {pool for pool, kind in kinds.items() if kind == "inprocess"},
            devices=Devices(
                config.devices,
                FootprintStore(config.paths.runtime_folder / FOOTPRINTS_FILE),
                shared_folder=config.paths.runtime_folder,  # the server processes of this host
            ),
        )
        """The pools that run in this process (the others run in their host's own)."""
        self.hosts: dict[str, PoolHost] = {
            pool: host_class(kind)(config, pool, bindings, self.resources) for pool, kind in kinds.items()
        }

    def host(self, instance: BindingInstance) -> PoolHost:
        return self.hosts[instance.pool]

    async def admit(
        self,
        instance: BindingInstance,
        model: str,
        ticket: Ticket = Ticket(),
        on_position: Callable[[int, float], None] | None = None,
    ) -> PoolSession:
        """A slot of the instance's pool with ``model`` resident (the pool's policy orders the
        waiters; 503 when busy)."""
        return await self.host(instance).admit(instance.name, model, ticket, on_position)

    async def start(self) -> None:
        for host in self.hosts.values():
            await host.start()
        self.resources.start()

    async def close(self) -> None:
        await self.resources.stop()
        await self.bindings.close()
        for host in self.hosts.values():
            await host.close()

    async def refresh(self) -> dict[str, dict[str, Any] | None]:
        """Ask the hosts of remote pools for their state now; returns what each reported."""
        remote = [pool for pool, host in self.hosts.items() if host.kind != "inprocess"]
        statuses = await asyncio.gather(*(self.hosts[pool].refresh() for pool in remote))
        return dict(zip(remote, statuses, strict=True))

    def snapshot(self) -> dict[str, Any]:
        """Queue depth, waits, slots and loaded models of every pool (remote ones as their host
        last reported, with ``host_up``), and the memory ledger of each device this process uses."""
        return {
            "pools": [host.snapshot() for host in self.hosts.values()],
            "devices": self.resources.devices.snapshot(),
        }
