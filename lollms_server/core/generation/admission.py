"""Admission records: what an admitted request holds (a pool session: slot + resident model),
its job (text or media) and its timings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lollms_server.core.bindings import (
    MEDIA_METHODS,
    Binding,
    CancelToken,
    MediaOutput,
    MediaRequest,
    Progress,
    TextRequest,
)
from lollms_server.core.config import ProvenanceConfig
from lollms_server.core.functions import FunctionSpec
from lollms_server.core.generation.routing import Target
from lollms_server.core.personalities import Personality
from lollms_server.core.pools import PoolSession


@dataclass
class Timings:
    started: float = field(default_factory=time.monotonic)
    queue_wait: float = 0.0
    load: float = 0.0
    compute: float = 0.0
    slot_granted_at: float = 0.0
    compute_finished_at: float = 0.0

    def admitted(self, session: PoolSession) -> None:
        self.queue_wait = session.queue_wait
        self.load = session.load_seconds
        self.slot_granted_at = (session.host_timings or {}).get("slot_granted_at") or time.time()

    def finished(self, compute_started: float) -> None:
        self.compute = time.monotonic() - compute_started
        self.compute_finished_at = time.time()

    def public(self) -> dict[str, float]:
        """Seconds spent waiting, loading and computing; wall-clock times of slot grant and end."""
        return {
            "queue_wait": round(self.queue_wait, 6),
            "load": round(self.load, 6),
            "compute": round(self.compute, 6),
            "total": round(time.monotonic() - self.started, 6),
            "slot_granted_at": round(self.slot_granted_at, 6),
            "compute_finished_at": round(self.compute_finished_at, 6),
        }


@dataclass
class TextJob:
    request: TextRequest
    tools: list[FunctionSpec] = field(default_factory=list)


@dataclass
class MediaJob:
    request: MediaRequest


Job = TextJob | MediaJob


@dataclass
class Admission:
    """An admitted request: its pool session holds a slot and keeps the model resident until
    :meth:`release`."""

    target: Target
    job: Job
    parameters: dict[str, Any]
    timings: Timings
    session: PoolSession
    personality: Personality | None = None
    principal_name: str = ""
    on_tokens: Callable[[int], None] = lambda tokens: None
    """Counts generated tokens against the key's tokens_per_minute."""
    on_release: Callable[[], None] = lambda: None
    """Ends the key's running count (its max_concurrent)."""
    provenance: ProvenanceConfig = field(default_factory=ProvenanceConfig)
    """What every image output carries (``[provenance]``)."""

    @property
    def binding(self) -> Binding:
        return self.session.binding

    async def run_media(
        self, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        """Call the binding method of this media generation type (holding the request's working
        memory on the model's device when the pool runs in this process)."""
        method = getattr(self.binding, MEDIA_METHODS[self.target.generation_type])
        working_memory = getattr(self.session, "working_memory", None)  # in-process pools
        if working_memory is None:
            outputs: list[MediaOutput] = await method(self.target.model, request, cancel, progress)
            return outputs
        async with working_memory(request):  # reserved on the model's device for the job
            outputs = await method(self.target.model, request, cancel, progress)
        return outputs

    async def release(self) -> None:
        """Give back the model and the slot (idempotent)."""
        try:
            await self.session.aclose()
        finally:
            self.on_release()

    def info(self, request_id: str) -> dict[str, Any]:
        """The metadata of a stream's first event."""
        return {
            "request_id": request_id,
            "binding": self.target.name,
            "model": self.target.model,
            "queue_wait": round(self.timings.queue_wait, 6),
            "load": round(self.timings.load, 6),
        }


class AdmittedStream:
    """A stream holding its admission (slot and model) until its events end or ``aclose()``;
    its ``deadline`` (loop time, ``timeout`` after admission) bounds the slot's life."""

    def __init__(self, admission: Admission, request_id: str, *, timeout: float, metrics: Any = None) -> None:
        self.admission = admission
        self.request_id = request_id
        self.timeout = timeout
        self.metrics = metrics
        self.cancel = CancelToken()
        self.deadline = asyncio.get_running_loop().time() + timeout

    async def aclose(self) -> None:
        """Stop the generation and give back the model and the slot (idempotent)."""
        self.cancel.set()
        await self.admission.release()
