"""Per-key quotas hold for every gateway of a Ray cluster (issue 26): two gateway servers joined
to one local Ray cluster (127.0.0.1 only) share a key's limits through the quota actor. Each
gateway used to count alone, so a key allowed 3 requests a minute passed 3 times per gateway."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AUTH, base_config
from tests.e2e.test_cluster import loopback_head
from tests.processes import ServerProcess, start_lollms

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.e2e, pytest.mark.distributed]

RATED = "rated-key-three-a-minute-0123456789"
SINGLE = "single-key-one-at-a-time-0123456789"
WARM = "warm-key-with-a-limit-0123456789"


@pytest.fixture(scope="module")
def cluster_address() -> Iterator[str]:
    cluster = loopback_head()
    try:
        yield str(cluster.address)
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def gateways(
    cluster_address: str, models_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    try:
        for name in ("a", "b"):
            folder = tmp_path_factory.mktemp(f"quota-gateway-{name}")
            config = base_config(
                folder,
                models_folder,
                resource_manager={"pools": {"default": {"limit": 4, "queue_size": 16, "queue_timeout": 30}}},
                cluster={
                    "mode": "ray",
                    "address": cluster_address,
                    "namespace": "lollms-quota-tests",
                    "pools": {"default": {"num_cpus": 0.25}},
                },
                bindings={
                    "echo": {"type": "scripted_binding"},
                    "slow_echo": {"type": "scripted_binding", "model_name": "echo", "delay": 0.1},
                },
            )
            config["security"]["api_keys"] += [
                {"key": RATED, "name": "three-a-minute", "scopes": ["generate"], "requests_per_minute": 3},
                {"key": SINGLE, "name": "one-at-a-time", "scopes": ["generate"], "max_concurrent": 1},
                {"key": WARM, "name": "warm", "scopes": ["generate"], "max_concurrent": 100},
            ]
            started.append(start_lollms(config, folder, folder / "server.log"))
        # every gateway has found the pool actor and the quota actor (started by the first)
        for gateway in started:
            answer = generate(gateway, WARM)
            assert answer.status_code == 200, answer.text
        yield started
    finally:
        for server in started:
            server.stop()


def generate(server: ServerProcess, key: str, binding: str = "echo", **extra: Any) -> httpx.Response:
    body = {"prompt": "hi there", "binding_name": binding, **extra}
    return httpx.post(server.url + "/api/v1/generate", json=body, headers={"X-API-Key": key}, timeout=60)


def key_usage(server: ServerProcess, name: str) -> dict[str, int]:
    keys = httpx.get(server.url + "/api/v1/queue", headers=AUTH, timeout=30).json()["keys"]
    usage: dict[str, int] = keys.get(name, {})
    return usage


def test_two_gateways_accept_three_requests_a_minute_of_a_key_together(gateways: list[ServerProcess]) -> None:
    statuses = []
    for index in range(8):
        answer = generate(gateways[index % 2], RATED)
        statuses.append(answer.status_code)
        if answer.status_code == 429:
            assert answer.headers["X-RateLimit-Limit"] == "3"
            assert answer.json()["error"]["type"] == "rate_limit_error"
    assert statuses.count(200) == 3 and statuses.count(429) == 5, statuses
    for gateway in gateways:  # each gateway reports the cluster's count
        assert key_usage(gateway, "three-a-minute")["requests_last_minute"] == 3


def test_a_key_running_on_one_gateway_is_refused_on_the_other(gateways: list[ServerProcess]) -> None:
    first, second = gateways
    answers: list[httpx.Response] = []
    running = threading.Thread(
        target=lambda: answers.append(generate(first, SINGLE, "slow_echo", prompt=" ".join(["w"] * 30)))
    )
    running.start()
    try:
        deadline = time.monotonic() + 30
        while key_usage(second, "one-at-a-time").get("running") != 1:
            assert time.monotonic() < deadline, "the first gateway's generation runs"
            time.sleep(0.05)
        refused = generate(second, SINGLE)
        assert refused.status_code == 429, refused.text
        assert "runs 1" in refused.json()["error"]["message"]
    finally:
        running.join(60)
    assert answers and answers[0].status_code == 200, answers
    deadline = time.monotonic() + 10  # its end reaches the actor without being waited for
    while key_usage(second, "one-at-a-time").get("running", 0) != 0:
        assert time.monotonic() < deadline, "the end of the first generation counts on the other gateway"
        time.sleep(0.05)
    again = generate(second, SINGLE)
    assert again.status_code == 200, again.text


def test_without_the_quota_actor_each_host_decides_then_a_new_actor_does(
    cluster_address: str, gateways: list[ServerProcess]
) -> None:
    """The actor stopped for good: a request is neither a 500 nor a hang (the gateway's own store
    decides, with a warning), and a new actor counts again a while later."""
    from lollms_server.core.quota_cluster import QUOTA_ACTOR, RETRY_SECONDS

    ray.init(address=cluster_address, namespace="lollms-quota-tests", log_to_driver=False)
    try:
        first = ray.get_actor(QUOTA_ACTOR)
        ray.kill(first, no_restart=True)
        gateway = gateways[0]
        started = time.monotonic()
        answer = generate(gateway, WARM)
        assert answer.status_code == 200, answer.text
        assert time.monotonic() - started < 10
        assert "quota actor" in gateway.output()
        deadline = time.monotonic() + RETRY_SECONDS + 30
        while True:  # RETRY_SECONDS later, the next limited request starts a new actor
            assert generate(gateway, WARM).status_code == 200
            try:
                second = ray.get_actor(QUOTA_ACTOR)
                break
            except ValueError:
                assert time.monotonic() < deadline, "a new quota actor"
                time.sleep(0.5)
        assert second._actor_id != first._actor_id
    finally:
        ray.shutdown()
