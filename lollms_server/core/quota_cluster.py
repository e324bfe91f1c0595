"""Per-key quotas that hold for every gateway of a Ray cluster (``[cluster] mode = "ray"``): the
gateway side of the quota actor (``quota_actor.QuotaActor``).

The counts of the keys that have a limit live in one named, detached actor, ``lollms-quotas``
(no CPU reserved), in the namespace of the pool actors; every gateway process of every host asks
it, so a key passes each limit once for the whole cluster, not once per host. A request is a
*hold* of its gateway: ``admit`` decides and counts it waiting (awaited: one round trip, never
blocking the event loop); its start (running), its end, its generated tokens and the gateway's
renewals (every ``RENEW_SECONDS`` while it holds something) are sent without waiting. Ray runs
one gateway's calls in the order they were sent, so a start never overtakes its admission nor an
end its start, and a gateway's next admission sees them all. A key that limits neither running
nor waiting requests (only requests or tokens per minute) holds nothing in the actor: its
admission is its only call (with its tokens), and this host counts its running requests.

Keys without limits never call the actor (this host's store counts them, for ``usage``). When
the actor does not answer within ``CALL_TIMEOUT_SECONDS`` (stopped, restarting, the cluster out
of reach), this host's store decides instead (in memory, or the ``--workers`` file) and a warning
is logged; the gateway asks the actor again ``RETRY_SECONDS`` later. Meanwhile a limit holds per
host, as without Ray: never a 500, never a hang. An actor that restarts starts from empty counts.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from lollms_server import __version__
from lollms_server.core.config import ClusterConfig
from lollms_server.core.errors import RateLimitError
from lollms_server.core.pools.ray_cluster import actor_gone, connect, ray_module
from lollms_server.core.quota_actor import QuotaActor, plain
from lollms_server.core.quotas import KeyQuotas, QueuedRequest, limited
from lollms_server.core.security import Principal

logger = logging.getLogger(__name__)
QUOTA_ACTOR = "lollms-quotas"
CALL_TIMEOUT_SECONDS = 2.0
"""How long a gateway waits for the actor's decision before its host's store decides."""
START_TIMEOUT_SECONDS = 15.0
"""How long the first request of a gateway waits for the actor to start (or be found)."""
RETRY_SECONDS = 10.0
"""After the actor did not answer, the host's store decides this long before it is asked again."""
RENEW_SECONDS = 5.0
"""How often a gateway holding requests says it is alive (``quota_actor.GATEWAY_SILENT_SECONDS``)."""


class Unreachable(Exception):
    """The quota actor did not answer (the host's store decides)."""


class ClusterQueued:
    """A request the quota actor counts waiting, as ``hold`` of this gateway (``QueuedRequest``)."""

    def __init__(self, quotas: ClusterKeyQuotas, hold: int) -> None:
        self.quotas = quotas
        self.hold = hold
        self.running = False

    async def start(self) -> Callable[[], None]:
        if self.running:
            raise RuntimeError("started twice")
        self.running = True
        # not waited for: Ray runs it before this gateway's next calls (its end, its next
        # admission); other gateways see it a message later, like a request that was admitted
        # and still waits (``max_concurrent`` counts the running ones when a request is admitted)
        self.quotas._send("start", self.quotas.gateway, self.hold)
        ended = False

        def end() -> None:
            nonlocal ended
            if not ended:
                ended = True
                self.quotas._release(self.hold)

        return end


class ClusterKeyQuotas:
    """The ``Quotas`` of one gateway process in Ray mode: limited keys are decided by the
    cluster's quota actor; ``host`` (this host's store) counts the other keys and decides while
    the actor does not answer."""

    def __init__(self, cluster: ClusterConfig, host: KeyQuotas) -> None:
        self.cluster = cluster
        self.host = host
        self.gateway = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._actor: Any = None
        self._opening: asyncio.Future[Any] | None = None
        self._retry_at = 0.0  # monotonic: the actor did not answer; the host decides until then
        self._holds: set[int] = set()  # this gateway's holds in the actor
        self._lock = threading.Lock()  # ends may come from another thread
        self._next_hold = itertools.count(1)
        self._renewing: asyncio.Task[None] | None = None
        self._snapshot: dict[str, dict[str, int]] = {}

    # ---- the actor -------------------------------------------------------------------------------
    def reachable(self) -> bool:
        """Not within ``RETRY_SECONDS`` of a call the actor did not answer."""
        return time.monotonic() >= self._retry_at

    def _get_or_create(self) -> Any:
        """The cluster's quota actor, started if no gateway did yet (blocking: in a thread)."""
        connect(self.cluster)
        options: dict[str, Any] = {
            "name": QUOTA_ACTOR,
            "namespace": self.cluster.namespace,
            "lifetime": "detached",
            "get_if_exists": True,
            "num_cpus": 0,
            "max_restarts": -1,
            "max_task_retries": 0,  # a decision is never made twice
        }
        return ray_module().remote(QuotaActor).options(**options).remote()

    async def _open(self) -> Any:
        actor = await asyncio.to_thread(self._get_or_create)
        info = await actor.ready.remote()
        if info["version"] != __version__:
            logger.warning(
                "The quota actor %s runs lollms_server %s, this gateway %s (ray kill it to update it)",
                QUOTA_ACTOR,
                info["version"],
                __version__,
            )
        return actor

    async def _reached(self) -> Any | None:
        """The actor (found or started once, shared by concurrent first requests), or None
        while it does not answer."""
        if not self.reachable():
            return None
        if self._actor is not None:
            return self._actor
        if self._opening is None or self._opening.done():
            self._opening = asyncio.ensure_future(asyncio.wait_for(self._open(), START_TIMEOUT_SECONDS))
            self._opening.add_done_callback(_retrieved)  # its waiters may all have left
        try:
            self._actor = await asyncio.shield(self._opening)
        except Exception as exc:  # noqa: BLE001 - no actor: the host decides
            self._unreachable(exc)
            return None
        return self._actor

    async def _ask(self, actor: Any, method: str, *args: Any) -> Any:
        """The answer of an actor call, within ``CALL_TIMEOUT_SECONDS``, else ``Unreachable``."""
        try:
            return await asyncio.wait_for(getattr(actor, method).remote(*args), CALL_TIMEOUT_SECONDS)
        except Exception as exc:  # noqa: BLE001 - timed out, restarting or gone
            self._unreachable(exc)
            raise Unreachable from None

    def _send(self, method: str, *args: Any) -> None:
        """An actor call not waited for (skipped while the actor does not answer)."""
        actor = self._actor
        if actor is None or not self.reachable():
            return
        try:
            getattr(actor, method).remote(*args)
        except Exception as exc:  # noqa: BLE001 - the next renewal puts the actor right
            logger.debug("A call to the quota actor failed: %s", exc)

    def _unreachable(self, exc: BaseException) -> None:
        if not isinstance(exc, TimeoutError | asyncio.TimeoutError) and _gone(exc):
            self._actor = None  # killed for good: the next try starts a new one
        warn = self.reachable()
        self._retry_at = time.monotonic() + RETRY_SECONDS
        if warn:
            logger.warning(
                "The cluster's quota actor %s did not answer (%s): this host's quotas decide "
                "for %g s, so a key's limits hold per host meanwhile",
                QUOTA_ACTOR,
                type(exc).__name__,
                RETRY_SECONDS,
            )

    # ---- holds -------------------------------------------------------------------------------------
    def _track(self, hold: int) -> None:
        with self._lock:
            self._holds.add(hold)
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.ensure_future(self._renew())

    def _release(self, hold: int, counted: bool = True) -> None:
        """Stop counting ``hold`` (sent without waiting; while the actor does not answer, the
        next renewal drops it); ``counted=False``: the actor refused it, nothing to send."""
        with self._lock:
            self._holds.discard(hold)
            idle = not self._holds
            renewing = self._renewing
        if counted:
            self._send("release", self.gateway, hold)
        if idle and renewing is not None and not renewing.done():
            try:
                renewing.get_loop().call_soon_threadsafe(renewing.cancel)
            except RuntimeError:  # its loop is closed: nothing left to renew
                pass

    async def _renew(self) -> None:
        """While this gateway holds requests: say it is alive, with the list of its holds."""
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            with self._lock:
                holds = list(self._holds)
            if not holds:
                return
            actor = self._actor
            if actor is None:
                continue
            try:
                await asyncio.wait_for(actor.renew.remote(self.gateway, holds), CALL_TIMEOUT_SECONDS)
            except Exception:  # noqa: BLE001 - tried again next time
                logger.debug("Renewing the quota holds of %s failed", self.gateway, exc_info=True)
            else:
                self._retry_at = 0.0  # it answers again

    # ---- Quotas ------------------------------------------------------------------------------------
    async def _decided(self, principal: Principal, hold: int) -> bool:
        """The actor's decision: a 429 raised, or True: the request counted (and waiting, as
        ``hold``; 0: nothing to hold); False: the actor did not answer (the host decides)."""
        actor = await self._reached()
        if actor is None:
            return False
        if hold:
            self._track(hold)
        try:
            limits = plain(principal.limits)
            refused = await self._ask(actor, "admit", self.gateway, hold, principal.name, limits)
        except Unreachable:
            if hold:
                self._release(hold)  # in case the actor counts it later
            return False
        except BaseException:  # cancelled: the actor runs the release after the admit
            if hold:
                self._release(hold)
            raise
        if refused is not None:
            if hold:
                self._release(hold, counted=False)
            raise RateLimitError(**refused)
        return True

    @asynccontextmanager
    async def admit(self, principal: Principal) -> AsyncIterator[QueuedRequest]:
        limits = principal.limits
        held = limits.max_concurrent is not None or limits.max_queued is not None
        hold = next(self._next_hold) if held else 0
        if limited(principal) and await self._decided(principal, hold):
            if not held:  # the actor counted the request; its waiting and running count here
                with self.host.counting(principal) as counted:
                    yield counted
                return
            queued = ClusterQueued(self, hold)
            try:
                yield queued
            finally:
                if not queued.running:
                    self._release(hold)
            return
        async with self.host.admit(principal) as local:  # no limit, or no answer: the host's store
            yield local

    def add_tokens(self, principal: Principal, tokens: int) -> None:
        """Sent without waiting (to this host's store while the actor does not answer)."""
        if tokens <= 0 or principal.limits.tokens_per_minute is None:
            return
        if self._actor is None or not self.reachable():
            self.host.add_tokens(principal, tokens)
            return
        self._send("add_tokens", self.gateway, principal.name, plain(principal.limits), tokens)

    async def refresh(self) -> None:
        """Fetch the cluster's counts (none while the actor does not answer: the host's then)."""
        snapshot: dict[str, dict[str, int]] = {}
        actor = await self._reached()
        if actor is not None:
            try:
                snapshot = await self._ask(actor, "usage")
            except Unreachable:
                pass
        self._snapshot = snapshot

    def usage(self) -> dict[str, dict[str, int]]:
        """The cluster's counts (as of the last ``refresh``) plus this host's: each request
        counts in one of them (the host's: keys without limits, the running and waiting
        requests of keys that do not limit them, what it decided while the actor did not answer)."""
        host, cluster = self.host.usage(), self._snapshot
        return {
            key: {
                field: host.get(key, {}).get(field, 0) + cluster.get(key, {}).get(field, 0)
                for field in ("running", "queued", "requests_last_minute", "tokens_last_minute")
            }
            for key in sorted(set(host) | set(cluster))
        }


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _gone(exc: BaseException) -> bool:
    try:
        return actor_gone(exc)
    except ImportError:  # pragma: no cover - no Ray: nothing to forget
        return False
