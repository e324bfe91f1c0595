"""Per-key quotas at the gateway: 429 with Retry-After and X-RateLimit-* headers, recovery after
the window, and no state for keys without limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from lollms_server.core.errors import RateLimitError
from lollms_server.core.quotas import WINDOW_SECONDS, KeyQuotas
from lollms_server.core.security import KeyLimits, Principal


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(**limits: int) -> Principal:
    return Principal(name="k", limits=KeyLimits(**limits))


def test_requests_per_minute_refuse_then_recover_after_the_window() -> None:
    clock = Clock()
    quotas = KeyQuotas(clock)
    principal = key(requests_per_minute=3)
    for _ in range(3):
        quotas.check(principal)
        clock.now += 1
    with pytest.raises(RateLimitError) as refused:
        quotas.check(principal)
    error = refused.value
    assert error.status_code == 429 and error.error_type == "rate_limit_error"
    assert error.headers["X-RateLimit-Limit"] == "3" and error.headers["X-RateLimit-Remaining"] == "0"
    assert int(error.headers["Retry-After"]) == int(error.headers["X-RateLimit-Reset"]) == 57
    clock.now += WINDOW_SECONDS - 3 + 0.1  # the first request left the window
    quotas.check(principal)


def test_tokens_per_minute_count_generated_tokens() -> None:
    clock = Clock()
    quotas = KeyQuotas(clock)
    principal = key(tokens_per_minute=100)
    quotas.check(principal)
    quotas.add_tokens(principal, 60)
    quotas.check(principal)
    quotas.add_tokens(principal, 40)
    with pytest.raises(RateLimitError) as refused:
        quotas.check(principal)
    assert refused.value.headers["X-RateLimit-Limit"] == "100"
    clock.now += WINDOW_SECONDS + 1
    quotas.check(principal)


def test_max_concurrent_and_max_queued() -> None:
    quotas = KeyQuotas()
    principal = key(max_concurrent=1, max_queued=1)
    quotas.check(principal)
    end = quotas.started(principal)
    with pytest.raises(RateLimitError, match="runs 1"):
        quotas.check(principal)
    end()
    end()  # idempotent
    with quotas.waiting(principal):
        with pytest.raises(RateLimitError, match="waiting"):
            quotas.check(principal)
    quotas.check(principal)
    assert quotas.usage().get("k", {}).get("running", 0) == 0


def test_no_state_is_kept_for_keys_without_limits() -> None:
    quotas = KeyQuotas()
    for index in range(100):
        principal = Principal(name=f"key-{index}")
        quotas.check(principal)
        quotas.add_tokens(principal, 10)
        quotas.started(principal)()
        with quotas.waiting(principal):
            pass
    assert quotas.usage() == {}


@pytest.mark.parametrize("store", ["memory", "host file"])
async def test_admit_is_the_awaitable_admitting_of_the_host_stores(store: str, tmp_path: Path) -> None:
    """What GenerationService awaits: ``async with quotas.admit(...)``, ``await queued.start()``."""
    from lollms_server.core.quota_store import SharedKeyQuotas

    quotas = KeyQuotas() if store == "memory" else SharedKeyQuotas(tmp_path / "quotas.bin")
    principal = key(max_concurrent=1, max_queued=1, requests_per_minute=3)
    async with quotas.admit(principal) as queued:
        assert quotas.usage()["k"]["queued"] == 1
        with pytest.raises(RateLimitError, match="waiting"):
            async with quotas.admit(principal):
                pass
        end = await queued.start()
    await quotas.refresh()
    assert quotas.usage()["k"] == {
        "running": 1,
        "queued": 0,
        "requests_last_minute": 1,
        "tokens_last_minute": 0,
    }
    with pytest.raises(RateLimitError, match="runs 1"):
        async with quotas.admit(principal):
            pass
    end()
    end()  # idempotent
    async with quotas.admit(principal):  # left without starting: no longer waiting
        pass
    async with quotas.admit(principal):
        pass
    with pytest.raises(RateLimitError, match="3 requests per minute"):
        async with quotas.admit(principal):
            pass
    assert quotas.usage()["k"] == {
        "running": 0,
        "queued": 0,
        "requests_last_minute": 3,
        "tokens_last_minute": 0,
    }
