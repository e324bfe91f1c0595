"""Pools as Ray actors (``[cluster] mode = "ray"``): the same server scaled out over a cluster.

Each resource pool is a named, detached Ray actor (:class:`PoolActor`) placed on a node that
offers the pool's Ray resources (``[cluster.pools.<pool>]``: GPUs, custom resources). Inside, it
runs the pool's binding instances with the ordinary :class:`ResourceManager`, so the pool's FIFO
queue is exact whatever the number of gateways. A gateway (this FastAPI app, in any number of
processes and hosts) finds the actor by name and forwards calls through :class:`RayBinding`:
text streams with ``num_returns="streaming"`` (chunks batched while the gateway is busy), media
as objects in Ray's object store, with progress events on the way.

Failures: the actor restarts after a crash (``max_restarts``); a call that got nothing back yet
is sent again once the actor is back, a stream that already produced is never retried (the
client gets an ``error`` event); while no node offers the pool's resources, requests fail at
once with 503 and ``Retry-After`` until the actor is placed again.

``ray`` is imported only in this module, and only in ``ray`` mode (``pip install .[distributed]``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

from lollms_server.core.bindings import (
    MEDIA_METHODS,
    Binding,
    BindingContext,
    BindingManager,
    CancelToken,
    ForwardingBinding,
    MediaOutput,
    MediaRequest,
    Progress,
    TextChunk,
    TextRequest,
    TextResult,
    with_progress,
)
from lollms_server.core.config import AppConfig, ClusterConfig, SecurityConfig
from lollms_server.core.errors import (
    BindingError,
    ConfigError,
    GenerationTimeoutError,
    LollmsError,
    ServiceUnavailableError,
)
from lollms_server.core.generation import next_before
from lollms_server.core.resource_manager import ResourceManager

logger = logging.getLogger(__name__)
T = TypeVar("T")
ACTOR_PREFIX = "lollms-pool-"
PROBE_AFTER_SECONDS = 1.0  # unheard from for longer, the actor is asked whether it is up first
ACTOR_TIMEOUT_MARGIN = 2.0  # the actor's own bound lies past the gateway's generation timeout
HUNG_SILENCE_SHARE = 0.9  # of the generation timeout: a silent actor past it is hung, not slow
RESIDENT_CALLS = {"tokenize", "detokenize", "embed"}  # need a slot and the model loaded
PLAIN_CALLS = {"list_available_models", "get_model_info"}  # need neither
_connect_lock = threading.Lock()


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            'cluster.mode = "ray" needs Ray: pip install "lollms_server[distributed]"'
        ) from None
    return ray


def connect(cluster: ClusterConfig) -> None:
    """Join the Ray cluster as a driver, once per process (blocking: call it in a thread)."""
    ray = _ray()
    with _connect_lock:
        if ray.is_initialized():
            return
        try:
            ray.init(
                address=cluster.address,
                namespace=cluster.namespace,
                log_to_driver=False,
                configure_logging=False,
                include_dashboard=False if cluster.address is None else None,
            )
        except ConnectionError as exc:
            raise ConfigError(f"cluster.address: cannot reach the Ray cluster ({exc})") from None
        logger.info("Joined the Ray cluster (namespace %s)", cluster.namespace)


def actor_name(pool: str) -> str:
    return ACTOR_PREFIX + pool


def fingerprint(config: AppConfig, pool: str) -> str:
    """What a pool's actor is built from (its binding instances and pool settings); gateways
    compare it with their own config."""
    data = config.for_pool(pool).model_dump_json(include={"bindings", "resource_manager"})
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _actor_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the actor died or is restarting (rather than the call failing)."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    return isinstance(exc, RayActorError | ActorUnavailableError)


def _actor_gone(exc: BaseException) -> bool:
    """Whether the actor died for good (restarts exhausted, or stopped): a new one is needed."""
    from ray.exceptions import ActorDiedError

    return isinstance(exc, ActorDiedError)


# --------------------------------------------------------------------------- actor side


def _merge(chunks: list[TextChunk]) -> TextChunk:
    """Chunks that came within one batching window, as one (the end marker stays last)."""
    if len(chunks) == 1:
        return chunks[0]
    last = chunks[-1]
    return TextChunk("".join(chunk.text for chunk in chunks), last.finish_reason, last.usage, last.metadata)


async def batched(
    chunks: AsyncGenerator[TextChunk, None], interval: float
) -> AsyncGenerator[TextChunk, None]:
    """Yield what ``chunks`` produced, merged, at most once per ``interval`` seconds.

    A Ray object costs about half a millisecond end to end, more than a token of a small model:
    tokens that come faster than ``interval`` travel together, slower ones (real models) each
    leave at once; the first one and the end of the stream never wait.
    """
    loop = asyncio.get_running_loop()
    pending: deque[TextChunk] = deque()
    ready = asyncio.Event()
    outcome: list[BaseException | None] = []

    async def pump() -> None:
        try:
            async for chunk in chunks:
                pending.append(chunk)
                ready.set()
            outcome.append(None)
        except Exception as exc:  # noqa: BLE001 - raised to the consumer
            outcome.append(exc)
        finally:
            ready.set()

    task = asyncio.ensure_future(pump())
    last_sent = -interval
    try:
        while True:
            await ready.wait()
            ready.clear()
            early = last_sent + interval - loop.time()
            ending = bool(outcome) or bool(pending and (pending[-1].finish_reason or pending[-1].usage))
            if pending and not ending and early > 0:
                await asyncio.sleep(early)  # more tokens pile up meanwhile
            if pending:
                items = list(pending)
                pending.clear()
                yield _merge(items)
                last_sent = loop.time()
            if outcome and not pending:
                if outcome[0] is not None:
                    raise outcome[0]
                return
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await chunks.aclose()


class PoolActor:
    """One pool of the cluster: its binding instances, its queue and its resident models.

    Built by :class:`RayPoolHost` with ``ray.remote`` (Ray is optional, so no decorator here).
    Every method is a coroutine on the actor's event loop; the pool's FIFO queue orders them.
    """

    def __init__(self, config: AppConfig, pool: str, fingerprint: str) -> None:
        from lollms_server.utils.logs import configure_logging

        self.stream_interval = config.cluster.stream_batch_ms / 1000
        self.generation_timeout = config.resource_manager.generation_timeout + ACTOR_TIMEOUT_MARGIN
        self.pool = pool
        self.fingerprint = fingerprint
        self.config = config.for_pool(pool)
        configure_logging(self.config.logging.level)
        self.bindings = BindingManager(self.config)
        self.resources = ResourceManager(self.config.resource_manager)
        self.started_at = time.time()

    def _identity(self) -> dict[str, Any]:
        ray = _ray()
        return {
            "host": "ray",
            "pool": self.pool,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "fingerprint": self.fingerprint,
            "uptime_seconds": round(time.time() - self.started_at, 3),
        }

    async def ready(self) -> dict[str, Any]:
        self.resources.start()  # the idle-unload housekeeper, on the actor's loop
        return self._identity()

    async def status(self) -> dict[str, Any]:
        return {**self._identity(), **self.resources.snapshot()}

    async def _bounded(self, items: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
        """``items`` until the pool's generation timeout (plus a margin) has passed: the bound
        holds even if the gateway that asked is gone and nobody cancels the call."""
        deadline = asyncio.get_running_loop().time() + self.generation_timeout
        try:
            while True:
                try:
                    item = await next_before(items, deadline)
                except StopAsyncIteration:
                    return
                except (TimeoutError, asyncio.TimeoutError):
                    raise GenerationTimeoutError("The generation did not finish in time.") from None
                yield item
        finally:
            await items.aclose()

    @asynccontextmanager
    async def _admitted(self, instance: str, model: str) -> AsyncIterator[tuple[Binding, dict[str, float]]]:
        """A slot of the pool (FIFO) and the model resident; yields the binding and timings."""
        binding = await self.bindings.get(instance)
        started = time.monotonic()
        async with self.resources.slot(self.pool) as lease:
            timings = {"queue_wait": lease.wait_seconds, "slot_granted_at": time.time()}
            async with self.resources.use_model(binding, self.pool, model) as load_seconds:
                timings["load"] = load_seconds
                yield binding, timings
                timings["compute_finished_at"] = time.time()
                timings["total"] = time.monotonic() - started

    async def stream_text(
        self, instance: str, model: str, request: TextRequest
    ) -> AsyncGenerator[TextChunk, None]:
        """The text stream, batched; the last chunk carries the actor's timings."""
        async with self._admitted(instance, model) as (binding, timings):
            chunks = batched(binding.stream_text(model, request, CancelToken()), self.stream_interval)
            async for chunk in self._bounded(chunks):
                if chunk.finish_reason or chunk.usage:
                    timings["compute_finished_at"] = time.time()
                    chunk.metadata = {**(chunk.metadata or {}), "worker_timings": dict(timings)}
                yield chunk

    async def generate_media(
        self, instance: str, model: str, request: MediaRequest
    ) -> AsyncGenerator[tuple[int, int] | list[MediaOutput], None]:
        """(step, total) progress tuples, then the list of outputs (through the object store)."""
        async with self._admitted(instance, model) as (binding, timings):
            method = getattr(binding, MEDIA_METHODS[request.generation_type])
            run = partial(method, model, request)
            async for item in self._bounded(with_progress(run, CancelToken())):
                if isinstance(item, list):
                    timings["compute_finished_at"] = time.time()
                    for output in item:
                        output.metadata = {**output.metadata, "worker_timings": dict(timings)}
                yield item

    async def generate_text(self, instance: str, model: str, request: TextRequest) -> TextResult:
        """The whole text in one answer (one round trip instead of a stream's objects)."""
        async with self._admitted(instance, model) as (binding, timings):
            cancel = CancelToken()
            try:
                result: TextResult = await asyncio.wait_for(
                    binding.generate_text(model, request, cancel), self.generation_timeout
                )
            except (TimeoutError, asyncio.TimeoutError):
                raise GenerationTimeoutError("The generation did not finish in time.") from None
            finally:
                cancel.set()  # stops the binding if this call is cancelled (ray.cancel, timeout)
            timings["compute_finished_at"] = time.time()
            result.metadata = {**result.metadata, "worker_timings": dict(timings)}
            return result

    async def call(self, instance: str, model: str | None, method: str, *args: Any) -> Any:
        """tokenize / detokenize / embed (holding a slot), or the listings (without one)."""
        if method in PLAIN_CALLS:
            binding = await self.bindings.get(instance)
            result = await getattr(binding, method)(*args)
            if method == "get_model_info":
                return self.resources.with_residency(result, instance, args[0])
            return result
        if method not in RESIDENT_CALLS or model is None:
            raise BindingError(f"Unknown pool call '{method}'.")
        async with self._admitted(instance, model) as (binding, _):
            return await getattr(binding, method)(model, *args)


# --------------------------------------------------------------------------- gateway side


class RayPoolHost:
    """Finds (or creates) the actor of one pool and knows whether it can be reached."""

    host = "ray"

    def __init__(self, config: AppConfig, pool: str) -> None:
        self.config = config
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
        total = _ray().cluster_resources()
        return [
            f"{amount:g} {name}"
            for name, amount in self.placement.demands().items()
            if total.get(name, 0.0) < amount
        ]

    def _get_or_create(self) -> Any:
        ray = _ray()
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
                try:
                    info = await asyncio.wait_for(self._actor.ready.remote(), max(remaining, 0.1))
                    break
                except (TimeoutError, asyncio.TimeoutError):
                    raise ServiceUnavailableError(
                        f"Pool '{self.pool}' did not start within {self.cluster.start_timeout:g} s.",
                        retry_after=self.cluster.retry_after,
                    ) from None
                except Exception as exc:  # noqa: BLE001 - restarting, or died for good
                    if not _actor_unavailable(exc):
                        logger.error("The actor of pool %s failed to start: %s", self.pool, exc)
                        raise BindingError(f"Pool '{self.pool}' failed to start.") from None
                    if _actor_gone(exc):
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
            await asyncio.to_thread(_ray().kill, actor, no_restart=False)

    async def call(self, instance: str, model: str | None, method: str, *args: Any) -> Any:
        """:meth:`PoolActor.call`."""
        return await self.invoke("call", instance, model, method, *args)

    async def invoke(self, method: str, *args: Any) -> Any:
        """A :class:`PoolActor` method that answers once; sent again (once) if the actor was found
        restarting (nothing reached the client yet); cancelled in the actor if the caller is."""
        for attempt in (1, 2):
            actor = await self.actor()
            ref = getattr(actor, method).remote(*args)
            try:
                result = await ref
                self.heard()
                return result
            except asyncio.CancelledError:
                await asyncio.to_thread(_ray().cancel, ref)
                raise
            except Exception as exc:
                if not _actor_unavailable(exc):
                    raise _remote_error(exc) from None
                self.lost(gone=_actor_gone(exc))
                if attempt == 2:
                    raise ServiceUnavailableError(
                        f"Pool '{self.pool}' is restarting.", retry_after=self.cluster.retry_after
                    ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def status(self) -> dict[str, Any] | None:
        """The actor's identity and pool snapshot, or ``None`` when it does not answer soon."""
        if not _ray().is_initialized():
            return None
        try:
            actor = self._actor
            if actor is None:
                actor = await asyncio.to_thread(_ray().get_actor, self.name, namespace=self.cluster.namespace)
            status: dict[str, Any] = await asyncio.wait_for(actor.status.remote(), 5)
        except Exception:  # noqa: BLE001 - not started, restarting or unplaced
            return None
        return {**status, "restarts_seen": self.restarts_seen}

    def stop(self) -> None:
        """Gateways leave the actors running: other gateways share them (see ``cluster-stop``)."""


def stop_actors(config: AppConfig) -> list[str]:
    """Kill the pool actors of ``config`` (after a config change); returns the pools stopped."""
    ray = _ray()
    connect(config.cluster)
    stopped = []
    for pool in config.resource_manager.pools:
        try:
            actor = ray.get_actor(actor_name(pool), namespace=config.cluster.namespace)
        except ValueError:
            continue
        ray.kill(actor, no_restart=True)
        stopped.append(pool)
    return stopped


class RayBinding(ForwardingBinding):
    """Stands for an instance whose pool is a Ray actor: every call goes to the actor, whose own
    resource manager queues, loads and generates."""

    def __init__(self, context: BindingContext, host: RayPoolHost) -> None:
        super().__init__(context)
        self.host = host

    async def list_available_models(self) -> list[dict[str, Any]]:
        models: list[dict[str, Any]] = await self.host.call(self.instance_name, None, "list_available_models")
        return models

    async def load_model(self, model_name: str) -> None:
        """Make sure the actor runs (it loads the model itself when the request reaches it)."""
        await self.host.actor()

    async def get_model_info(self, model_name: str | None) -> dict[str, Any]:
        info: dict[str, Any] = await self.host.call(self.instance_name, None, "get_model_info", model_name)
        return info

    async def tokenize(self, model_name: str, text: str) -> list[int]:
        tokens: list[int] = await self.host.call(self.instance_name, model_name, "tokenize", text)
        return tokens

    async def detokenize(self, model_name: str, tokens: list[int]) -> str:
        return str(await self.host.call(self.instance_name, model_name, "detokenize", tokens))

    async def embed(self, model_name: str, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = await self.host.call(self.instance_name, model_name, "embed", texts)
        return vectors

    async def generate_text(self, model_name: str, request: TextRequest, cancel: CancelToken) -> TextResult:
        result: TextResult = await self.host.invoke("generate_text", self.instance_name, model_name, request)
        return result

    async def _stream(self, method: str, *args: Any) -> AsyncGenerator[Any, None]:
        """Items of a streaming actor call. Before the first item, an actor found restarting is
        called again once; after it, a lost actor is an error (never a silent retry)."""
        timeout = self.host.config.resource_manager.generation_timeout
        for attempt in (1, 2):
            actor = await self.host.actor()
            refs = getattr(actor, method).options(num_returns="streaming").remote(*args)
            received = False
            finished = False
            last_heard = time.monotonic()
            try:
                async for ref in refs:
                    item = await ref
                    received = True
                    last_heard = time.monotonic()
                    self.host.last_contact = last_heard
                    yield item
                finished = True
                return
            except (GeneratorExit, asyncio.CancelledError):
                # the client left, or the server's generation timeout stopped a silent actor
                if time.monotonic() - last_heard >= HUNG_SILENCE_SHARE * timeout:
                    await self.host.kill()
                raise
            except Exception as exc:
                if not _actor_unavailable(exc):
                    raise _remote_error(exc) from None
                self.host.lost(gone=_actor_gone(exc))
                if received:
                    raise BindingError(
                        f"The actor of pool '{self.host.pool}' stopped during the generation."
                    ) from None
                if attempt == 2:
                    raise ServiceUnavailableError(
                        f"Pool '{self.host.pool}' is restarting.", retry_after=self.host.cluster.retry_after
                    ) from None
            finally:
                if not finished:
                    await asyncio.to_thread(_ray().cancel, refs)

    async def stream_text(
        self, model_name: str, request: TextRequest, cancel: CancelToken
    ) -> AsyncGenerator[TextChunk, None]:
        finished = False
        async for chunk in self._stream("stream_text", self.instance_name, model_name, request):
            finished = finished or bool(chunk.finish_reason or chunk.usage)
            yield chunk
        if not finished:
            raise BindingError(f"The actor of pool '{self.host.pool}' ended the stream early.")

    async def forward_media(
        self, model_name: str, request: MediaRequest, progress: Progress
    ) -> list[MediaOutput]:
        outputs: list[MediaOutput] | None = None
        async for item in self._stream("generate_media", self.instance_name, model_name, request):
            if isinstance(item, list):
                outputs = item
            else:
                progress(*item)
        if outputs is None:
            raise BindingError(f"The actor of pool '{self.host.pool}' returned no output.")
        return outputs


def _remote_error(exc: BaseException) -> LollmsError:
    """An error raised inside the actor: its LollmsError as is (status and message), anything
    else as a plain 500 without internals."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, LollmsError):
        return cause  # the original exception, unpickled: not Ray's wrapper with its traceback
    logger.error("A pool actor call failed: %s", exc)
    return BindingError(f"The binding failed in its pool actor ({type(cause).__name__}).")
