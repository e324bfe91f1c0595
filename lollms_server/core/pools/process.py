"""A pool in a worker process (``isolation = "process"``): the gateway side.

The worker (``python -m lollms_server.worker``) is a lollms_server holding only that pool; it
serves the pool-lease API (``lollms_server/api/pool_rpc.py``) on 127.0.0.1 to a per-start token.
:meth:`WorkerProcessHost.admit` opens a lease: the worker queues the request in the pool's FIFO
and loads the model, and answers "admitted" only then (a full queue is an HTTP 503 before
anything streams). The lease request stays open while the session lives; closing it gives the
slot back. :class:`WorkerBinding` makes the binding calls on the lease.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import asdict
from typing import Any

import httpx

from lollms_server.core.bindings import (
    BindingContext,
    BindingManager,
    CancelToken,
    MediaOutput,
    MediaRequest,
    Progress,
    TextChunk,
    TextRequest,
    TextResult,
)
from lollms_server.core.config import AppConfig
from lollms_server.core.errors import BindingError, GenerationTimeoutError, LollmsError, error_for_status
from lollms_server.core.pools import wire
from lollms_server.core.pools.host import HostKind
from lollms_server.core.pools.process_supervisor import WorkerSupervisor
from lollms_server.core.pools.remote import (
    HANG_MARGIN_SECONDS,
    ForwardingBinding,
    RemoteSession,
    ended_early,
    remote_snapshot,
    silent_too_long,
)
from lollms_server.core.resource_manager import ResourceManager, Ticket

logger = logging.getLogger(__name__)
RPC = "/internal/pool"


def remote_error(response: httpx.Response) -> LollmsError:
    """The worker's error answer as the same error here (status, message, Retry-After)."""
    try:
        message = str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = "The worker failed."
    return error_for_status(response.status_code, message, response.headers.get("retry-after"))


def event_error(event: dict[str, Any]) -> LollmsError:
    """An ``{"error": {status, message, retry_after}}`` event of a worker stream as an error."""
    error = event.get("error") or {}
    message = str(error.get("message", "The worker failed."))
    return error_for_status(int(error.get("status", 500)), message, error.get("retry_after"))


class WorkerProcessHost:
    """Admission, listings and status of one pool whose worker process runs its queue."""

    kind: HostKind = "process"

    def __init__(
        self, config: AppConfig, pool: str, bindings: BindingManager, resources: ResourceManager
    ) -> None:
        self.config = config
        self.pool = pool
        self.bindings = bindings
        self.supervisor = WorkerSupervisor(config, pool, bindings.requirements_of_pool(pool))
        self.generation_timeout = config.resource_manager.generation_timeout
        # a worker silent for longer than its own generation timeout (plus a margin) is hung
        self.hang_seconds = self.generation_timeout + HANG_MARGIN_SECONDS
        self._client: httpx.AsyncClient | None = None
        self._last_status: dict[str, Any] | None = None

    async def start(self) -> None:
        return None

    async def client(self) -> httpx.AsyncClient:
        """A client on the live worker, starting it when needed (connections are reused)."""
        live = self.supervisor.live_endpoint()
        url, token = live if live is not None else await asyncio.to_thread(self.supervisor.endpoint_sync)
        if self._client is None or str(self._client.base_url).rstrip("/") != url:
            if self._client is not None:
                await self._client.aclose()
            self._client = httpx.AsyncClient(
                base_url=url,
                headers={"X-API-Key": token},
                timeout=httpx.Timeout(self.hang_seconds, connect=10.0),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
            )
        return self._client

    def stand_in(self, instance: str, lease: str | None = None, native_tools: bool = False) -> WorkerBinding:
        return WorkerBinding(self.bindings.instance(instance).context(), self, lease, native_tools)

    # ---- admission ------------------------------------------------------------------
    async def admit(
        self,
        instance: str,
        model: str,
        ticket: Ticket = Ticket(),
        on_position: Callable[[int, float], None] | None = None,
    ) -> RemoteSession:
        """Open a lease on the worker; returns once the worker has admitted it."""
        client = await self.client()
        # the worker says where the request waits every second while it queues or the model
        # loads: a long wait is alive; only silence past the hang time means a hung worker
        body = {"instance": instance, "model": model, "ticket": asdict(ticket)}
        request = client.build_request("POST", f"{RPC}/leases", json=body)
        try:
            response = await client.send(request, stream=True)
        except httpx.ReadTimeout:
            raise self.hung() from None
        except httpx.TransportError:
            self.supervisor.forget()
            raise BindingError(f"The worker of pool '{self.pool}' is not answering.") from None
        try:
            if not response.is_success:
                await response.aread()
                raise remote_error(response)
            lines = response.aiter_lines()
            admitted = await _first_event(lines, on_position)
        except httpx.ReadTimeout:
            await response.aclose()
            raise self.hung() from None
        except httpx.TransportError:
            await response.aclose()
            raise self.lost() from None
        except BaseException:
            await response.aclose()
            raise
        if "error" in admitted:
            await response.aclose()
            raise event_error(admitted)

        async def release() -> None:
            # ``lines`` lives as long as the session: a garbage-collected line iterator would
            # close the response, and with it the lease, while the request still runs
            await lines.aclose()  # type: ignore[attr-defined]
            await response.aclose()  # the worker sees the lease's request end: the slot is free

        binding = self.stand_in(instance, str(admitted["lease"]), bool(admitted.get("native_tools")))
        return RemoteSession(binding, admitted, release)

    async def binding(self, instance: str) -> WorkerBinding:
        return self.stand_in(instance)

    async def model_info(self, instance: str, model: str | None) -> dict[str, Any]:
        return await self.stand_in(instance).plain("get_model_info", model)  # type: ignore[no-any-return]

    # ---- status ------------------------------------------------------------------
    async def refresh(self) -> dict[str, Any] | None:
        self._last_status = await self.supervisor.status()
        return self._last_status

    def snapshot(self) -> dict[str, Any]:
        return remote_snapshot(self.config, self.pool, self.kind, self._last_status)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        await asyncio.to_thread(self.supervisor.stop)

    def hung(self) -> GenerationTimeoutError:
        self.supervisor.kill()
        return GenerationTimeoutError(f"The worker of pool '{self.pool}' hung and was restarted.")

    def lost(self) -> BindingError:
        self.supervisor.forget()
        return BindingError(f"The worker of pool '{self.pool}' stopped during the generation.")


async def _first_event(
    lines: AsyncIterator[str], on_position: Callable[[int, float], None] | None
) -> dict[str, Any]:
    """The "admitted" (or error) event of a lease stream; "waiting" events go to ``on_position``."""
    async for line in lines:
        if line.startswith("data: "):
            event: dict[str, Any] = json.loads(line[6:])
            if not event.get("waiting"):
                return event
            if on_position is not None and event.get("position"):
                on_position(int(event["position"]), float(event.get("eta", 0.0)))
    raise BindingError("The worker ended the admission early.")


class WorkerBinding(ForwardingBinding):
    """Stands for an instance whose pool runs in a worker process: its calls run on the lease."""

    def __init__(
        self,
        context: BindingContext,
        host: WorkerProcessHost,
        lease: str | None = None,
        native_tools: bool = False,
    ) -> None:
        super().__init__(context, lease, native_tools)
        self.host = host

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        client = await self.host.client()
        try:
            response = await client.post(path, json=body)
        except httpx.ReadTimeout:
            raise self.host.hung() from None
        except httpx.TransportError:
            raise self.host.lost() from None
        if not response.is_success:
            raise remote_error(response)
        return response.json()

    async def plain(self, method: str, *args: Any) -> Any:
        return await self._post(f"{RPC}/instances/{self.instance_name}/{method}", {"args": list(args)})

    async def _call(self, method: str, *args: Any) -> Any:
        return await self._post(
            f"{RPC}/leases/{self.lease_id()}/call", {"method": method, "args": list(args)}
        )

    async def _events(self, path: str, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """The events of a streamed call on the lease; hang and early-end handled here."""
        client = await self.host.client()
        last_heard = time.monotonic()
        finished = False
        try:
            async with client.stream("POST", path, json=body) as response:
                if not response.is_success:
                    await response.aread()
                    raise remote_error(response)
                async for line in response.aiter_lines():
                    last_heard = time.monotonic()
                    if not line.startswith("data: "):
                        continue
                    event: dict[str, Any] = json.loads(line[6:])
                    if "error" in event:
                        raise event_error(event)
                    if event.get("end"):
                        finished = True
                        return
                    yield event
        except httpx.ReadTimeout:
            raise self.host.hung() from None
        except (GeneratorExit, asyncio.CancelledError):
            # the client left, or the server's generation timeout stopped a silent worker
            if silent_too_long(last_heard, self.host.generation_timeout):
                self.host.hung()
            raise
        except (httpx.TransportError, httpx.RemoteProtocolError):
            raise self.host.lost() from None
        if not finished:
            self.host.supervisor.forget()
            raise ended_early(self.host.pool, "worker")

    # ---- models (the worker owns residency) ------------------------------------------
    async def list_available_models(self) -> list[dict[str, Any]]:
        models: list[dict[str, Any]] = await self.plain("list_available_models")
        return models

    async def get_model_info(self, model_name: str | None) -> dict[str, Any]:
        info: dict[str, Any] = await self.plain("get_model_info", model_name)
        return info

    # ---- text --------------------------------------------------------------------
    async def stream_text(
        self, model_name: str, request: TextRequest, cancel: CancelToken
    ) -> AsyncGenerator[TextChunk, None]:
        path = f"{RPC}/leases/{self.lease_id()}/stream_text"
        events = self._events(path, {"request": wire.text_request_to_json(request)})
        try:
            async for event in events:
                yield wire.chunk_from_json(event["chunk"])
        finally:
            await events.aclose()

    async def generate_text(self, model_name: str, request: TextRequest, cancel: CancelToken) -> TextResult:
        data = await self._post(
            f"{RPC}/leases/{self.lease_id()}/generate_text", {"request": wire.text_request_to_json(request)}
        )
        return wire.result_from_json(data)

    async def chat_with_tools(
        self, model_name: str, request: TextRequest, tools: list[dict[str, Any]], cancel: CancelToken
    ) -> tuple[str, list[dict[str, Any]], dict[str, int]]:
        text, calls, usage = await self._call("chat_with_tools", wire.text_request_to_json(request), tools)
        return str(text), list(calls), dict(usage)

    async def tokenize(self, model_name: str, text: str) -> list[int]:
        tokens: list[int] = await self._call("tokenize", text)
        return tokens

    async def detokenize(self, model_name: str, tokens: list[int]) -> str:
        return str(await self._call("detokenize", tokens))

    async def embed(self, model_name: str, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = await self._call("embed", texts)
        return vectors

    # ---- media ---------------------------------------------------------------------
    async def forward_media(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        path = f"{RPC}/leases/{self.lease_id()}/media"
        outputs: list[MediaOutput] | None = None
        events = self._events(path, {"request": wire.media_request_to_json(request)})
        try:
            async for event in events:
                if "outputs" in event:
                    outputs = wire.outputs_from_json(event["outputs"])
                else:
                    progress(int(event["step"]), int(event["total"]))
        finally:
            await events.aclose()
        if outputs is None:
            raise BindingError(f"The worker of pool '{self.host.pool}' returned no output.")
        return outputs
