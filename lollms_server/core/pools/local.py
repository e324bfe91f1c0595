"""A pool in this process: the resource manager's FIFO slots and residency over the binding
manager's instances. Worker processes and Ray actors run exactly this inside."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from lollms_server.core.bindings import Binding, BindingManager, MediaRequest
from lollms_server.core.config import AppConfig
from lollms_server.core.pools.host import HostKind
from lollms_server.core.resource_manager import Lease, ResourceManager, Ticket


class LocalSession:
    """A held slot of an in-process pool with the model resident."""

    def __init__(
        self,
        binding: Binding,
        lease: Lease,
        residency: AsyncExitStack,
        load_seconds: float,
        memory: tuple[ResourceManager, str, str] | None = None,
    ) -> None:
        self.binding = binding
        self._memory = memory  # (resources, pool, model): for working memory
        self.queue_wait = lease.wait_seconds
        self.load_seconds = load_seconds
        self.host_timings: dict[str, float] | None = None
        self._lease = lease
        self._residency = residency

    @asynccontextmanager
    async def working_memory(self, request: MediaRequest) -> AsyncIterator[None]:
        """The working memory of one media generation reserved on the model's device for the
        block (see ``ResourceManager.working_memory``)."""
        if self._memory is None:
            yield
            return
        resources, pool, model = self._memory
        mb = await self.binding.request_memory_mb(model, request)
        async with resources.working_memory(self.binding, pool, model, mb, request_shape(request)):
            yield

    async def aclose(self) -> None:
        try:
            await self._residency.aclose()
        finally:
            self._lease.release()


def request_shape(request: MediaRequest) -> str:
    """What a media request's working memory depends on: its type and size parameters."""
    parameters = request.parameters
    sizes = [
        str(parameters.get(name))
        for name in ("width", "height", "n", "num_images", "num_frames", "duration", "size")
        if parameters.get(name) is not None
    ]
    return ":".join([request.generation_type, *sizes])[:120]


class LocalPoolHost:
    """Admission for one pool of this process."""

    kind: HostKind = "inprocess"

    def __init__(
        self, config: AppConfig, pool: str, bindings: BindingManager, resources: ResourceManager
    ) -> None:
        self.config = config
        self.pool = pool
        self.bindings = bindings
        self.resources = resources

    async def start(self) -> None:
        return None

    async def admit(
        self,
        instance: str,
        model: str,
        ticket: Ticket = Ticket(),
        on_position: Callable[[int, float], None] | None = None,
    ) -> LocalSession:
        binding = await self.bindings.get(instance)
        lease = await self.resources.acquire(self.pool, ticket, on_position)
        residency = AsyncExitStack()
        try:
            # a load that waits for memory busy models hold: "queued" events at place 0
            on_wait = (lambda eta: on_position(0, eta)) if on_position is not None else None
            load_seconds = await residency.enter_async_context(
                self.resources.use_model(binding, self.pool, model, on_wait)
            )
        except BaseException:
            lease.release()
            raise
        return LocalSession(binding, lease, residency, load_seconds, (self.resources, self.pool, model))

    async def binding(self, instance: str) -> Binding:
        return await self.bindings.get(instance)

    async def model_info(self, instance: str, model: str | None) -> dict[str, Any]:
        binding = await self.bindings.get(instance)
        return self.resources.with_residency(await binding.get_model_info(model), instance, model)

    def snapshot(self) -> dict[str, Any]:
        return next(item for item in self.resources.snapshot()["pools"] if item["name"] == self.pool)

    async def refresh(self) -> dict[str, Any] | None:
        return None

    async def close(self) -> None:
        return None
