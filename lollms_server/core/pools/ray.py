"""A pool in a Ray actor (``[cluster] mode = "ray"``): the gateway side.

Each resource pool is a named, detached Ray actor (:class:`~lollms_server.core.pools.ray_actor.PoolActor`)
placed on a node that offers the pool's Ray resources (``[cluster.pools.<pool>]``). A gateway
(this app, in any number of processes and hosts) finds the actor by name.
:meth:`RayPoolHost.admit` opens a lease on it (a streaming call whose first item says
"admitted": the queue wait and the model load happen in the actor, before the gateway's answer
starts); :class:`RayBinding` makes the binding calls on the lease: text streams with
``num_returns="streaming"``, media as objects in Ray's object store, progress on the way.

Failures: the actor restarts after a crash (``max_restarts``); an admission or a listing that
got nothing back yet is sent again once the actor is back; a call on a lease is never retried
(the lease died with the actor: the client gets an error); while no node offers the pool's
resources, requests fail at once with 503 and ``Retry-After`` until the actor is placed again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

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
from lollms_server.core.config import AppConfig, SecurityConfig
from lollms_server.core.errors import (
    BindingError,
    GenerationTimeoutError,
    LollmsError,
    ServiceUnavailableError,
)
from lollms_server.core.pools.host import HostKind
from lollms_server.core.pools.ray_actor import PoolActor
from lollms_server.core.pools.ray_cluster import (
    actor_gone,
    actor_name,
    actor_unavailable,
    connect,
    fingerprint,
    ray_module,
    remote_error,
)
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
PROBE_AFTER_SECONDS = 1.0  # unheard from for longer, the actor is asked whether it is up first
RELEASE_TIMEOUT_SECONDS = 5.0


class RayPoolHost:
    """Finds (or creates) the actor of one pool and knows whether it can be reached."""

    kind: HostKind = "ray"

    def __init__(
        self, config: AppConfig, pool: str, bindings: BindingManager, resources: ResourceManager
    ) -> None:
        self.config = config
        self.bindings = bindings
        self._last_status: dict[str, Any] | None = None
        self.hang_seconds = config.resource_manager.generation_timeout + HANG_MARGIN_SECONDS
        self.cluster = config.cluster
        self.pool = pool
        self.placement = config.cluster.pool(pool)
        self.name = actor_name(pool)
        self.fingerprint = fingerprint(config, pool)
        self._actor: Any = None
        self._ready = False
        self._lock = asyncio.Lock()
        self.restarts_seen = 0
        self.last_contact = 0.0  # monotonic time of the last answer from the actor

    def _missing_resources(self) -> list[str]:
        """Resources the pool needs that no live node of the cluster offers (blocking)."""
        total = ray_module().cluster_resources()
        return [
            f"{amount:g} {name}"
            for name, amount in self.placement.demands().items()
            if total.get(name, 0.0) < amount
        ]

    def _get_or_create(self) -> Any:
        ray = ray_module()
        options: dict[str, Any] = {
            "name": self.name,
            "namespace": self.cluster.namespace,
            "lifetime": "detached",
            "get_if_exists": True,
            "max_restarts": self.cluster.max_restarts,
            "max_task_retries": 0,  # never re-run a call on its own: a stream may be half-way
            "max_concurrency": self.cluster.max_concurrency,
            "num_cpus": self.placement.num_cpus,
            "num_gpus": self.placement.num_gpus,
            "resources": dict(self.placement.resources),
        }
        if self.placement.memory_mb is not None:
            options["memory"] = int(self.placement.memory_mb * 2**20)
        if self.placement.runtime_env is not None:
            options["runtime_env"] = self.placement.runtime_env
        # the actor gets its pool's part of the config, without the server's API keys
        shipped = self.config.for_pool(self.pool)
        shipped.security = SecurityConfig()
        shipped.cluster = self.cluster
        return ray.remote(PoolActor).options(**options).remote(shipped, self.pool, self.fingerprint)

    def unplaceable(self, missing: list[str]) -> ServiceUnavailableError:
        return ServiceUnavailableError(
            f"Pool '{self.pool}' has no node to run on: no live node of the cluster offers "
            f"{', '.join(missing)}.",
            retry_after=self.cluster.retry_after,
        )

    def _fresh(self) -> bool:
        return self._ready and time.monotonic() - self.last_contact < PROBE_AFTER_SECONDS

    def heard(self) -> None:
        self.last_contact = time.monotonic()

    async def actor(self) -> Any:
        """The pool's actor, started and answering; 503 at once while it cannot be placed.

        An actor heard from within the last second is taken as up; otherwise it is asked first
        (one round trip), so that a node lost while the pool was idle gives a plain 503 before
        the response starts rather than an error event after it.
        """
        if self._fresh():
            return self._actor
        async with self._lock:
            if self._fresh():
                return self._actor
            await asyncio.to_thread(connect, self.cluster)
            deadline = time.monotonic() + self.cluster.start_timeout
            while True:
                missing = await asyncio.to_thread(self._missing_resources)
                if missing:
                    raise self.unplaceable(missing)
                if self._actor is None:
                    self._actor = await asyncio.to_thread(self._get_or_create)
                remaining = deadline - time.monotonic()
                known_up = self._ready  # answering before: silence past the hang time is a hang
                limit = min(remaining, self.hang_seconds) if known_up else remaining
                try:
                    info = await asyncio.wait_for(self._actor.ready.remote(), max(limit, 0.1))
                    break
                except (TimeoutError, asyncio.TimeoutError):
                    if known_up:
                        raise await self.hung() from None
                    raise ServiceUnavailableError(
                        f"Pool '{self.pool}' did not start within {self.cluster.start_timeout:g} s.",
                        retry_after=self.cluster.retry_after,
                    ) from None
                except Exception as exc:  # noqa: BLE001 - restarting, or died for good
                    if not actor_unavailable(exc):
                        logger.error("The actor of pool %s failed to start: %s", self.pool, exc)
                        raise BindingError(f"Pool '{self.pool}' failed to start.") from None
                    if actor_gone(exc):
                        self._actor = None  # gone for good: get_if_exists makes a new one
                    if time.monotonic() > deadline:
                        raise ServiceUnavailableError(
                            f"Pool '{self.pool}' is restarting.", retry_after=self.cluster.retry_after
                        ) from None
                    await asyncio.sleep(0.2)
            self.heard()
            if self._ready:
                return self._actor
            if info["fingerprint"] != self.fingerprint:
                logger.warning(
                    "The actor of pool %s was started from another configuration; stop it "
                    "(lollms-server cluster-stop) to apply this one",
                    self.pool,
                )
            logger.info("Pool %s runs on node %s (pid %s)", self.pool, info["node_id"][:12], info["pid"])
            self._ready = True
            return self._actor

    def lost(self, gone: bool = False) -> None:
        """A call found the actor dead or restarting: check it again before the next call
        (``gone``: it will not come back, make a new one)."""
        if self._ready:
            self.restarts_seen += 1
        self._ready = False
        if gone:
            self._actor = None

    async def kill(self) -> None:
        """Kill a hung actor; Ray starts a fresh one (``max_restarts``)."""
        actor = self._actor
        self.lost()
        if actor is not None:
            logger.error("Killing the hung actor of pool %s", self.pool)
            await asyncio.to_thread(ray_module().kill, actor, no_restart=False)

    async def start(self) -> None:
        """Join the cluster now: a wrong address fails the start."""
        await asyncio.to_thread(connect, self.cluster)

    def stand_in(self, instance: str, lease: str | None = None, native_tools: bool = False) -> RayBinding:
        return RayBinding(self.bindings.instance(instance).context(), self, lease, native_tools)

    async def admit(
        self,
        instance: str,
        model: str,
        ticket: Ticket = Ticket(),
        on_position: Callable[[int, float], None] | None = None,
    ) -> RemoteSession:
        """Open a lease on the actor; returns once the actor has admitted it (an actor found
        restarting is asked again once)."""
        for attempt in (1, 2):
            actor = await self.actor()
            refs = actor.lease.options(num_returns="streaming").remote(instance, model, ticket)
            try:
                admitted = await self._admitted(refs, on_position)
                break
            except asyncio.CancelledError:  # the client left while queued: leave the queue
                await asyncio.to_thread(ray_module().cancel, refs)
                raise
            except (TimeoutError, asyncio.TimeoutError):  # no "waiting" ping: the actor is hung
                await asyncio.to_thread(ray_module().cancel, refs)
                raise await self.hung() from None
            except StopAsyncIteration:
                raise BindingError(f"The actor of pool '{self.pool}' ended the admission early.") from None
            except Exception as exc:
                error = self._failed(exc, retry=attempt == 1)
                if error is not None:
                    raise error from None
        lease = str(admitted["lease"])

        async def release() -> None:
            try:
                await asyncio.wait_for(actor.release.remote(lease), RELEASE_TIMEOUT_SECONDS)
            except Exception:  # noqa: BLE001 - the actor is gone, and its lease with it
                logger.debug("Releasing a lease of pool %s failed", self.pool, exc_info=True)
            await asyncio.to_thread(ray_module().cancel, refs)

        binding = self.stand_in(instance, lease, bool(admitted.get("native_tools")))
        return RemoteSession(binding, admitted, release)

    async def _admitted(self, refs: Any, on_position: Callable[[int, float], None] | None) -> dict[str, Any]:
        """The "admitted" item of a lease call; the actor's "waiting" items (every second, with
        the place in the queue) go to ``on_position``; each item must come within the hang time."""
        while True:
            item: dict[str, Any] = await asyncio.wait_for(_next_item(refs), self.hang_seconds)
            self.heard()
            if not item.get("waiting"):
                return item
            if on_position is not None and item.get("position"):
                on_position(int(item["position"]), float(item.get("eta", 0.0)))

    async def hung(self) -> GenerationTimeoutError:
        await self.kill()
        return GenerationTimeoutError(f"The actor of pool '{self.pool}' hung and was restarted.")

    async def binding(self, instance: str) -> RayBinding:
        return self.stand_in(instance)

    async def model_info(self, instance: str, model: str | None) -> dict[str, Any]:
        info: dict[str, Any] = await self.invoke("plain_call", instance, "get_model_info", model)
        return info

    async def invoke(self, method: str, *args: Any) -> Any:
        """A :class:`PoolActor` method outside a lease that answers once; sent again (once) if
        the actor was found restarting; cancelled in the actor if the caller is."""
        for attempt in (1, 2):
            actor = await self.actor()
            ref = getattr(actor, method).remote(*args)
            try:
                result = await ref
                self.heard()
                return result
            except asyncio.CancelledError:
                await asyncio.to_thread(ray_module().cancel, ref)
                raise
            except Exception as exc:
                error = self._failed(exc, retry=attempt == 1)
                if error is not None:
                    raise error from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _failed(self, exc: BaseException, retry: bool) -> LollmsError | None:
        """What a failed actor call outside a lease means: the error to raise, or ``None`` to
        send it again (the actor was found restarting and nothing reached the client yet)."""
        if not actor_unavailable(exc):
            return remote_error(exc)
        self.lost(gone=actor_gone(exc))
        if retry:
            return None
        return ServiceUnavailableError(
            f"Pool '{self.pool}' is restarting.", retry_after=self.cluster.retry_after
        )

    def failed_on_lease(self, exc: BaseException) -> LollmsError:
        """What a failed call on a lease means (never retried: the lease lived in the actor)."""
        if not actor_unavailable(exc):
            return remote_error(exc)
        self.lost(gone=actor_gone(exc))
        return BindingError(f"The actor of pool '{self.pool}' stopped during the generation.")

    async def status(self) -> dict[str, Any] | None:
        """The actor's identity and pool snapshot, or ``None`` when it does not answer soon."""
        if not ray_module().is_initialized():
            return None
        try:
            actor = self._actor
            if actor is None:
                actor = await asyncio.to_thread(
                    ray_module().get_actor, self.name, namespace=self.cluster.namespace
                )
            status: dict[str, Any] = await asyncio.wait_for(actor.status.remote(), 5)
        except Exception:  # noqa: BLE001 - not started, restarting or unplaced
            return None
        return {**status, "restarts_seen": self.restarts_seen}

    async def refresh(self) -> dict[str, Any] | None:
        self._last_status = await self.status()
        return self._last_status

    def snapshot(self) -> dict[str, Any]:
        return remote_snapshot(self.config, self.pool, self.kind, self._last_status)

    async def close(self) -> None:
        """Gateways leave the actors running: other gateways share them (see ``cluster-stop``)."""


class RayBinding(ForwardingBinding):
    """Stands for an instance whose pool is a Ray actor: its calls run on the lease."""

    def __init__(
        self, context: BindingContext, host: RayPoolHost, lease: str | None = None, native_tools: bool = False
    ) -> None:
        super().__init__(context, lease, native_tools)
        self.host = host

    async def list_available_models(self) -> list[dict[str, Any]]:
        models: list[dict[str, Any]] = await self.host.invoke(
            "plain_call", self.instance_name, "list_available_models"
        )
        return models

    async def get_model_info(self, model_name: str | None) -> dict[str, Any]:
        return await self.host.model_info(self.instance_name, model_name)

    async def _once(self, method: str, *args: Any) -> Any:
        """A call on the lease that answers once (never retried: the lease lives in the actor)."""
        actor = await self.host.actor()
        ref = getattr(actor, method).remote(self.lease_id(), *args)
        try:
            result = await ref
        except asyncio.CancelledError:
            await asyncio.to_thread(ray_module().cancel, ref)
            raise
        except Exception as exc:
            raise self.host.failed_on_lease(exc) from None
        self.host.heard()
        return result

    async def tokenize(self, model_name: str, text: str) -> list[int]:
        tokens: list[int] = await self._once("call", "tokenize", text)
        return tokens

    async def detokenize(self, model_name: str, tokens: list[int]) -> str:
        return str(await self._once("call", "detokenize", tokens))

    async def embed(self, model_name: str, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = await self._once("call", "embed", texts)
        return vectors

    async def chat_with_tools(
        self, model_name: str, request: TextRequest, tools: list[dict[str, Any]], cancel: CancelToken
    ) -> tuple[str, list[dict[str, Any]], dict[str, int]]:
        text, calls, usage = await self._once("call", "chat_with_tools", request, tools)
        return str(text), list(calls), dict(usage)

    async def generate_text(self, model_name: str, request: TextRequest, cancel: CancelToken) -> TextResult:
        result: TextResult = await self._once("generate_text", request)
        return result

    async def _stream(self, method: str, *args: Any) -> AsyncGenerator[Any, None]:
        """Items of a streaming call on the lease; a lost actor is an error (never a retry)."""
        timeout = self.host.config.resource_manager.generation_timeout
        actor = await self.host.actor()
        refs = getattr(actor, method).options(num_returns="streaming").remote(self.lease_id(), *args)
        finished = False
        last_heard = time.monotonic()
        try:
            async for ref in refs:
                item = await ref
                last_heard = time.monotonic()
                self.host.last_contact = last_heard
                yield item
            finished = True
        except (GeneratorExit, asyncio.CancelledError):
            # the client left, or the server's generation timeout stopped a silent actor
            if silent_too_long(last_heard, timeout):
                await self.host.kill()
            raise
        except Exception as exc:
            raise self.host.failed_on_lease(exc) from None
        finally:
            if not finished:
                await asyncio.to_thread(ray_module().cancel, refs)

    async def stream_text(
        self, model_name: str, request: TextRequest, cancel: CancelToken
    ) -> AsyncGenerator[TextChunk, None]:
        finished = False
        async for chunk in self._stream("stream_text", request):
            finished = finished or bool(chunk.finish_reason or chunk.usage)
            yield chunk
        if not finished:
            raise ended_early(self.host.pool, "actor")

    async def forward_media(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        outputs: list[MediaOutput] | None = None
        async for item in self._stream("media", request):
            if isinstance(item, list):
                outputs = item
            else:
                progress(*item)
        if outputs is None:
            raise BindingError(f"The actor of pool '{self.host.pool}' returned no output.")
        return outputs


async def _next_item(refs: Any) -> Any:
    """The next item of a streaming actor call."""
    return await (await refs.__anext__())
