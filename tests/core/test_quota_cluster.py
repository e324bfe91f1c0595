"""The gateway side of the cluster's quotas (``quota_cluster.ClusterKeyQuotas``) against a real
``QuotaActor`` behind a stand-in for its Ray handle: two gateways share its counts; keys without
limits never call it; when it does not answer, the host's store decides (no 500, no hang); a
client that leaves mid-decision leaves nothing counted. tests/e2e/test_quotas_cluster.py runs
the same through Ray with two gateway servers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lollms_server.core import quota_cluster
from lollms_server.core.config import AppConfig, ClusterConfig, config_from_dict
from lollms_server.core.errors import RateLimitError
from lollms_server.core.quota_actor import QuotaActor
from lollms_server.core.quota_cluster import ClusterKeyQuotas
from lollms_server.core.quota_store import SharedKeyQuotas, key_quotas
from lollms_server.core.quotas import KeyQuotas
from lollms_server.core.security import KeyLimits, Principal


class Handle:
    """Stands for the actor's Ray handle: ``handle.method.remote(*args)`` runs the method in the
    actor ``delay`` seconds later, in the order of the calls, whether or not the caller still
    waits; ``silent``: nothing runs, no answer comes (an actor that does not answer)."""

    def __init__(self, actor: QuotaActor, delay: float = 0.001) -> None:
        self.actor = actor
        self.delay = delay
        self.silent = False
        self.calls: list[str] = []

    def __getattr__(self, method: str) -> Any:
        handle = self

        class Method:
            def remote(self, *args: Any) -> asyncio.Future[Any]:
                handle.calls.append(method)
                loop = asyncio.get_running_loop()
                answer: asyncio.Future[Any] = loop.create_future()

                def run() -> None:
                    result = getattr(handle.actor, method)(*args)
                    if not answer.done():
                        answer.set_result(result)

                if not handle.silent:
                    loop.call_later(handle.delay, run)
                return answer

        return Method()


def gateway(handle: Handle) -> ClusterKeyQuotas:
    quotas = ClusterKeyQuotas(ClusterConfig(mode="ray"), KeyQuotas())
    quotas._actor = handle  # found: what _open does through Ray
    return quotas


def limited(**limits: int) -> Principal:
    return Principal(name="k", limits=KeyLimits(**limits))


async def one_request(quotas: ClusterKeyQuotas, principal: Principal, hold_for: float = 0.0) -> int:
    try:
        async with quotas.admit(principal) as queued:
            end = await queued.start()
    except RateLimitError as refused:
        return refused.status_code
    await asyncio.sleep(hold_for)
    end()
    return 200


async def test_two_gateways_pass_a_key_three_times_a_minute_together() -> None:
    handle = Handle(QuotaActor())
    first, second = gateway(handle), gateway(handle)
    principal = limited(requests_per_minute=3)
    statuses = await asyncio.gather(
        *(one_request((first, second)[index % 2], principal) for index in range(8))
    )
    assert sorted(statuses) == [200] * 3 + [429] * 5
    await second.refresh()
    assert second.usage()["k"]["requests_last_minute"] == 3
    assert handle.actor.usage()["k"]["running"] == 0 and handle.actor.usage()["k"]["queued"] == 0
    assert all(not entry.holds for entry in handle.actor.gateways.values())


async def test_max_concurrent_holds_across_gateways() -> None:
    handle = Handle(QuotaActor())
    first, second = gateway(handle), gateway(handle)
    principal = limited(max_concurrent=1)
    async with first.admit(principal) as queued:
        end = await queued.start()
    with pytest.raises(RateLimitError, match="runs 1") as refused:
        async with second.admit(principal):
            pass
    assert refused.value.headers["X-RateLimit-Limit"] == "1"
    await second.refresh()
    assert second.usage()["k"]["running"] == 1
    end()
    end()  # idempotent
    assert await one_request(second, principal) == 200


async def test_a_key_that_limits_only_rates_holds_nothing_in_the_actor() -> None:
    """Its admission is its only call (and its tokens): its running requests count here."""
    handle = Handle(QuotaActor())
    quotas = gateway(handle)
    principal = limited(requests_per_minute=5, tokens_per_minute=100)
    async with quotas.admit(principal) as queued:
        assert quotas.usage()["k"]["queued"] == 1
        end = await queued.start()
    await quotas.refresh()
    assert quotas.usage()["k"] == {
        "running": 1,
        "queued": 0,
        "requests_last_minute": 1,
        "tokens_last_minute": 0,
    }
    quotas.add_tokens(principal, 100)
    end()
    with pytest.raises(RateLimitError, match="100 generated tokens"):
        async with quotas.admit(principal):
            pass
    assert handle.calls == ["admit", "usage", "add_tokens", "admit"]
    assert handle.actor.gateways[quotas.gateway].holds == {}
    assert quotas.usage().get("k", {}).get("running", 0) == 0


async def test_keys_without_limits_never_call_the_actor() -> None:
    handle = Handle(QuotaActor())
    quotas = gateway(handle)
    for index in range(20):
        principal = Principal(name=f"free-{index}")
        async with quotas.admit(principal) as queued:
            end = await queued.start()
        quotas.add_tokens(principal, 10)
        end()
    assert handle.calls == []
    async with quotas.admit(Principal(name="free")) as queued:
        assert quotas.usage()["free"]["queued"] == 1  # this process's count
    quotas.add_tokens(limited(max_concurrent=3), 10)  # no token limit: nothing to send
    assert handle.calls == []


async def test_an_actor_that_does_not_answer_leaves_the_decision_to_the_host(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(quota_cluster, "CALL_TIMEOUT_SECONDS", 0.05)
    monkeypatch.setattr(quota_cluster, "RETRY_SECONDS", 0.3)
    handle = Handle(QuotaActor())
    quotas = gateway(handle)
    principal = limited(requests_per_minute=2, max_concurrent=5)
    handle.silent = True
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.WARNING, logger=quota_cluster.__name__):
        statuses = [await one_request(quotas, principal) for _ in range(3)]
    assert statuses == [200, 200, 429]  # the host's own count (in memory here)
    assert loop.time() - started < 1.0  # one call timed out, then no call until RETRY_SECONDS
    assert handle.calls == ["admit"]
    assert [record.levelname for record in caplog.records] == ["WARNING"]
    assert "quota actor" in caplog.records[0].getMessage()
    await quotas.refresh()
    assert quotas.usage()["k"]["requests_last_minute"] == 2  # the host's counts meanwhile

    handle.silent = False
    await asyncio.sleep(0.3)  # RETRY_SECONDS later, the actor decides again
    assert await one_request(quotas, principal) == 200
    assert handle.calls[-3:] == ["admit", "start", "release"]


async def test_an_actor_call_that_fails_leaves_the_decision_to_the_host() -> None:
    class Broken:
        def __getattr__(self, method: str) -> Any:
            raise RuntimeError("the actor died")

    quotas = ClusterKeyQuotas(ClusterConfig(mode="ray"), KeyQuotas())
    quotas._actor = Broken()
    principal = limited(max_concurrent=1, tokens_per_minute=10)
    assert await one_request(quotas, principal) == 200
    quotas.add_tokens(principal, 10)  # to the host's store while the actor does not answer
    assert await one_request(quotas, principal) == 429


async def test_a_client_that_leaves_while_the_actor_decides_leaves_nothing_counted() -> None:
    handle = Handle(QuotaActor(), delay=0.2)
    quotas = gateway(handle)
    principal = limited(max_queued=1, max_concurrent=1)
    leaving = asyncio.ensure_future(one_request(quotas, principal))
    await asyncio.sleep(0.05)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    await asyncio.sleep(0.4)  # the actor counted it waiting, then ran the release sent after
    assert handle.calls == ["admit", "release"]
    assert handle.actor.usage() == {}  # nothing waits or runs
    handle.delay = 0.001
    assert await one_request(quotas, principal) == 200


async def test_a_client_that_leaves_while_its_request_runs_leaves_nothing_counted() -> None:
    handle = Handle(QuotaActor(), delay=0.1)
    quotas = gateway(handle)
    principal = limited(max_concurrent=1)

    async def request() -> None:
        async with quotas.admit(principal) as queued:
            end = await queued.start()
            try:
                await asyncio.sleep(10)
            finally:
                end()

    leaving = asyncio.ensure_future(request())
    await asyncio.sleep(0.15)  # admitted after 0.1 s; its start is on the way, not waited for
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    await asyncio.sleep(0.3)
    assert handle.calls == ["admit", "start", "release"]
    assert handle.actor.usage() == {}
    assert not handle.actor.gateways[quotas.gateway].holds


async def test_a_gateway_renews_its_holds_while_it_has_some(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quota_cluster, "RENEW_SECONDS", 0.05)
    handle = Handle(QuotaActor())
    quotas = gateway(handle)
    principal = limited(max_concurrent=2)
    ends: list[Callable[[], None]] = []
    for _ in range(2):
        async with quotas.admit(principal) as queued:
            ends.append(await queued.start())
    await asyncio.sleep(0.3)
    renewals = handle.calls.count("renew")
    assert renewals >= 2
    assert set(handle.actor.gateways[quotas.gateway].holds) == {1, 2}
    ends[0]()
    await asyncio.sleep(0.1)
    assert set(handle.actor.gateways[quotas.gateway].holds) == {2}
    ends[1]()
    await asyncio.sleep(0.2)
    assert quotas._renewing is not None and quotas._renewing.done()  # nothing left to renew
    calls = len(handle.calls)
    await asyncio.sleep(0.2)
    assert len(handle.calls) == calls


def test_ray_mode_asks_the_quota_actor_only_when_a_key_has_a_limit(tmp_path: Path) -> None:
    def config(workers: int = 1, **limits: int) -> AppConfig:
        key = {"key": "test-key-quota-0123456789", "name": "k", "scopes": ["generate"], **limits}
        data = {
            "server": {"workers": workers},
            "paths": {"runtime_folder": str(tmp_path / "run")},
            "cluster": {"mode": "ray"},
            "security": {"api_keys": [key]},
        }
        return config_from_dict(data, environ={})

    quotas = key_quotas(config(requests_per_minute=3))
    assert isinstance(quotas, ClusterKeyQuotas) and type(quotas.host) is KeyQuotas
    shared = key_quotas(config(workers=2, max_concurrent=1))
    assert isinstance(shared, ClusterKeyQuotas) and isinstance(shared.host, SharedKeyQuotas)
    assert type(key_quotas(config())) is KeyQuotas  # no limit anywhere: no actor to ask
