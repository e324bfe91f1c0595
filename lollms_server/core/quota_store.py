"""Per-key quotas shared by the server processes of one host (``--workers N``).

Each uvicorn worker process has its own memory, so in-memory windows let a key through N times
as often. Here the state of the keys that have a limit lives in one file of the runtime folder,
mapped in memory by every process (``mmap``), and every decision (count, decide, record) is made
holding an exclusive ``flock`` on it: of two processes checking the same key at once, the second
sees the first one's request. A decision costs two system calls and a few array reads, no I/O.

Layout (native 64-bit integers): a header; a table of process slots (pid and a nonce: a process
that dies leaves its slot behind, freed with its counts as soon as another process sees the pid is
gone, or a process of the same pid sees the nonce is none of its own); a table of keys (a
63-bit hash of the name; entries are reused once idle); per key, 61
one-second buckets of requests and of generated tokens (a sliding minute that never lets more
through than the exact one: a request leaves it up to a second late) and, per process slot, its
running and waiting requests.

Keys without limits never touch the file (their counts stay in memory, for ``usage``).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock: one process per host there
    fcntl = None  # type: ignore[assignment]

from lollms_server.core.config import AppConfig
from lollms_server.core.errors import ConfigError, RateLimitError
from lollms_server.core.quota_cluster import ClusterKeyQuotas
from lollms_server.core.quotas import WINDOW_SECONDS, KeyQuotas, Quotas, Usage, refuse_over_limits
from lollms_server.core.quotas import limited as _limited
from lollms_server.core.security import KeyStore, Principal

MAGIC = 0x4C4F4C4D51554F31  # "LOLMQUO1": the layout below (a new layout needs a new MAGIC)
PROCESSES = 128
"""Process slots (``server.workers`` is at most 64; restarted workers reuse dead ones)."""
MAX_KEYS = 1024
"""Keys with limits the file holds at once (they come from the configuration)."""
BUCKETS = 61
"""One-second buckets of a window: 61, so a request counts for at least its full 60 s."""
DEAD_CHECK_SECONDS = 5.0

_HEADER = 8
_PROCESS_WORDS = 2  # pid, nonce
_KEY_TABLE = _HEADER + PROCESSES * _PROCESS_WORDS  # one word per key: its name's hash (0: free)
_KEYS = _KEY_TABLE + MAX_KEYS
_REQUESTS = 0  # per key: BUCKETS x (second, count)
_TOKENS = BUCKETS * 2  # BUCKETS x (second, tokens)
_HOLDS = BUCKETS * 4  # PROCESSES x (running, queued)
_KEY_WORDS = _HOLDS + PROCESSES * 2
WORDS = _KEYS + MAX_KEYS * _KEY_WORDS


_LIVE_NONCES: set[int] = set()
"""The nonces of this process's open stores: a slot holding this process's pid with another
nonce was left by a dead process whose pid came back (a restarted container), not by us."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _name_hash(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little") >> 1 or 1


class SharedKeyQuotas(KeyQuotas):
    """``KeyQuotas`` whose limited keys are counted in a file every process of the host maps
    (same interface; the decisions of ``refuse_over_limits``)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time, names: Iterable[str] = ()) -> None:
        """``names``: the limited keys ``usage`` reports host-wide even before this process saw them."""
        super().__init__(clock)
        self.names = frozenset(names)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self._lock = threading.Lock()  # the generation's end may run in another thread
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(path, flags, 0o600)
        self._index: dict[str, int] = {}
        with self._locked_file(map_only=True):
            pass
        self._nonce = secrets.randbits(62) or 1
        _LIVE_NONCES.add(self._nonce)  # before the slot: another store here must not free it
        try:
            with self._locked():
                self._slot = self._claim_slot()
        except BaseException:
            _LIVE_NONCES.discard(self._nonce)
            raise
        self._last_dead_check = time.monotonic()

    # ---- the file ----------------------------------------------------------------------------
    @contextmanager
    def _locked_file(self, map_only: bool = False) -> Iterator[None]:
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if map_only:  # first use: size, map and (if new or foreign) initialize the file
                size = WORDS * 8
                if os.fstat(self._fd).st_size < size:  # never shrunk: another process may map it
                    os.ftruncate(self._fd, size)  # zeros: every table empty
                self._map = mmap.mmap(self._fd, size)
                self._words = memoryview(self._map).cast("q")
                if self._words[0] != MAGIC:  # new, or another layout: start empty
                    self._words[:WORDS] = memoryview(bytes(size)).cast("q")
                    self._words[0] = MAGIC
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    @contextmanager
    def _locked(self) -> Iterator[list[int] | memoryview]:
        with self._lock, self._locked_file():
            yield self._words

    def close(self) -> None:
        """Free this process's slot and its counts (a clean exit)."""
        with self._locked():
            self._free_slot(self._slot)
        _LIVE_NONCES.discard(self._nonce)
        self._words.release()
        self._map.close()
        os.close(self._fd)

    def _dead(self, slot: int) -> bool:
        """The process of a claimed ``slot`` is gone (or it is a former process of our pid)."""
        pid, nonce = self._words[_HEADER + slot * 2], self._words[_HEADER + slot * 2 + 1]
        if pid == os.getpid():
            return nonce not in _LIVE_NONCES
        return not _alive(pid)

    def _claim_slot(self) -> int:
        words = self._words
        free = None
        for slot in range(PROCESSES):
            pid = words[_HEADER + slot * 2]
            if pid == 0 or self._dead(slot):
                if pid:
                    self._free_slot(slot)
                free = slot if free is None else free
        if free is None:
            raise ConfigError(f"{self.path}: more than {PROCESSES} server processes share these quotas")
        words[_HEADER + free * 2] = os.getpid()
        words[_HEADER + free * 2 + 1] = self._nonce
        return free

    def _free_slot(self, slot: int) -> None:
        words = self._words
        for entry in range(MAX_KEYS):
            if words[_KEY_TABLE + entry]:
                base = _KEYS + entry * _KEY_WORDS + _HOLDS + slot * 2
                words[base] = words[base + 1] = 0
        words[_HEADER + slot * 2] = words[_HEADER + slot * 2 + 1] = 0

    def _drop_dead_processes(self) -> None:
        self._last_dead_check = time.monotonic()
        words = self._words
        for slot in range(PROCESSES):
            pid = words[_HEADER + slot * 2]
            if pid and slot != self._slot and self._dead(slot):
                self._free_slot(slot)

    def _entry(self, key: str) -> int:
        """The base of ``key``'s counts (a table entry found or taken; called holding the lock)."""
        words, wanted = self._words, _name_hash(key)
        cached = self._index.get(key)
        if cached is not None and words[_KEY_TABLE + cached] == wanted:
            return _KEYS + cached * _KEY_WORDS
        start = wanted % MAX_KEYS
        free = None
        for probe in range(MAX_KEYS):
            entry = (start + probe) % MAX_KEYS
            held = words[_KEY_TABLE + entry]
            if held == wanted:
                self._index[key] = entry
                return _KEYS + entry * _KEY_WORDS
            if free is None and (held == 0 or self._idle(entry)):
                free = entry
        if free is None:
            raise RateLimitError(
                f"The quota table holds {MAX_KEYS} busy keys.",
                reason="concurrency",
                limit=MAX_KEYS,
                remaining=0,
                reset_seconds=WINDOW_SECONDS,
            )
        base = _KEYS + free * _KEY_WORDS
        words[base : base + _KEY_WORDS] = memoryview(bytes(_KEY_WORDS * 8)).cast("q")
        words[_KEY_TABLE + free] = wanted
        self._index[key] = free
        return base

    def _idle(self, entry: int) -> bool:
        """A key whose minute is over and that nothing runs or waits for (its entry may go)."""
        words, base = self._words, _KEYS + entry * _KEY_WORDS
        horizon = int(self.clock()) - BUCKETS
        if any(words[base + index * 2] > horizon for index in range(BUCKETS * 2)):
            return False
        return not any(words[base + _HOLDS : base + _KEY_WORDS])

    # ---- counts --------------------------------------------------------------------------------
    def _window(self, base: int, now: float) -> tuple[int, float]:
        """The sum of the buckets at ``base`` still in the window and when the oldest counted
        one leaves it."""
        words, second = self._words, int(now)
        total, oldest = 0, second
        for index in range(BUCKETS):
            at = words[base + index * 2]
            if at > second - BUCKETS and words[base + index * 2 + 1]:
                total += words[base + index * 2 + 1]
                oldest = min(oldest, at)
        return total, float(oldest + BUCKETS) - WINDOW_SECONDS  # refuse_over_limits adds the minute

    def _add(self, base: int, now: float, count: int) -> None:
        words, second = self._words, int(now)
        bucket = base + (second % BUCKETS) * 2
        if words[bucket] != second:
            words[bucket], words[bucket + 1] = second, 0
        words[bucket + 1] += count

    def _hold(self, base: int, running: int = 0, queued: int = 0) -> None:
        slot = base + _HOLDS + self._slot * 2
        self._words[slot] += running
        self._words[slot + 1] += queued

    def _usage(self, base: int, now: float) -> Usage:
        words = self._words
        requests, first_request = self._window(base + _REQUESTS, now)
        tokens, first_tokens = self._window(base + _TOKENS, now)
        holds = words[base + _HOLDS : base + _KEY_WORDS]
        return Usage(
            requests=requests,
            first_request=first_request,
            tokens=tokens,
            first_tokens=first_tokens,
            running=sum(holds[0::2]),
            queued=sum(holds[1::2]),
        )

    def _decide(self, principal: Principal, queue: bool) -> None:
        """Count, refuse (429) or record a request of ``principal``, and with ``queue`` count it
        waiting, in one step under the lock."""
        limits = principal.limits
        with self._locked():
            if time.monotonic() - self._last_dead_check > DEAD_CHECK_SECONDS:
                self._drop_dead_processes()
            base, now = self._entry(principal.name), self.clock()
            refuse_over_limits(limits, now, self._usage(base, now))
            if limits.requests_per_minute is not None:
                self._add(base + _REQUESTS, now, 1)
            if queue and limits.max_queued is not None:
                self._hold(base, queued=1)

    def check(self, principal: Principal) -> None:
        if _limited(principal):
            self._decide(principal, queue=False)

    def _admit(self, principal: Principal) -> None:
        if _limited(principal):
            self._decide(principal, queue=True)  # checked and counted waiting at once
        self._count_queued(principal.name, 1)

    def _unqueue(self, principal: Principal) -> None:
        self._count_queued(principal.name, -1)
        if principal.limits.max_queued is not None:
            with self._locked():
                self._hold(self._entry(principal.name), queued=-1)

    def _start_queued(self, principal: Principal) -> Callable[[], None]:
        limits = principal.limits
        self._count_queued(principal.name, -1)
        local_end = super().started(principal)
        if limits.max_queued is None and limits.max_concurrent is None:
            return local_end
        with self._locked():  # leaves the queue and runs: one step
            self._hold(
                self._entry(principal.name),
                running=1 if limits.max_concurrent is not None else 0,
                queued=-1 if limits.max_queued is not None else 0,
            )
        return self._ending(principal, local_end)

    @contextmanager
    def waiting(self, principal: Principal) -> Iterator[None]:
        counted = principal.limits.max_queued is not None
        if counted:
            with self._locked():
                self._hold(self._entry(principal.name), queued=1)
        try:
            with super().waiting(principal):
                yield
        finally:
            if counted:
                with self._locked():
                    self._hold(self._entry(principal.name), queued=-1)

    def started(self, principal: Principal) -> Callable[[], None]:
        local_end = super().started(principal)
        if principal.limits.max_concurrent is None:
            return local_end
        with self._locked():
            self._hold(self._entry(principal.name), running=1)
        return self._ending(principal, local_end)

    def _ending(self, principal: Principal, local_end: Callable[[], None]) -> Callable[[], None]:
        if principal.limits.max_concurrent is None:
            return local_end
        ended = False

        def end() -> None:
            nonlocal ended
            local_end()
            if not ended:
                ended = True
                with self._locked():
                    self._hold(self._entry(principal.name), running=-1)

        return end

    def add_tokens(self, principal: Principal, tokens: int) -> None:
        if tokens > 0 and principal.limits.tokens_per_minute is not None:
            with self._locked():
                self._add(self._entry(principal.name) + _TOKENS, self.clock(), tokens)

    def usage(self) -> dict[str, dict[str, int]]:
        """This process's counts, with the host-wide ones of the limited keys (configured or seen)."""
        local = super().usage()
        now = self.clock()
        with self._locked():
            shared = {key: self._usage(self._entry(key), now) for key in self.names | set(self._index)}
        for key, use in shared.items():
            if use.requests or use.tokens or use.running or use.queued or key in local:
                local[key] = {
                    "running": use.running,
                    "queued": use.queued,
                    "requests_last_minute": use.requests,
                    "tokens_last_minute": use.tokens,
                }
        return dict(sorted(local.items()))


def key_quotas(config: AppConfig) -> Quotas:
    """In memory for one server process; shared through the runtime folder for ``workers > 1``;
    in Ray mode (when a key has a limit), kept by the cluster's quota actor for every gateway,
    with this host's store deciding while the actor does not answer (``quota_cluster``)."""
    host = host_quotas(config)
    if config.cluster.mode == "ray" and limited_names(config):
        return ClusterKeyQuotas(config.cluster, host)
    return host


def limited_names(config: AppConfig) -> list[str]:
    """The names of the configured keys that have a limit."""
    try:
        principals = KeyStore.from_config(config).principals()
    except ConfigError:  # no key (anonymous mode): nothing is limited
        principals = []
    return [principal.name for principal in principals if _limited(principal)]


def host_quotas(config: AppConfig) -> KeyQuotas:
    """In memory for one server process; shared through the runtime folder for ``workers > 1``."""
    if config.server.workers <= 1:
        return KeyQuotas()
    if fcntl is None:  # pragma: no cover
        raise ConfigError("server.workers > 1 needs flock (POSIX) to share the key quotas")
    limited = [
        entry
        for entry in config.security.api_keys
        if not isinstance(entry, str)
        and any(
            value is not None
            for value in (
                entry.requests_per_minute,
                entry.tokens_per_minute,
                entry.max_concurrent,
                entry.max_queued,
            )
        )
    ]
    if len(limited) > MAX_KEYS:
        raise ConfigError(f"security.api_keys: at most {MAX_KEYS} keys with quotas when server.workers > 1")
    return SharedKeyQuotas(Path(config.paths.runtime_folder) / "quotas.bin", names=limited_names(config))
