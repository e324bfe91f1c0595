"""Pool scheduling (DESIGN §6): slots, fair or FIFO queues, timeouts.

A pool has ``limit`` slots. Loading a model and every generation (a whole stream included)
hold one slot. Waiters wait in a bounded queue; a full queue or a wait past ``queue_timeout``
is a 503 with ``Retry-After`` (a :class:`PoolBusyError`, which also tells the waiter's place in
the queue and an ETA). A waiter that is cancelled (its client left) leaves the queue at once; a
slot handed to a waiter at its timeout is kept, and one handed to a waiter cancelled meanwhile
is passed on. Who asks is a :class:`Ticket`: the API key's name (anonymous callers share one),
its weight and its priority.

Who gets a freed slot is the pool's ``policy``:

- ``fifo``: strict arrival order (keys, weights and priorities are ignored; today's behaviour).
- ``fair`` (the default): weighted fair queuing on slot-seconds, by a *virtual clock* (in the
  manner of start-time fair queuing and CFS). Each key has a virtual time: the slot-seconds it
  has held divided by its weight. A running lease counts while it runs (held so far / weight)
  and is settled with its actual hold time when released, so a key is charged exactly what it
  used: the length of a generation is unknown when it is queued, so nothing is charged ahead.
  The pool's virtual time is the least virtual time among its active keys (waiting or running)
  and never goes back. A freed slot goes to the oldest request of the waiting key (FIFO within
  a key) whose next request has the least *virtual finish time*: its virtual time, plus its
  running leases counted for at least the pool's average hold time, plus that average for the
  request itself, over the key's weight (estimating the finish with the average hold keeps
  shares within one grant of the weights); ties go to the key with fewer running leases, then
  to the earlier request. A key that becomes active starts at the pool's virtual time when it
  was idle for more than ``IDLE_WINDOW_SECONDS`` or the pool was idle (past use is forgiven),
  else at the larger of its own and the pool's (no credit is saved up while idle; a debt is
  kept across short gaps such as a client's back-to-back requests). ``batch`` tickets are
  served only when no ``interactive`` one waits, unless they have waited ``batch_max_wait``
  seconds: then they compete as interactive. With a single key (every anonymous caller) and
  interactive tickets, ``fair`` is exactly FIFO.

Cost: granting a slot is O(waiters); positions are recomputed (O(waiters · log keys waiting))
on enqueue, release and leave, only while some waiter listens for them, and only the listeners
whose position changed are called. A key's state is forgotten once it has no waiter, no lease
and has been idle past the window (pruned on each operation; at most ``MAX_IDLE_KEYS`` idle
keys are kept in any case), so nothing grows with the key names seen.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from lollms_server.core.config import PoolConfig
from lollms_server.core.errors import ServiceUnavailableError

logger = logging.getLogger(__name__)

IDLE_WINDOW_SECONDS = 10.0
"""How long an idle key's virtual time is remembered (fair policy)."""
MAX_IDLE_KEYS = 4096
"""Idle keys remembered at most per pool, whatever the window."""

Clock = Callable[[], float]
PositionListener = Callable[[int, float], None]


@dataclass(frozen=True)
class Ticket:
    """Who asks for a slot: the API key's name, its weight and priority (``batch`` is served only
    when no interactive request waits, until it has waited ``batch_max_wait``)."""

    key: str = "anonymous"
    weight: float = 1.0
    priority: Literal["interactive", "batch"] = "interactive"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"A ticket's weight must be a positive number, not {self.weight!r}.")


class PoolBusyError(ServiceUnavailableError):
    """A 503 of a pool (queue full, queue timeout): ``queue_position`` is the waiter's place
    (1-based; for a full queue, the place at its end) and ``eta_seconds`` the estimated wait."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: int = 5,
        queue_position: int = 0,
        eta_seconds: float = 0.0,
        reason: str = "queue_full",
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.queue_position = queue_position
        self.eta_seconds = eta_seconds
        self.reason = reason
        """``queue_full`` or ``queue_timeout`` (the rejection metrics' label)."""

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["error"]["queue_position"] = self.queue_position
        return body

    def __reduce__(self) -> Any:  # keep the attributes across processes
        return (
            _rebuild_pool_busy,
            (self.message, self.retry_after, self.queue_position, self.eta_seconds, self.reason),
        )


def _rebuild_pool_busy(
    message: str, retry_after: int, position: int, eta: float, reason: str
) -> PoolBusyError:
    return PoolBusyError(
        message, retry_after=retry_after, queue_position=position, eta_seconds=eta, reason=reason
    )


class Lease:
    """One held slot of a pool; ``release()`` is idempotent."""

    def __init__(
        self,
        pool: Pool,
        wait_seconds: float,
        ticket: Ticket = Ticket(),
        acquired_at: float | None = None,
    ) -> None:
        self.pool = pool
        self.wait_seconds = wait_seconds
        self.ticket = ticket
        self.acquired_at = pool._clock() if acquired_at is None else acquired_at
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.pool._release(self)


@dataclass(eq=False)
class _Waiter:
    ticket: Ticket
    future: asyncio.Future[None]
    seq: int
    enqueued: float
    on_position: PositionListener | None
    position: int = 0
    granted_at: float = 0.0


@dataclass(eq=False)
class _KeyState:
    """What the fair policy knows of one key in one pool."""

    virtual_time: float
    weight: float = 1.0
    waiters: deque[_Waiter] = field(default_factory=deque)
    running: int = 0
    running_since: float = 0.0  # the sum of the grant times of the running leases
    served_seconds: float = 0.0
    idle_since: float = 0.0  # meaningful while idle only

    def in_flight(self, now: float) -> float:
        """Slot-seconds held so far by the running leases."""
        return self.running * now - self.running_since if self.running else 0.0

    def current(self, now: float) -> float:
        return self.virtual_time + self.in_flight(now) / self.weight


class Pool:
    """A named set of ``limit`` slots with a bounded queue ordered by the pool's policy."""

    def __init__(
        self,
        name: str,
        config: PoolConfig,
        clock: Clock = time.monotonic,
        idle_window: float = IDLE_WINDOW_SECONDS,
    ) -> None:
        self.name = name
        self.config = config
        self.active = 0
        self._clock = clock
        self._idle_window = idle_window
        self._waiters: dict[_Waiter, None] = {}  # every waiter, in arrival order
        self._active: dict[str, _KeyState] = {}  # keys waiting or running
        self._idle: dict[str, _KeyState] = {}  # keys idle within the window, oldest first
        self._virtual_time = 0.0
        self._seq = itertools.count()
        self._listeners = 0  # waiters with an ``on_position``
        self.served = 0
        self.rejected = 0
        self.timed_out = 0
        self.total_wait_seconds = 0.0
        self.max_wait_seconds = 0.0
        self._hold_average = 1.0

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def virtual_time(self) -> float:
        return self._virtual_time

    def eta(self, position: int) -> float:
        """Estimated seconds until the waiter at ``position`` (1-based) gets a slot."""
        return self._hold_average * position / self.config.limit

    def retry_after(self, position: int | None = None) -> int:
        """A rough guess of when a slot frees up (for the waiter at ``position``; default: one
        more at the end of the queue), for the Retry-After header."""
        estimate = self.eta(self.queued + 1 if position is None else position)
        return max(1, min(120, math.ceil(estimate)))

    async def acquire(self, ticket: Ticket = Ticket(), on_position: PositionListener | None = None) -> Lease:
        now = self._clock()
        self._tick(now)
        if self.active < self.config.limit and not self._waiters:
            self.active += 1
            self._start(self._activate(ticket, now), now)
            return self._granted(ticket, 0.0, now)
        if len(self._waiters) >= self.config.queue_size:
            self.rejected += 1
            position = len(self._waiters) + 1
            eta = self.eta(position)
            raise PoolBusyError(
                f"Pool '{self.name}' is busy: the queue is full ({self.config.queue_size} waiting; "
                f"a slot in about {eta:.0f} s).",
                retry_after=self.retry_after(position),
                queue_position=position,
                eta_seconds=round(eta, 3),
            )
        state = self._activate(ticket, now)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(ticket, future, next(self._seq), now, on_position)
        state.waiters.append(waiter)
        self._waiters[waiter] = None
        if on_position is not None:
            self._listeners += 1
        self._reposition(now)
        try:
            done, _ = await asyncio.wait({future}, timeout=self.config.queue_timeout)
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        if not done and not future.done():  # a slot granted at the timeout is kept
            position = self._position_of(waiter, self._clock())
            self._abandon(waiter)
            self.timed_out += 1
            eta = self.eta(position)
            raise PoolBusyError(
                f"Pool '{self.name}' is busy: no slot within {self.config.queue_timeout:g} s "
                f"(position {position} in the queue; a slot in about {eta:.0f} s).",
                retry_after=self.retry_after(position),
                queue_position=position,
                eta_seconds=round(eta, 3),
                reason="queue_timeout",
            )
        return self._granted(ticket, self._clock() - waiter.enqueued, waiter.granted_at)

    def _granted(self, ticket: Ticket, waited: float, acquired_at: float) -> Lease:
        self.served += 1
        self.total_wait_seconds += waited
        self.max_wait_seconds = max(self.max_wait_seconds, waited)
        return Lease(self, waited, ticket, acquired_at)

    # ---- key bookkeeping (fair policy) --------------------------------------
    def _tick(self, now: float) -> None:
        """Forget keys idle past the window, and move the pool's virtual time forward."""
        while self._idle:
            key, state = next(iter(self._idle.items()))
            if now - state.idle_since <= self._idle_window and len(self._idle) <= MAX_IDLE_KEYS:
                break
            del self._idle[key]
        if self._active:
            low = min(state.current(now) for state in self._active.values())
            if low > self._virtual_time:
                self._virtual_time = low

    def _activate(self, ticket: Ticket, now: float) -> _KeyState:
        state = self._active.get(ticket.key)
        if state is None:
            pool_idle = not self._active
            state = self._idle.pop(ticket.key, None)
            if state is None:
                state = _KeyState(virtual_time=self._virtual_time)
            elif pool_idle or now - state.idle_since > self._idle_window:
                state.virtual_time = self._virtual_time  # past use forgiven
            else:
                state.virtual_time = max(state.virtual_time, self._virtual_time)
            self._active[ticket.key] = state
        state.weight = ticket.weight
        return state

    def _start(self, state: _KeyState, now: float) -> None:
        state.running += 1
        state.running_since += now

    def _settle(self, ticket: Ticket, granted_at: float, now: float) -> None:
        """A lease of ``ticket`` ends: charge its key the slot-seconds it held."""
        state = self._active.get(ticket.key)
        if state is None or state.running <= 0:  # cannot happen; never corrupt the books
            return
        held = max(0.0, now - granted_at)
        state.running -= 1
        state.running_since = state.running_since - granted_at if state.running else 0.0
        state.virtual_time += held / ticket.weight
        state.served_seconds += held
        self._deactivate_if_idle(ticket.key, state, now)

    def _deactivate_if_idle(self, key: str, state: _KeyState, now: float) -> None:
        if state.running or state.waiters:
            return
        del self._active[key]
        state.idle_since = now
        self._idle[key] = state

    # ---- serve order -----------------------------------------------------------
    def _urgent(self, waiter: _Waiter, now: float) -> bool:
        return waiter.ticket.priority == "interactive" or now - waiter.enqueued >= self.config.batch_max_wait

    def _rank(self, state: _KeyState, now: float) -> float:
        """The virtual finish time of the key's next request, for ordering: its virtual time, its
        running leases counted for at least the pool's average hold time, plus the average hold
        time of the request itself (each over the key's weight)."""
        expected = max(state.in_flight(now), state.running * self._hold_average)
        return state.virtual_time + (expected + self._hold_average) / state.weight

    def _next(self, now: float) -> _Waiter | None:
        """The waiter the policy serves now (O(waiters))."""
        if self.config.policy == "fifo":
            return next(iter(self._waiters), None)
        best: tuple[float, int, int] | None = None
        chosen: _Waiter | None = None
        best_batch: tuple[float, int, int] | None = None
        chosen_batch: _Waiter | None = None
        for state in self._active.values():
            if not state.waiters:
                continue
            head = next((waiter for waiter in state.waiters if self._urgent(waiter, now)), None)
            if head is not None:
                rank = (self._rank(state, now), state.running, head.seq)
                if best is None or rank < best:
                    best, chosen = rank, head
            elif chosen is None:
                head = state.waiters[0]
                rank = (self._rank(state, now), state.running, head.seq)
                if best_batch is None or rank < best_batch:
                    best_batch, chosen_batch = rank, head
        return chosen if chosen is not None else chosen_batch

    def _serve_order(self, now: float) -> list[_Waiter]:
        """Every waiter in the order the policy would serve them now, each grant charging its key
        the average hold time (O(waiters · log keys))."""
        if self.config.policy == "fifo":
            return list(self._waiters)
        states = [state for state in self._active.values() if state.waiters]
        ranks = [self._rank(state, now) for state in states]
        urgent: list[list[_Waiter]] = []
        later: list[list[_Waiter]] = []
        for state in states:
            first: list[_Waiter] = []
            second: list[_Waiter] = []
            for waiter in state.waiters:
                (first if self._urgent(waiter, now) else second).append(waiter)
            urgent.append(first)
            later.append(second)
        order: list[_Waiter] = []
        for lists in (urgent, later):
            heap = [
                (ranks[index], states[index].running, waiters[0].seq, index)
                for index, waiters in enumerate(lists)
                if waiters
            ]
            heapq.heapify(heap)
            taken = [0] * len(lists)
            while heap:
                rank, running, _, index = heapq.heappop(heap)
                waiters = lists[index]
                order.append(waiters[taken[index]])
                taken[index] += 1
                ranks[index] = rank + self._hold_average / states[index].weight
                if taken[index] < len(waiters):
                    heapq.heappush(heap, (ranks[index], running, waiters[taken[index]].seq, index))
        return order

    def _position_of(self, waiter: _Waiter, now: float) -> int:
        if self._listeners:
            return waiter.position or len(self._waiters)  # kept up to date
        order = self._serve_order(now)
        return order.index(waiter) + 1 if waiter in self._waiters else len(order) + 1

    def _reposition(self, now: float) -> None:
        """Tell the listening waiters whose place changed."""
        if not self._listeners:
            return
        for position, waiter in enumerate(self._serve_order(now), start=1):
            if waiter.position == position:
                continue
            waiter.position = position
            if waiter.on_position is not None:
                try:
                    waiter.on_position(position, round(self.eta(position), 3))
                except Exception:  # noqa: BLE001 - a listener never breaks the pool
                    logger.exception("A queue position listener of pool %s failed", self.name)

    # ---- hand-over ---------------------------------------------------------------
    def _remove(self, waiter: _Waiter) -> bool:
        """Take ``waiter`` out of the queue; whether it was there."""
        if waiter not in self._waiters:
            return False
        del self._waiters[waiter]
        if waiter.on_position is not None:
            self._listeners -= 1
        state = self._active.get(waiter.ticket.key)
        if state is not None:
            try:
                state.waiters.remove(waiter)
            except ValueError:
                pass
        return True

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiter leaves: if the slot was already handed to it, pass it on."""
        now = self._clock()
        self._tick(now)
        if waiter.future.done() and not waiter.future.cancelled():
            self._settle(waiter.ticket, waiter.granted_at, now)
            self._hand_over(now)
            return
        waiter.future.cancel()
        if self._remove(waiter):
            state = self._active.get(waiter.ticket.key)
            if state is not None:
                self._deactivate_if_idle(waiter.ticket.key, state, now)
            self._reposition(now)

    def _release(self, lease: Lease) -> None:
        now = self._clock()
        self._tick(now)
        self._hold_average = 0.8 * self._hold_average + 0.2 * max(0.0, now - lease.acquired_at)
        self._settle(lease.ticket, lease.acquired_at, now)
        self._hand_over(now)

    def _hand_over(self, now: float) -> None:
        """A slot is free: hand it to the next waiter (``active`` is unchanged) or free it."""
        while self._waiters:
            waiter = self._next(now)
            if waiter is None:  # cannot happen: every waiting key is active
                break
            self._remove(waiter)
            if waiter.future.done():  # defensive: a waiter already gone
                continue
            waiter.granted_at = now
            self._start(self._active[waiter.ticket.key], now)
            waiter.future.set_result(None)
            self._reposition(now)
            return
        self.active -= 1

    # ---- observability -------------------------------------------------------------
    def waiting(self) -> list[dict[str, Any]]:
        """The waiting requests in the order they would be served now."""
        now = self._clock()
        self._tick(now)
        return [
            {
                "key": waiter.ticket.key,
                "priority": waiter.ticket.priority,
                "waited_seconds": round(now - waiter.enqueued, 3),
                "position": position,
            }
            for position, waiter in enumerate(self._serve_order(now), start=1)
        ]

    def usage(self) -> dict[str, dict[str, Any]]:
        """Per key seen lately: its running leases, virtual time and slot-seconds served."""
        now = self._clock()
        self._tick(now)
        return {
            key: {
                "running": state.running,
                "virtual_time": round(state.current(now), 4),
                "served_seconds": round(state.served_seconds + state.in_flight(now), 4),
            }
            for key, state in itertools.chain(self._active.items(), self._idle.items())
        }
