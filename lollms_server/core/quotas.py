"""Per-key quotas, kept by the gateway across every pool: running generations
(``max_concurrent``), requests waiting for a slot (``max_queued``), requests and generated
tokens per minute (sliding 60-second windows). Over a limit: 429 ``rate_limit_error`` with
``Retry-After`` and ``X-RateLimit-*`` headers (:class:`~lollms_server.errors.RateLimitError`).

State is kept per key *name* (keys come from the configuration, so it is bounded; names are
unique) and only for keys that have a limit; windows drop what is older than a minute. One
server process keeps it in memory; the processes of ``--workers N`` share it through a file of
the runtime folder (``quota_store``), so a limit holds for the host, not per process; in Ray mode
one actor of the cluster keeps it for every gateway (``quota_cluster``, ``quota_actor``).

``GenerationService`` uses any of them through :class:`Quotas`: ``async with quotas.admit(principal)
as queued`` (an awaitable step: the cluster's store asks its actor), ``await queued.start()`` once
the request holds its slot, ``add_tokens`` and ``usage`` (after ``await quotas.refresh()``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Protocol

from lollms_server.core.errors import RateLimitError
from lollms_server.core.security import KeyLimits, Principal

WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class Usage:
    """A key's use at one moment: requests and generated tokens in the window (and when the
    oldest of each entered it), running generations, waiting requests."""

    requests: int
    first_request: float
    tokens: int
    first_tokens: float
    running: int
    queued: int


def refuse_over_limits(limits: KeyLimits, now: float, usage: Usage) -> None:
    """Raise the 429 of the first limit ``usage`` has reached (a new request would pass it)."""
    if limits.requests_per_minute is not None and usage.requests >= limits.requests_per_minute:
        raise RateLimitError(
            f"This API key is over its {limits.requests_per_minute} requests per minute.",
            limit=limits.requests_per_minute,
            remaining=0,
            reset_seconds=usage.first_request + WINDOW_SECONDS - now,
        )
    if limits.tokens_per_minute is not None and usage.tokens >= limits.tokens_per_minute:
        raise RateLimitError(
            f"This API key is over its {limits.tokens_per_minute} generated tokens per minute.",
            limit=limits.tokens_per_minute,
            remaining=0,
            reset_seconds=usage.first_tokens + WINDOW_SECONDS - now,
        )
    if limits.max_concurrent is not None and usage.running >= limits.max_concurrent:
        raise RateLimitError(
            f"This API key already runs {limits.max_concurrent} generations.",
            reason="concurrency",
            limit=limits.max_concurrent,
            remaining=0,
            reset_seconds=1,
        )
    if limits.max_queued is not None and usage.queued >= limits.max_queued:
        raise RateLimitError(
            f"This API key already has {limits.max_queued} requests waiting.",
            reason="concurrency",
            limit=limits.max_queued,
            remaining=0,
            reset_seconds=1,
        )


def limited(principal: Principal) -> bool:
    """Whether ``principal`` has any limit (keys without one are never counted beyond this process)."""
    limits = principal.limits
    return any(
        value is not None
        for value in (
            limits.requests_per_minute,
            limits.tokens_per_minute,
            limits.max_concurrent,
            limits.max_queued,
        )
    )


class QueuedRequest(Protocol):
    """What ``Quotas.admit`` yields: a request counted waiting."""

    running: bool

    async def start(self) -> Callable[[], None]:
        """It holds its slot: no longer waiting, running (one step); returns the end of that
        (idempotent, callable from any thread)."""
        ...


class Quotas(Protocol):
    """The per-key quotas ``GenerationService`` keeps: :class:`KeyQuotas` (one process),
    ``quota_store.SharedKeyQuotas`` (the processes of a host), ``quota_cluster.ClusterKeyQuotas``
    (every gateway of a Ray cluster)."""

    def admit(self, principal: Principal) -> AbstractAsyncContextManager[QueuedRequest]:
        """Refuse (429) or count the request waiting, as one step; it waits (for its model and
        slot) inside the block; leaving it without ``start`` stops counting it."""
        ...

    def add_tokens(self, principal: Principal, tokens: int) -> None: ...

    async def refresh(self) -> None:
        """Fetch what ``usage`` reports when it is kept elsewhere."""
        ...

    def usage(self) -> dict[str, dict[str, int]]: ...


class Queued:
    """A request counted waiting by ``KeyQuotas.admitting``."""

    def __init__(self, quotas: KeyQuotas, principal: Principal) -> None:
        self.quotas = quotas
        self.principal = principal
        self.running = False

    def started(self) -> Callable[[], None]:
        """It holds its slot: no longer waiting, running (one step); returns the end of that."""
        if self.running:
            raise RuntimeError("started twice")
        self.running = True
        return self.quotas._start_queued(self.principal)

    async def start(self) -> Callable[[], None]:
        """``started`` for the event loop (``QueuedRequest``): the same fast step."""
        return self.started()


class KeyQuotas:
    """The quotas of every key of one gateway process (in memory: the server runs one process;
    with ``workers > 1`` see ``quota_store.SharedKeyQuotas``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.running: dict[str, int] = {}
        self.queued: dict[str, int] = {}
        self._requests: dict[str, deque[float]] = {}
        self._tokens: dict[str, deque[tuple[float, int]]] = {}

    def _trim(self, key: str) -> None:
        horizon = self.clock() - WINDOW_SECONDS
        requests = self._requests.get(key)
        while requests and requests[0] <= horizon:
            requests.popleft()
        if requests is not None and not requests:
            del self._requests[key]
        tokens = self._tokens.get(key)
        while tokens and tokens[0][0] <= horizon:
            tokens.popleft()
        if tokens is not None and not tokens:
            del self._tokens[key]

    def check(self, principal: Principal) -> None:
        """Refuse a new request of ``principal`` over one of its limits, else count it."""
        limits, key = principal.limits, principal.name
        self._trim(key)
        now = self.clock()
        requests = self._requests.get(key, deque())
        tokens = self._tokens.get(key, deque())
        refuse_over_limits(
            limits,
            now,
            Usage(
                requests=len(requests),
                first_request=requests[0] if requests else now,
                tokens=sum(count for _, count in tokens),
                first_tokens=tokens[0][0] if tokens else now,
                running=self.running.get(key, 0),
                queued=self.queued.get(key, 0),
            ),
        )
        if limits.requests_per_minute is not None:
            self._requests.setdefault(key, deque()).append(now)

    @contextmanager
    def admitting(self, principal: Principal) -> Iterator[Queued]:
        """``check`` and count the request waiting, as one step; it waits (for its model and
        slot) inside the block, and ``Queued.started`` turns it into a running generation."""
        self._admit(principal)
        with self._waiting(principal) as queued:
            yield queued

    @contextmanager
    def counting(self, principal: Principal) -> Iterator[Queued]:
        """``admitting`` without the decision, made elsewhere (the cluster's quota actor) for a
        key that limits neither running nor waiting requests: counted here, for ``usage``."""
        self._count_queued(principal.name, 1)
        with self._waiting(principal) as queued:
            yield queued

    @contextmanager
    def _waiting(self, principal: Principal) -> Iterator[Queued]:
        """A request already counted waiting: no longer counted if it leaves before it starts."""
        queued = Queued(self, principal)
        try:
            yield queued
        finally:
            if not queued.running:
                self._unqueue(principal)

    @asynccontextmanager
    async def admit(self, principal: Principal) -> AsyncIterator[Queued]:
        """``admitting`` for the event loop (``Quotas``): in memory, or in the host's file, it is
        the same fast step."""
        with self.admitting(principal) as queued:
            yield queued

    async def refresh(self) -> None:
        """Nothing to fetch: ``usage`` reads this process (and the host's file)."""

    # the steps of ``admitting`` (``quota_store.SharedKeyQuotas`` does each in one transaction)
    def _admit(self, principal: Principal) -> None:
        self.check(principal)
        self._count_queued(principal.name, 1)

    def _unqueue(self, principal: Principal) -> None:
        self._count_queued(principal.name, -1)

    def _start_queued(self, principal: Principal) -> Callable[[], None]:
        self._unqueue(principal)
        return self.started(principal)

    def _count_queued(self, key: str, delta: int) -> None:
        self.queued[key] = self.queued.get(key, 0) + delta
        if not self.queued[key]:
            del self.queued[key]

    @contextmanager
    def waiting(self, principal: Principal) -> Iterator[None]:
        """While a request of ``principal`` waits for its slot (and its model loads)."""
        self._count_queued(principal.name, 1)
        try:
            yield
        finally:
            self._count_queued(principal.name, -1)

    def started(self, principal: Principal) -> Callable[[], None]:
        """Count a running generation of ``principal``; returns its (idempotent) end."""
        key = principal.name
        self.running[key] = self.running.get(key, 0) + 1
        ended = False

        def end() -> None:
            nonlocal ended
            if not ended:
                ended = True
                self.running[key] -= 1
                if not self.running[key]:
                    del self.running[key]

        return end

    def add_tokens(self, principal: Principal, tokens: int) -> None:
        """Generated tokens count against ``tokens_per_minute`` (kept only for keys with one)."""
        if tokens > 0 and principal.limits.tokens_per_minute is not None:
            self._tokens.setdefault(principal.name, deque()).append((self.clock(), tokens))

    def usage(self) -> dict[str, dict[str, int]]:
        """Running, waiting, requests and tokens of the last minute, per key."""
        keys = set(self.running) | set(self.queued) | set(self._requests) | set(self._tokens)
        for key in keys:
            self._trim(key)
        return {
            key: {
                "running": self.running.get(key, 0),
                "queued": self.queued.get(key, 0),
                "requests_last_minute": len(self._requests.get(key, ())),
                "tokens_last_minute": sum(count for _, count in self._tokens.get(key, ())),
            }
            for key in sorted(keys)
        }
