"""Quotas shared by the server processes of a host (``quota_store.SharedKeyQuotas``): two stores
on one file stand for two worker processes; a limit holds for both together."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lollms_server.core.config import config_from_dict
from lollms_server.core.errors import RateLimitError
from lollms_server.core.quota_store import SharedKeyQuotas, key_quotas
from lollms_server.core.quotas import WINDOW_SECONDS, KeyQuotas
from lollms_server.core.security import KeyLimits, Principal


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def key(**limits: int) -> Principal:
    return Principal(name="k", limits=KeyLimits(**limits))


def two_processes(tmp_path: Path, clock: Clock | None = None) -> tuple[SharedKeyQuotas, SharedKeyQuotas]:
    path = tmp_path / "run" / "quotas.bin"
    now = clock or time.time
    return SharedKeyQuotas(path, now, names=["b"]), SharedKeyQuotas(path, now, names=["b"])


def test_requests_per_minute_count_every_process(tmp_path: Path) -> None:
    clock = Clock()
    first, second = two_processes(tmp_path, clock)
    principal = key(requests_per_minute=3)
    first.check(principal)
    second.check(principal)
    first.check(principal)
    for quotas in (first, second):
        with pytest.raises(RateLimitError) as refused:
            quotas.check(principal)
        assert refused.value.headers["X-RateLimit-Limit"] == "3"
    clock.now += WINDOW_SECONDS + 1  # buckets of a second: a request leaves up to 1 s late
    second.check(principal)
    assert first.usage()["k"]["requests_last_minute"] == 1


def test_tokens_running_and_waiting_count_every_process(tmp_path: Path) -> None:
    first, second = two_processes(tmp_path)
    tokens = key(tokens_per_minute=100)
    first.add_tokens(tokens, 100)
    with pytest.raises(RateLimitError, match="tokens"):
        second.check(tokens)

    running = Principal(name="r", limits=KeyLimits(max_concurrent=1))
    end = first.started(running)
    with pytest.raises(RateLimitError, match="runs 1"):
        second.check(running)
    end()
    end()  # idempotent
    second.check(running)

    waiting = Principal(name="w", limits=KeyLimits(max_queued=1))
    with first.admitting(waiting):
        with pytest.raises(RateLimitError, match="waiting"), second.admitting(waiting):
            pass
    with second.admitting(waiting):
        assert second.usage()["w"]["queued"] == 1

    both = Principal(name="b", limits=KeyLimits(max_concurrent=1, max_queued=1))
    with first.admitting(both) as queued:
        end = queued.started()  # leaves the queue and runs, in one step
    assert second.usage()["b"]["running"] == 1 and second.usage()["b"]["queued"] == 0
    with pytest.raises(RateLimitError, match="runs 1"):
        second.check(both)
    end()
    assert second.usage().get("b", {}).get("running", 0) == 0


def test_concurrent_checks_from_two_processes_never_pass_the_limit(tmp_path: Path) -> None:
    first, second = two_processes(tmp_path)
    principal = key(requests_per_minute=10)
    accepted: list[bool] = []

    def send(quotas: SharedKeyQuotas) -> None:
        for _ in range(20):
            try:
                quotas.check(principal)
                accepted.append(True)
            except RateLimitError:
                accepted.append(False)

    threads = [threading.Thread(target=send, args=(quotas,)) for quotas in (first, second, first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert accepted.count(True) == 10 and len(accepted) == 80


CRASHING = """
import os, sys
from pathlib import Path
from lollms_server.core.quota_store import SharedKeyQuotas
from lollms_server.core.security import KeyLimits, Principal

quotas = SharedKeyQuotas(Path(sys.argv[1]))
quotas.started(Principal(name="k", limits=KeyLimits(max_concurrent=1)))
os._exit(0)  # dies with a running generation counted
"""


def test_the_counts_of_a_dead_process_are_dropped(tmp_path: Path) -> None:
    first, _ = two_processes(tmp_path)
    subprocess.run([sys.executable, "-c", CRASHING, str(first.path)], check=True, cwd=Path.cwd())
    principal = key(max_concurrent=1)
    with pytest.raises(RateLimitError, match="runs 1"):
        first.check(principal)  # the dead process's generation still counts...
    restarted = SharedKeyQuotas(first.path)  # ...until a process sees its pid is gone
    restarted.check(principal)
    first.check(principal)


def test_keys_without_limits_never_touch_the_file(tmp_path: Path) -> None:
    quotas, other = two_processes(tmp_path)
    for index in range(50):
        principal = Principal(name=f"free-{index}")
        quotas.check(principal)
        quotas.add_tokens(principal, 10)
        with quotas.admitting(principal) as queued:
            queued.started()()
    assert quotas.usage() == other.usage() == {}  # idle keys are not listed
    assert not any(name.startswith("free-") for name in quotas._index)


def test_one_process_keeps_quotas_in_memory_several_share_the_runtime_folder(tmp_path: Path) -> None:
    def config(workers: int) -> object:
        data = {"server": {"workers": workers}, "paths": {"runtime_folder": str(tmp_path / "run")}}
        return config_from_dict(data, environ={})

    single = key_quotas(config(1))  # type: ignore[arg-type]
    assert type(single) is KeyQuotas
    shared = key_quotas(config(2))  # type: ignore[arg-type]
    assert isinstance(shared, SharedKeyQuotas) and shared.path == tmp_path / "run" / "quotas.bin"
    assert (shared.path.stat().st_mode & 0o777) == 0o600


def test_a_slot_left_by_a_crashed_process_whose_pid_came_back_is_freed(tmp_path: Path) -> None:
    """A container restarts its server with the same pids, the runtime folder on a volume: the
    slot a killed process left under this pid is not this process's, and its counts go."""
    from lollms_server.core import quota_store

    path = tmp_path / "run" / "quotas.bin"
    running = key(max_concurrent=1)
    crashed = SharedKeyQuotas(path)
    crashed.started(running)  # killed while generating: never ended, never closed
    quota_store._LIVE_NONCES.discard(crashed._nonce)  # the new process never knew that store
    restarted = SharedKeyQuotas(path)
    restarted.check(running)  # the dead run no longer counts
    end = restarted.started(running)
    with pytest.raises(RateLimitError, match="runs 1"):
        restarted.check(running)
    end()
    restarted.close()
