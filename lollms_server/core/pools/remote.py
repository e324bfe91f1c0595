"""The gateway side of a pool hosted elsewhere, shared by the worker-process and Ray hosts:
the stand-in binding base, the session over a remote lease, and the remote-host policy
(when silence means hung, what a stream that ends early means)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from lollms_server.core.bindings import (
    Binding,
    BindingContext,
    BindingError,
    CancelToken,
    MediaOutput,
    MediaRequest,
    Progress,
)
from lollms_server.core.config import AppConfig

PING_SECONDS = 1.0
"""How often a host says "still waiting" while a request queues or its model loads."""
HANG_MARGIN_SECONDS = 2.0
"""Past the generation timeout: a host silent that long (no ping, no item) is hung."""
HUNG_SILENCE_SHARE = 0.9
"""Of the generation timeout: a host silent that long when the gateway's timeout ends is hung,
not slow (the remote side bounds every call by the same timeout and would have answered 504)."""


def silent_too_long(last_heard: float, generation_timeout: float) -> bool:
    """Whether a remote call unheard from since ``last_heard`` (monotonic) counts as hung."""
    return time.monotonic() - last_heard >= HUNG_SILENCE_SHARE * generation_timeout


def ended_early(pool: str, host: str) -> BindingError:
    return BindingError(f"The {host} of pool '{pool}' ended the stream early.")


class ForwardingBinding(Binding):
    """Base of the stand-ins for instances whose pool runs elsewhere (a worker process, a Ray
    actor). Made for one remote lease (``lease`` set: generation calls run on its slot) or for
    listings only (``lease`` None). Every media generation type goes to :meth:`forward_media`."""

    def __init__(self, context: BindingContext, lease: str | None = None, native_tools: bool = False) -> None:
        super().__init__(context)
        self.lease = lease
        self.native_tools = native_tools

    def lease_id(self) -> str:
        if self.lease is None:
            raise BindingError("A generation call needs an admitted pool session.")
        return self.lease

    def supports_native_tools(self, model_name: str) -> bool:
        return self.native_tools

    async def load_model(self, model_name: str) -> None:
        """The remote side loads models at admission."""

    async def forward_media(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        raise NotImplementedError

    async def generate_image(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        return await self.forward_media(model_name, request, cancel, progress)

    async def edit_image(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        return await self.forward_media(model_name, request, cancel, progress)

    async def generate_video(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        return await self.forward_media(model_name, request, cancel, progress)

    async def generate_music(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        return await self.forward_media(model_name, request, cancel, progress)

    async def synthesize_speech(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        return await self.forward_media(model_name, request, cancel, progress)

    async def transcribe(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        return await self.forward_media(model_name, request, cancel, progress)


class RemoteSession:
    """A slot held on the remote side (a lease) with a stand-in binding that calls on it."""

    def __init__(
        self,
        binding: ForwardingBinding,
        admitted: dict[str, Any],
        release: Callable[[], Awaitable[None]],
    ) -> None:
        self.binding = binding
        self.queue_wait = float(admitted.get("queue_wait", 0.0))
        self.load_seconds = float(admitted.get("load", 0.0))
        self.host_timings: dict[str, float] | None = {
            key: float(admitted[key]) for key in ("queue_wait", "load", "slot_granted_at") if key in admitted
        }
        self._release: Callable[[], Awaitable[None]] | None = release

    async def aclose(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            await release()


def remote_snapshot(config: AppConfig, pool: str, kind: str, status: dict[str, Any] | None) -> dict[str, Any]:
    """A remote pool's entry of the status snapshot: what its host last reported, or the
    configured shape with ``host_up`` false."""
    pool_config = config.resource_manager.pools[pool]
    entry: dict[str, Any] = {
        "name": pool,
        "isolation": kind,
        "limit": pool_config.limit,
        "active": 0,
        "queued": 0,
        "queue_size": pool_config.queue_size,
        "served": 0,
        "rejected": 0,
        "timed_out": 0,
        "average_wait_seconds": 0.0,
        "max_wait_seconds": 0.0,
        "memory_budget_mb": pool_config.memory_budget_mb,
        "memory_used_mb": 0.0,
        "models": [],
        "waiting": [],
        "keys": {},
    }
    remote = next((item for item in (status or {}).get("pools", []) if item.get("name") == pool), None)
    if remote is not None:
        entry.update({key: value for key, value in remote.items() if key in entry})
    entry["isolation"] = kind
    entry["host_up"] = remote is not None
    return entry
