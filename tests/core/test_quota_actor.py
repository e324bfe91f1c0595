"""The cluster's quota actor (``quota_actor.QuotaActor``), as the plain object Ray wraps: one
count for every gateway, holds that end with their request or with their silent gateway."""

from __future__ import annotations

from lollms_server.core.errors import RateLimitError
from lollms_server.core.quota_actor import GATEWAY_SILENT_SECONDS, Limits, QuotaActor, plain
from lollms_server.core.quotas import WINDOW_SECONDS
from lollms_server.core.security import KeyLimits


def sent(**limits: int) -> Limits:
    """``KeyLimits`` as the gateway sends them."""
    return plain(KeyLimits(**limits))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_count_every_gateway() -> None:
    clock = Clock()
    actor = QuotaActor(clock)
    limits = sent(requests_per_minute=3)
    decisions = [actor.admit(gateway, hold, "k", limits) for hold, gateway in enumerate("abababab")]
    assert decisions[:3] == [None, None, None]
    for refused in decisions[3:]:
        assert refused is not None
        error = RateLimitError(**refused)  # what the gateway raises
        assert error.headers["X-RateLimit-Limit"] == "3" and error.headers["X-RateLimit-Remaining"] == "0"
        assert error.retry_after == 60 and error.reason == "rate_limit"
    for hold in range(8):
        actor.release("ab"[hold % 2], hold)
    assert actor.usage()["k"] == {
        "running": 0,
        "queued": 0,
        "requests_last_minute": 3,
        "tokens_last_minute": 0,
    }
    clock.now += WINDOW_SECONDS + 0.1
    assert actor.admit("b", 9, "k", limits) is None


def test_running_waiting_and_tokens_count_every_gateway() -> None:
    actor = QuotaActor(Clock())
    running = sent(max_concurrent=1)
    assert actor.admit("a", 1, "r", running) is None
    actor.start("a", 1)
    refused = actor.admit("b", 1, "r", running)
    assert refused is not None and refused["reason"] == "concurrency" and "runs 1" in refused["message"]
    actor.release("a", 1)
    actor.release("a", 1)  # idempotent
    assert actor.admit("b", 1, "r", running) is None

    waiting = sent(max_queued=1)
    assert actor.admit("a", 2, "w", waiting) is None
    assert "waiting" in (actor.admit("b", 2, "w", waiting) or {})["message"]
    actor.start("a", 2)  # no longer waiting
    assert actor.admit("b", 2, "w", waiting) is None

    tokens = sent(tokens_per_minute=100)
    actor.add_tokens("a", "t", tokens, 100)
    assert "tokens" in (actor.admit("b", 3, "t", tokens) or {})["message"]
    usage = actor.usage()
    assert usage["r"]["running"] == 0 and usage["r"]["queued"] == 1
    assert usage["w"]["running"] == 1 and usage["w"]["queued"] == 1
    assert usage["t"]["tokens_last_minute"] == 100


def test_the_holds_of_a_silent_gateway_are_dropped() -> None:
    clock = Clock()
    actor = QuotaActor(clock)
    running, waiting = sent(max_concurrent=1), sent(max_queued=1)
    assert actor.admit("dead", 1, "r", running) is None
    actor.start("dead", 1)
    assert actor.admit("dead", 2, "w", waiting) is None
    clock.now += GATEWAY_SILENT_SECONDS / 2
    actor.renew("alive", [])
    assert actor.admit("alive", 1, "r", running) is not None  # not silent for long enough yet
    assert actor.admit("alive", 2, "w", waiting) is not None
    clock.now += GATEWAY_SILENT_SECONDS / 2 + 1
    assert actor.admit("alive", 1, "r", running) is None
    assert actor.admit("alive", 2, "w", waiting) is None
    assert set(actor.gateways) == {"alive"}
    usage = actor.usage()
    assert usage["r"]["running"] == 0 and usage["r"]["queued"] == 1 and usage["w"]["queued"] == 1


def test_a_renewal_drops_the_holds_its_gateway_no_longer_has() -> None:
    """A release sent while the actor did not answer was lost: the next renewal puts it right."""
    actor = QuotaActor(Clock())
    limits = sent(max_concurrent=5)
    for hold in (1, 2, 3):
        assert actor.admit("a", hold, "k", limits) is None
        actor.start("a", hold)
    actor.renew("a", [2])
    assert actor.usage()["k"]["running"] == 1
    assert set(actor.gateways["a"].holds) == {2}


def test_calls_about_holds_it_never_saw_change_nothing() -> None:
    """After a restart the actor starts empty: the ends of older requests never make a count
    negative."""
    actor = QuotaActor(Clock())
    actor.start("a", 7)
    actor.release("a", 7)
    actor.release("a", 8)
    assert actor.usage() == {}
    limits = sent(max_concurrent=1)
    assert actor.admit("a", 1, "k", limits) is None
    actor.start("a", 1)
    actor.start("a", 1)  # started once
    actor.release("a", 2)
    assert actor.usage()["k"]["running"] == 1
    assert actor.ready()["version"]


def test_keys_of_no_live_request_leave_no_hold() -> None:
    clock = Clock()
    actor = QuotaActor(clock)
    limits = sent(max_concurrent=2, requests_per_minute=1000)
    for index in range(200):
        gateway = f"g{index % 4}"
        assert actor.admit(gateway, index, f"key-{index % 10}", limits) is None
        actor.start(gateway, index)
        actor.release(gateway, index)
    assert all(not gateway.holds for gateway in actor.gateways.values())
    clock.now += max(WINDOW_SECONDS, GATEWAY_SILENT_SECONDS) + 2
    assert actor.usage() == {} and actor.gateways == {}


def test_a_key_that_limits_only_rates_is_counted_without_a_hold() -> None:
    """Hold 0: the gateway counts the request's waiting and running itself."""
    actor = QuotaActor(Clock())
    limits = sent(requests_per_minute=2)
    assert actor.admit("a", 0, "k", limits) is None
    assert actor.admit("b", 0, "k", limits) is None
    assert actor.admit("a", 0, "k", limits) is not None
    assert actor.gateways["a"].holds == {} and actor.gateways["b"].holds == {}
    assert actor.usage()["k"] == {
        "running": 0,
        "queued": 0,
        "requests_last_minute": 2,
        "tokens_last_minute": 0,
    }
