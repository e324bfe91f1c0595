"""Per-instance gates: generations pass while no settings change is pending; a settings change
waits until the running generations of its instance have finished, and newly admitted ones wait
for it *without* their pool slot (they give it back and queue again once the change is done, so
the other instances of the pool keep serving). Requests still queued for a slot do not hold a
change back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class ChangeWaitTimeout(Exception):
    """A settings change waited longer than allowed for the instance's generations."""


class InstanceGate:
    """Many generations or one settings change (writer preference: a pending change stops new
    generations from starting, so it cannot wait forever behind a busy instance)."""

    def __init__(self) -> None:
        self._running = 0
        self._changing = False
        self._condition = asyncio.Condition()

    @property
    def running(self) -> int:
        return self._running

    async def enter(self) -> Callable[[], None]:
        """Wait until no change is pending, count one generation in; returns its exit."""
        async with self._condition:
            await self._condition.wait_for(lambda: not self._changing)
            self._running += 1
        return self._exit()

    def try_enter(self) -> Callable[[], None] | None:
        """Count one generation in at once, or None while a change is pending (never waits)."""
        if self._changing:
            return None
        self._running += 1
        return self._exit()

    async def opened(self) -> None:
        """Wait until no change is pending (counts nothing in)."""
        async with self._condition:
            await self._condition.wait_for(lambda: not self._changing)

    def _exit(self) -> Callable[[], None]:
        done = False

        def leave() -> None:
            nonlocal done
            if done:
                return
            done = True
            self._running -= 1
            if self._running == 0:
                try:
                    asyncio.get_running_loop().create_task(self._notify())
                except RuntimeError:  # no loop: nothing can be waiting on this gate
                    pass

        return leave

    async def _notify(self) -> None:
        async with self._condition:
            self._condition.notify_all()

    @asynccontextmanager
    async def changing(self, timeout: float | None = None) -> AsyncIterator[None]:
        """Hold the instance while its settings change: after its running generations, before new
        ones; ``ChangeWaitTimeout`` when that takes longer than ``timeout`` seconds (nothing
        held: the generations waiting meanwhile go on)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - loop.time())

        async with self._condition:
            try:
                await asyncio.wait_for(self._condition.wait_for(lambda: not self._changing), left())
            except asyncio.TimeoutError:
                raise ChangeWaitTimeout from None
            self._changing = True
            try:
                await asyncio.wait_for(self._condition.wait_for(lambda: self._running == 0), left())
            except BaseException as exc:
                self._changing = False
                self._condition.notify_all()
                if isinstance(exc, asyncio.TimeoutError):
                    raise ChangeWaitTimeout from None
                raise
        try:
            yield
        finally:
            async with self._condition:
                self._changing = False
                self._condition.notify_all()


class InstanceGates:
    """One gate per configured instance (the names come from the config: bounded)."""

    def __init__(self, names: list[str]) -> None:
        self._gates = {name: InstanceGate() for name in names}

    def of(self, name: str) -> InstanceGate:
        return self._gates.setdefault(name, InstanceGate())
