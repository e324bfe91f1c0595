"""The pool-host seam: where a pool's queue, models and bindings live.

A pool runs in this process (:class:`~lollms_server.core.pools.local.LocalPoolHost`), in a
worker process (``isolation = "process"``) or in a Ray actor (``[cluster] mode = "ray"``).
The orchestrator sees only this protocol: :meth:`PoolHost.admit` waits for a slot of the pool
(FIFO, 503 + ``Retry-After`` when full or too slow) and makes the model resident; the
:class:`PoolSession` it returns holds both until :meth:`PoolSession.aclose`. A remote host
admits on the remote side and returns only once the remote side says "admitted", so every
host answers a full queue with a plain HTTP 503 before a stream starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol

from lollms_server.core.bindings import Binding
from lollms_server.core.resource_manager import Ticket

HostKind = Literal["inprocess", "process", "ray"]


class PoolSession(Protocol):
    """An admitted call: a slot of the pool is held and the model is resident until aclose()."""

    binding: Binding
    """The binding (in process) or a stand-in whose calls run on the remote side's slot."""
    queue_wait: float
    load_seconds: float
    host_timings: dict[str, float] | None
    """What the remote side measured (queue wait, load, wall-clock slot grant); None in process."""

    async def aclose(self) -> None:
        """Give back the model and the slot (idempotent)."""


class PoolHost(Protocol):
    pool: str
    kind: HostKind

    async def start(self) -> None:
        """Prepare what the host needs before the first request (join a cluster...)."""

    async def admit(
        self,
        instance: str,
        model: str,
        ticket: Ticket = Ticket(),
        on_position: Callable[[int, float], None] | None = None,
    ) -> PoolSession:
        """Wait for a slot (the pool's policy orders ``ticket`` among the waiters; ``on_position``
        hears the place in the queue and an ETA) and load ``model`` of ``instance``; 503 when the
        pool is busy."""

    async def binding(self, instance: str) -> Binding:
        """The instance's binding for listings (no slot held, no model loaded)."""

    async def model_info(self, instance: str, model: str | None) -> dict[str, Any]:
        """What the binding tells about ``model``, with its residency in the pool."""

    def snapshot(self) -> dict[str, Any]:
        """The pool's queue, slots and models as last known (see ``ResourceManager.snapshot``)."""

    async def refresh(self) -> dict[str, Any] | None:
        """Ask a remote host for its state now (``None``: not running or not answering);
        an in-process host has nothing to ask and returns ``None``."""

    async def close(self) -> None:
        """Release what the host holds at shutdown."""
