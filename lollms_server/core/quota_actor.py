"""The quota actor of a Ray cluster: one named, detached actor (``lollms-quotas``) keeps the
per-key counts of every gateway (``quota_cluster.ClusterKeyQuotas`` is the gateway side).

A plain class: ``ray.remote`` wraps it in the gateway (Ray is optional, so no decorator here).
Its methods are plain functions, so Ray runs them one at a time, in the order each gateway sent
them: every decision (count, refuse or record) is one step for the whole cluster, made by the
same :class:`~lollms_server.core.quotas.KeyQuotas` code as a single server process.

Each call names its gateway (a process) and, for a request, the gateway's id for it (a *hold*):
a hold is waiting, then running, until the gateway releases it (a key that limits neither
running nor waiting requests sends hold 0: its request is counted, nothing is held). A gateway
that holds something renews itself every few seconds with the list of its holds (any it no
longer lists are dropped);
the holds of a gateway silent for ``GATEWAY_SILENT_SECONDS`` (its process or host died) are
dropped with it. State is bounded: the configured keys' windows, the live gateways and their
live requests.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from lollms_server import __version__
from lollms_server.core.errors import RateLimitError
from lollms_server.core.quotas import KeyQuotas
from lollms_server.core.security import KeyLimits, Principal

GATEWAY_SILENT_SECONDS = 30.0
"""A gateway unheard for this long is gone: its waiting and running requests stop counting
(gateways renew every ``quota_cluster.RENEW_SECONDS`` while they hold something)."""
SWEEP_SECONDS = 1.0


Limits = tuple[int | None, int | None, int | None, int | None]
"""A key's ``KeyLimits`` as plain values, in field order: Ray sends them faster than a dataclass."""


def plain(limits: KeyLimits) -> Limits:
    return (limits.max_concurrent, limits.max_queued, limits.requests_per_minute, limits.tokens_per_minute)


@dataclass
class Hold:
    """One request of a gateway: waiting, or running once ``end`` is set."""

    principal: Principal
    end: Callable[[], None] | None = None


@dataclass
class Gateway:
    heard: float
    holds: dict[int, Hold] = field(default_factory=dict)


def refusal(error: RateLimitError) -> dict[str, Any]:
    """A 429 as plain values (the gateway raises it again with ``RateLimitError(**refusal)``)."""
    return {
        "message": error.message,
        "limit": int(error.headers["X-RateLimit-Limit"]),
        "remaining": int(error.headers["X-RateLimit-Remaining"]),
        "reset_seconds": error.retry_after,
        "reason": error.reason,
    }


class QuotaActor:
    """The cluster's per-key counts; every method is one atomic step."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.quotas = KeyQuotas(clock)
        self.gateways: dict[str, Gateway] = {}
        self._last_sweep = clock()

    def ready(self) -> dict[str, Any]:
        return {"version": __version__, "pid": os.getpid()}

    def _sweep(self, now: float) -> None:
        """Drop the gateways silent for too long, with their holds (at most once a second)."""
        if now - self._last_sweep < SWEEP_SECONDS:
            return
        self._last_sweep = now
        for name, silent in list(self.gateways.items()):
            if now - silent.heard > GATEWAY_SILENT_SECONDS:
                for hold in list(silent.holds):
                    self._drop(silent, hold)
                del self.gateways[name]

    def _gateway(self, gateway: str) -> Gateway:
        """``gateway``, heard now."""
        now = self.clock()
        self._sweep(now)
        entry = self.gateways.get(gateway)
        if entry is None:
            entry = self.gateways[gateway] = Gateway(now)
        entry.heard = now
        return entry

    def _drop(self, gateway: Gateway, hold: int) -> None:
        entry = gateway.holds.pop(hold, None)
        if entry is None:
            return
        if entry.end is None:
            self.quotas._unqueue(entry.principal)
        else:
            entry.end()

    def admit(self, gateway: str, hold: int, name: str, limits: Limits) -> dict[str, Any] | None:
        """Refuse a new request of the key ``name`` over one of ``limits`` (returns the 429's
        values), else count it (and count it waiting, as ``hold``; hold 0: a key that limits
        neither running nor waiting requests, nothing to hold); None: admitted."""
        entry = self._gateway(gateway)
        principal = Principal(name=name, limits=KeyLimits(*limits))
        try:
            if not hold:
                self.quotas.check(principal)
                return None
            self.quotas._admit(principal)
        except RateLimitError as error:
            return refusal(error)
        self._drop(entry, hold)  # an id used again (never, from a live gateway): counted once
        entry.holds[hold] = Hold(principal)
        return None

    def start(self, gateway: str, hold: int) -> None:
        """``hold`` holds its slot: no longer waiting, running (one step)."""
        entry = self._gateway(gateway).holds.get(hold)
        if entry is not None and entry.end is None:
            entry.end = self.quotas._start_queued(entry.principal)

    def release(self, gateway: str, hold: int) -> None:
        """``hold`` left the queue, or its generation ended (or it was never admitted)."""
        self._drop(self._gateway(gateway), hold)

    def add_tokens(self, gateway: str, name: str, limits: Limits, tokens: int) -> None:
        self._gateway(gateway)
        self.quotas.add_tokens(Principal(name=name, limits=KeyLimits(*limits)), tokens)

    def renew(self, gateway: str, holds: Iterable[int]) -> None:
        """``gateway`` is alive and holds ``holds``: any other hold of it was lost (a release
        sent while this actor did not answer) and stops counting."""
        entry = self._gateway(gateway)
        for hold in set(entry.holds) - set(holds):
            self._drop(entry, hold)

    def usage(self) -> dict[str, dict[str, int]]:
        """Every gateway's counts, per key (running, waiting, requests and tokens of the minute)."""
        self._sweep(self.clock())
        return {key: counts for key, counts in self.quotas.usage().items() if any(counts.values())}
