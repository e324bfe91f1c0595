"""Pools as Ray actors (cluster.mode = "ray") on a local two-node Ray cluster.

The head node has CPUs only; the "GPU node" has a fake GPU (``num_gpus``) and the custom
resource ``gpu0`` that the llama.cpp pool asks for, so that pool's actor can only live there.
Gateways are real lollms_server processes joined to the cluster.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lollms_server.core.pools.ray import PROBE_AFTER_SECONDS
from tests.conftest import AUTH, base_config, media_instance
from tests.e2e.sse import (
    assert_served_in_arrival_order,
    events_killing_midway,
    parse_events,
    staggered_streams,
)
from tests.processes import ServerProcess, start_lollms

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.e2e, pytest.mark.distributed]

STORE = 80 * 2**20  # object store per node: small, /dev/shm is small on CI machines
LOOPBACK = "127.0.0.1"  # every node listens here only (and these tests run with nothing but lo)


def loopback_head() -> Any:
    """A Ray cluster of one head node (2 CPUs, a small object store) listening on 127.0.0.1 only."""
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "object_store_memory": STORE,
            "include_dashboard": False,
            "node_ip_address": LOOPBACK,
        },
    )


class TwoNodes:
    def __init__(self) -> None:
        self.cluster = loopback_head()
        self.gpu_node = self.add_gpu_node()

    def add_gpu_node(self) -> Any:
        node = self.cluster.add_node(
            num_cpus=2, num_gpus=1, resources={"gpu0": 1}, object_store_memory=STORE, node_ip_address=LOOPBACK
        )
        # every live node's address as ray.nodes() gives it, from the GCS (this process is no driver)
        alive = {
            info["NodeID"]: info["NodeManagerAddress"]
            for info in self.cluster.global_state.node_table()
            if info["Alive"]
        }
        assert node.node_id in alive and set(alive.values()) == {LOOPBACK}, alive
        return node

    @property
    def address(self) -> str:
        return str(self.cluster.address)


@pytest.fixture(scope="module")
def nodes() -> Iterator[TwoNodes]:
    cluster = TwoNodes()
    try:
        yield cluster
    finally:
        cluster.cluster.shutdown()


def gateway_config(
    folder: Path, models_folder: Path, media_models_folder: Path, address: str
) -> dict[str, Any]:
    return base_config(
        folder,
        models_folder,
        resource_manager={
            "pools": {
                "default": {"limit": 1},
                "gpu0": {"limit": 1, "queue_size": 32, "queue_timeout": 60},
                "images": {"limit": 1},
            }
        },
        cluster={
            "mode": "ray",
            "address": address,
            "namespace": "lollms-tests",
            "retry_after": 3,
            "pools": {
                "default": {"num_cpus": 0.5},
                "gpu0": {"num_cpus": 1, "num_gpus": 1, "resources": {"gpu0": 1}},
                "images": {"num_cpus": 0.5},
            },
        },
        bindings={
            "echo": {"type": "scripted_binding"},
            "llm": {"type": "llamacpp_binding", "pool": "gpu0", "model_name": "tiny.gguf", "n_threads": 1},
            "sd": {**media_instance("diffusers_binding", media_models_folder), "pool": "images"},
        },
    )


@pytest.fixture(scope="module")
def gateways(
    nodes: TwoNodes, models_folder: Path, media_models_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServerProcess]]:
    """Two gateways sharing the cluster's pools: a server, and a server with two uvicorn worker
    processes (so three Ray drivers in all)."""
    started: list[ServerProcess] = []
    try:
        for name, workers in (("a", 1), ("b", 2)):
            folder = tmp_path_factory.mktemp(f"gateway-{name}")
            config = gateway_config(folder, models_folder, media_models_folder, nodes.address)
            config["server"]["workers"] = workers
            started.append(start_lollms(config, folder, folder / "server.log"))
        yield started
    finally:
        for server in started:
            server.stop()


def body(stream: bool = True, **parameters: Any) -> dict[str, Any]:
    return {
        "prompt": "Hello",
        "binding_name": "llm",
        "stream": stream,
        "parameters": {"max_tokens": 16, "ignore_eos": True, "seed": 7, **parameters},
    }


def generate(server: ServerProcess, payload: dict[str, Any], timeout: float = 120) -> httpx.Response:
    return httpx.post(server.url + "/api/v1/generate", json=payload, headers=AUTH, timeout=timeout)


def pool_status(server: ServerProcess, pool: str) -> dict[str, Any]:
    status = httpx.get(server.url + "/api/v1/status", headers=AUTH, timeout=30).json()
    worker: dict[str, Any] = status["workers"][pool] or {}  # None: not answering
    entry = next(item for item in status["pools"] if item["name"] == pool)
    return {**worker, "snapshot": entry}


def test_tokens_stream_from_an_actor_on_the_gpu_node(nodes: TwoNodes, gateways: list[ServerProcess]) -> None:
    gateway = gateways[0]
    with httpx.Client(base_url=gateway.url, headers=AUTH, timeout=120) as client:
        with client.stream("POST", "/api/v1/generate", json=body()) as response:
            assert response.status_code == 200, response.read()
            events = parse_events(response.read().decode())
    kinds = [event["type"] for event in events]
    assert kinds[0] == "info" and kinds[-1] == "final", kinds
    chunks = [event["content"] for event in events if event["type"] == "chunk"]
    assert chunks, kinds
    final = events[-1]["content"][0]
    assert final["data"] == "".join(chunks)
    assert final["metadata"]["usage"]["completion_tokens"] == 16
    assert "worker_timings" in final["metadata"]
    # the same seed gives the same text through the other gateway, not streamed
    whole = generate(gateways[1], body(stream=False))
    assert whole.status_code == 200, whole.text
    assert whole.json()["output"][0]["data"] == final["data"]
    # the pool's actor runs on the GPU node; status and metrics show its pool
    status = pool_status(gateway, "gpu0")
    assert status["host"] == "ray" and status["node_id"] == nodes.gpu_node.node_id
    assert status["snapshot"]["isolation"] == "ray" and status["snapshot"]["host_up"] is True
    assert [model["model"] for model in status["snapshot"]["models"]] == ["tiny.gguf"]
    metrics = httpx.get(gateway.url + "/metrics", headers=AUTH, timeout=30).text
    assert 'lollms_pool_host_up{host="ray",pool="gpu0"} 1.0' in metrics
    assert 'lollms_loaded_models{pool="gpu0"} 1.0' in metrics
    # the native API reaches the actor: tokenize round trip, listings, model info
    tokens = httpx.post(
        gateway.url + "/api/v1/tokenize",
        json={"text": "héllo wörld", "binding_name": "llm"},
        headers=AUTH,
        timeout=60,
    )
    assert tokens.status_code == 200, tokens.text
    text = httpx.post(
        gateway.url + "/api/v1/detokenize",
        json={"tokens": tokens.json()["tokens"], "binding_name": "llm"},
        headers=AUTH,
        timeout=60,
    )
    assert "héllo wörld" in text.json()["text"]
    listed = httpx.get(gateway.url + "/api/v1/list_available_models/llm", headers=AUTH, timeout=60)
    assert "tiny.gguf" in [model["name"] for model in listed.json()["models"]]
    info = httpx.get(gateway.url + "/api/v1/get_model_info/llm", headers=AUTH, timeout=60).json()
    assert info["loaded"] is True
    # an error raised in the actor keeps its status and message, without Ray's traceback
    missing = generate(gateway, {**body(stream=False), "model_name": "missing.gguf"})
    assert missing.status_code == 404 and "Traceback" not in missing.text, missing.text


def test_image_through_an_actor(gateways: list[ServerProcess]) -> None:
    from PIL import Image

    payload = {
        "generation_type": "tti",
        "prompt": "a red square",
        "binding_name": "sd",
        "model_name": "tiny-sd",
        "stream": True,
        "parameters": {"width": 64, "height": 64, "num_inference_steps": 2, "seed": 1},
    }
    with httpx.Client(base_url=gateways[1].url, headers=AUTH, timeout=180) as client:
        with client.stream("POST", "/api/v1/generate", json=payload) as response:
            assert response.status_code == 200, response.read()
            events = parse_events(response.read().decode())
    assert [event["content"] for event in events if event.get("metadata", {}).get("total")] == [
        "step 1 of 2",
        "step 2 of 2",
    ]
    final = events[-1]
    assert final["type"] == "final", final
    image = Image.open(io.BytesIO(base64.b64decode(final["content"][0]["data"])))
    assert image.size == (64, 64)


def test_two_gateways_share_one_fifo_queue(gateways: list[ServerProcess]) -> None:
    # warm up: every gateway process has found the running actor (while an actor starts,
    # requests wait at their gateway and enter its queue in the order the gateways see it up)
    for _ in range(4):
        for gateway in gateways:
            assert generate(gateway, body(stream=False)).status_code == 200
    urls = [gateways[index % 2].url for index in range(8)]  # alternate gateways
    bodies = [body(max_tokens=2000 if index == 0 else 16) for index in range(8)]
    results = asyncio.run(staggered_streams(urls, bodies, [0.3] + [0.15] * 7))
    assert_served_in_arrival_order(results)
    assert results[1]["queue_wait"] > 0  # it waited behind the long one, in the actor's queue


def test_actor_killed_mid_stream_then_next_request_succeeds(gateways: list[ServerProcess]) -> None:
    gateway = gateways[0]
    assert generate(gateway, body(stream=False)).status_code == 200
    pid = pool_status(gateway, "gpu0")["pid"]
    payload = {**body(max_tokens=4000), "model_name": "slow.gguf"}
    events = events_killing_midway(gateway.url, payload, pid)
    assert events[-1]["type"] == "error", events[-1]
    assert "actor" in events[-1]["content"] and "Traceback" not in events[-1]["content"]
    # the next request, on either gateway, is served by the restarted actor
    for server in gateways:
        again = generate(server, body(stream=False))
        assert again.status_code == 200, again.text
    assert pool_status(gateway, "gpu0")["pid"] != pid


def test_hung_actor_gets_504_and_is_replaced(
    nodes: TwoNodes, models_folder: Path, media_models_folder: Path, tmp_path: Path
) -> None:
    config = gateway_config(tmp_path, models_folder, media_models_folder, nodes.address)
    config["resource_manager"]["pools"]["hang"] = {"limit": 1}
    config["resource_manager"]["generation_timeout"] = 4
    config["cluster"]["pools"]["hang"] = {"num_cpus": 0.25}
    config["bindings"]["slow_echo"] = {"type": "scripted_binding", "pool": "hang", "model_name": "echo"}
    gateway = start_lollms(config, tmp_path, tmp_path / "server.log")
    try:
        payload = {"prompt": "a b c d e f", "binding_name": "slow_echo", "stream": True}
        first = generate(gateway, {**payload, "stream": False})
        assert first.status_code == 200, first.text
        pid = pool_status(gateway, "hang")["pid"]
        os.kill(pid, signal.SIGSTOP)  # the actor hangs: alive, silent
        started = time.monotonic()
        answer = generate(gateway, payload, timeout=30)
        # found hung before the stream starts (no "waiting" ping, no answer): a plain 504
        assert answer.status_code == 504, answer.text
        assert answer.json()["error"]["type"] == "generation_timeout"
        assert time.monotonic() - started < 10
        again = generate(gateway, {**payload, "stream": False}, timeout=60)
        assert again.status_code == 200, again.text
        assert pool_status(gateway, "hang")["pid"] != pid
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except (ProcessLookupError, UnboundLocalError):
            pass
        gateway.stop()


def test_node_removed_fails_fast_then_recovers_on_a_new_node(
    nodes: TwoNodes, gateways: list[ServerProcess]
) -> None:
    gateway = gateways[1]
    assert generate(gateway, body(stream=False)).status_code == 200
    nodes.cluster.remove_node(nodes.gpu_node)

    def refused_fast(server: ServerProcess, stream: bool) -> None:
        started = time.monotonic()
        refused = generate(server, body(stream=stream), timeout=30)
        elapsed = time.monotonic() - started
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "3"
        assert "no node" in refused.json()["error"]["message"]
        assert elapsed < 5, f"took {elapsed:.1f} s to refuse"

    # right away: the call finds the actor gone and the pool unplaceable
    refused_fast(gateway, stream=False)
    # a moment later, streams are refused before they start too (the gateway asks the actor
    # whether it is up when it has not heard from it for a second)
    time.sleep(PROBE_AFTER_SECONDS)
    for server in gateways:
        refused_fast(server, stream=True)
    # pools on the head node keep serving meanwhile
    assert generate(gateway, {"prompt": "hi", "binding_name": "echo"}).status_code == 200
    down = pool_status(gateway, "gpu0")["snapshot"]
    assert down["host_up"] is False and down["isolation"] == "ray"
    metrics = httpx.get(gateway.url + "/metrics", headers=AUTH, timeout=30).text
    assert 'lollms_pool_host_up{host="ray",pool="gpu0"} 0.0' in metrics
    nodes.gpu_node = nodes.add_gpu_node()
    deadline = time.monotonic() + 60
    while True:
        answer = generate(gateway, body(stream=False))
        if answer.status_code == 200:
            break
        assert answer.status_code == 503 and time.monotonic() < deadline, answer.text
        time.sleep(0.5)
    assert pool_status(gateway, "gpu0")["node_id"] == nodes.gpu_node.node_id


def test_cluster_stop_then_the_next_request_starts_the_actor_again(gateways: list[ServerProcess]) -> None:
    gateway = gateways[0]
    assert generate(gateway, body(stream=False)).status_code == 200
    pid = pool_status(gateway, "gpu0")["pid"]
    config_path = gateway.log_path.parent / "config.toml"
    done = subprocess.run(
        [sys.executable, "-m", "lollms_server.cli", "--config", str(config_path), "cluster-stop"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "gpu0" in done.stdout and "images" in done.stdout
    again = generate(gateway, body(stream=False))
    assert again.status_code == 200, again.text
    assert pool_status(gateway, "gpu0")["pid"] != pid


def test_actor_pools_refuse_overflow_and_queue_timeout_with_503_before_the_stream(
    nodes: TwoNodes, models_folder: Path, media_models_folder: Path, tmp_path: Path
) -> None:
    from tests.e2e.test_pool_hosts import Stream, hold, pool_status, refused_before_the_stream, wait_for

    config = gateway_config(tmp_path, models_folder, media_models_folder, nodes.address)
    config["resource_manager"]["pools"].update(
        {
            "tight": {"limit": 1, "queue_size": 1, "queue_timeout": 30},
            "slow": {"limit": 1, "queue_size": 4, "queue_timeout": 0.5},
        }
    )
    config["cluster"]["pools"].update({"tight": {"num_cpus": 0.25}, "slow": {"num_cpus": 0.25}})
    for pool in ("tight", "slow"):
        config["bindings"][f"echo_{pool}"] = {
            "type": "scripted_binding",
            "pool": pool,
            "model_name": "echo",
            "delay": 0.1,
        }
    gateway = start_lollms(config, tmp_path, tmp_path / "server.log")
    try:
        first = hold(gateway, "echo_tight", "tight")
        queued = Stream(gateway, {"prompt": "queued behind", "binding_name": "echo_tight", "stream": True})
        queued.start()
        wait_for(lambda: pool_status(gateway, "tight")["queued"] == 1, 10, "the second stream queues")
        refused_before_the_stream(gateway, "echo_tight")  # the actor's queue is full
        first.join(30)
        queued.join(30)
        assert queued.events[-1]["type"] == "final", queued.events

        first = hold(gateway, "echo_slow", "slow")
        refused_before_the_stream(gateway, "echo_slow")  # no slot within the actor's queue timeout
        first.join(30)
        assert first.events[-1]["type"] == "final"
    finally:
        gateway.stop()


def test_an_actor_pool_serves_a_light_key_right_after_the_running_stream(
    nodes: TwoNodes, models_folder: Path, media_models_folder: Path, tmp_path: Path
) -> None:
    """The fair policy in the actor: the user key's request overtakes the admin key's queue."""
    from tests.conftest import GOOD_KEY
    from tests.e2e.test_pool_hosts import pool_status, wait_for

    config = gateway_config(tmp_path, models_folder, media_models_folder, nodes.address)
    config["resource_manager"]["pools"]["fair"] = {"limit": 1, "queue_size": 32, "queue_timeout": 60}
    config["cluster"]["pools"]["fair"] = {"num_cpus": 0.25}
    config["bindings"]["echo_fair"] = {
        "type": "scripted_binding",
        "pool": "fair",
        "model_name": "echo",
        "delay": 0.1,
    }
    gateway = start_lollms(config, tmp_path, tmp_path / "server.log")
    finished: list[str] = []

    def run(key: str, name: str, prompt: str) -> None:
        body = {"prompt": prompt, "binding_name": "echo_fair"}
        answer = httpx.post(
            gateway.url + "/api/v1/generate", json=body, headers={"X-API-Key": key}, timeout=120
        )
        assert answer.status_code == 200, answer.text
        finished.append(name)

    try:
        run(AUTH["X-API-Key"], "warm-up", "a")
        threads = [threading.Thread(target=run, args=(AUTH["X-API-Key"], "running", " ".join(["w"] * 20)))]
        threads[0].start()
        wait_for(lambda: pool_status(gateway, "fair")["active"] == 1, 30, "the stream holds the slot")
        for index in range(5):
            threads.append(
                threading.Thread(target=run, args=(AUTH["X-API-Key"], f"flood-{index}", "a b c d e"))
            )
            threads[-1].start()
        wait_for(lambda: pool_status(gateway, "fair")["queued"] == 5, 30, "the flood queues")
        threads.append(threading.Thread(target=run, args=(GOOD_KEY, "light", "hello")))
        threads[-1].start()
        wait_for(lambda: pool_status(gateway, "fair")["queued"] == 6, 30, "the light request queues")
        for thread in threads:
            thread.join(120)
        assert finished.index("light") <= 2, finished  # warm-up, running, then light
    finally:
        gateway.stop()
