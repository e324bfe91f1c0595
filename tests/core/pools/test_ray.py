"""Unit tests of the Ray pool host's pieces that need no cluster: batching, errors, config."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from lollms_server.core.bindings import Binding, CancelToken, MediaOutput, Progress, TextChunk, with_progress
from lollms_server.core.config import ClusterPoolConfig, config_from_dict
from lollms_server.core.errors import BindingError, ConfigError, NotFoundError
from lollms_server.core.pools.ray_actor import batched
from lollms_server.core.pools.ray_cluster import ray_module, remote_error


async def source(
    pieces: list[tuple[float, TextChunk]], closed: list[bool] | None = None
) -> AsyncGenerator[TextChunk, None]:
    try:
        for delay, chunk in pieces:
            await asyncio.sleep(delay)
            yield chunk
    finally:
        if closed is not None:
            closed.append(True)


async def collect(chunks: AsyncGenerator[TextChunk, None]) -> list[tuple[float, TextChunk]]:
    started = time.monotonic()
    return [(time.monotonic() - started, chunk) async for chunk in chunks]


async def test_batched_merges_fast_tokens_and_sends_first_and_last_at_once() -> None:
    end = TextChunk("!", "stop", {"completion_tokens": 42})
    pieces = [(0.0, TextChunk("a"))] + [(0.001, TextChunk("b")) for _ in range(40)] + [(0.0, end)]
    received = await collect(batched(source(pieces), interval=0.05))
    assert "".join(chunk.text for _, chunk in received) == "a" + "b" * 40 + "!"
    assert received[0][1].text == "a" and received[0][0] < 0.03  # the first token is not held back
    assert len(received) < 10  # ~45 ms of tokens in 50 ms windows: a few objects, not 42
    last = received[-1][1]
    assert last.finish_reason == "stop" and last.usage == {"completion_tokens": 42}


async def test_batched_sends_slow_tokens_one_by_one() -> None:
    pieces = [(0.02, TextChunk(str(index))) for index in range(4)] + [(0.0, TextChunk("", "stop"))]
    received = await collect(batched(source(pieces), interval=0.005))
    assert [chunk.text for _, chunk in received[:4]] == ["0", "1", "2", "3"]


async def test_batched_passes_errors_and_stops_the_source_when_closed_early() -> None:
    async def failing() -> AsyncGenerator[TextChunk, None]:
        yield TextChunk("x")
        raise BindingError("boom")

    with pytest.raises(BindingError, match="boom"):
        await collect(batched(failing(), interval=0.001))
    closed: list[bool] = []
    chunks = batched(source([(0.01, TextChunk("y")) for _ in range(100)], closed), interval=0.001)
    assert (await chunks.__anext__()).text == "y"
    await chunks.aclose()
    assert closed == [True]


async def test_with_progress_yields_steps_then_outputs_and_cancels_when_closed() -> None:
    async def run(cancel: CancelToken, progress: Progress) -> list[MediaOutput]:
        def work() -> list[MediaOutput]:
            for step in range(1, 4):
                cancel.check()
                progress(step, 3)
                time.sleep(0.01)
            return [MediaOutput("image", b"png", "image/png")]

        return await asyncio.to_thread(work)

    items = [item async for item in with_progress(run, CancelToken())]
    assert items[:3] == [(1, 3), (2, 3), (3, 3)]
    assert isinstance(items[-1], list) and items[-1][0].data == b"png"

    stopped: list[bool] = []

    async def endless(cancel: CancelToken, progress: Progress) -> list[MediaOutput]:
        def work() -> list[MediaOutput]:
            step = 0
            while not cancel.is_set():
                step += 1
                progress(step, 0)
                time.sleep(0.005)
            stopped.append(True)
            return []

        return await Binding.run_cancellable(work, cancel)  # as media bindings do

    generator = with_progress(endless, CancelToken())
    assert await generator.__anext__() == (1, 0)
    await generator.aclose()
    assert stopped == [True]  # the call had stopped when aclose returned


def test_remote_errors_keep_lollms_errors_and_hide_the_rest() -> None:
    ray_exceptions = pytest.importorskip("ray.exceptions")

    def wrapped(cause: BaseException) -> BaseException:
        try:
            raise cause
        except BaseException as exc:  # noqa: BLE001
            return ray_exceptions.RayTaskError("call", "Traceback (most recent call last): secret", exc)

    error = remote_error(wrapped(NotFoundError("Model 'x' not found.")))
    assert isinstance(error, NotFoundError) and error.message == "Model 'x' not found."
    hidden = remote_error(wrapped(RuntimeError("internal path /secret")))
    assert isinstance(hidden, BindingError)
    assert "secret" not in hidden.message and "RuntimeError" in hidden.message


def test_missing_ray_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"lollms_server\[distributed\]"):
        ray_module()


def test_pool_demands_in_ray_names() -> None:
    placement = ClusterPoolConfig(num_cpus=1, num_gpus=1, memory_mb=512, resources={"gpu0": 1})
    assert placement.demands() == {"CPU": 1, "GPU": 1, "gpu0": 1, "memory": 512 * 2**20}
    assert ClusterPoolConfig(num_cpus=0).demands() == {}


def cluster_config(tmp_path: Path, **cluster: Any) -> Any:
    data = {
        "security": {"api_keys": ["a-key-long-enough"]},
        "resource_manager": {"pools": {"default": {}, "gpu0": {}}},
        "cluster": cluster,
    }
    return config_from_dict(data, base=tmp_path, environ={})


def test_cluster_config_checks(tmp_path: Path) -> None:
    config = cluster_config(tmp_path, mode="ray", pools={"gpu0": {"num_gpus": 1}})
    assert config.pool_host("default") == config.pool_host("gpu0") == "ray"
    assert config.cluster.pool("default").num_cpus == 1  # unlisted pools get the defaults
    assert cluster_config(tmp_path).pool_host("gpu0") == "inprocess"
    with pytest.raises(ConfigError, match=r"cluster\.pools\.gpu9: unknown pool"):
        cluster_config(tmp_path, mode="ray", pools={"gpu9": {}})
    with pytest.raises(ConfigError, match=r"cluster\.mode"):
        cluster_config(tmp_path, mode="swarm")
    data = {
        "security": {"api_keys": ["a-key-long-enough"]},
        "resource_manager": {"pools": {"default": {"isolation": "process"}}},
        "cluster": {"mode": "ray"},
    }
    with pytest.raises(ConfigError, match=r"pools\.default\.isolation"):
        config_from_dict(data, base=tmp_path, environ={})
    # a pool's host serves that pool only, in process
    reduced = config.for_pool("gpu0")
    assert list(reduced.resource_manager.pools) == ["gpu0"] and reduced.cluster.mode == "local"


def test_fingerprint_covers_only_the_pools_own_instances(tmp_path: Path) -> None:
    from lollms_server.core.pools.ray_cluster import fingerprint

    def config(**bindings: Any) -> Any:
        data = {
            "security": {"api_keys": ["a-key-long-enough"]},
            "resource_manager": {"pools": {"default": {}, "gpu0": {}}},
            "cluster": {"mode": "ray"},
            "bindings": bindings,
        }
        return config_from_dict(data, base=tmp_path, environ={})

    llm = {"type": "llamacpp_binding", "pool": "gpu0", "n_threads": 1}
    base = config(llm=llm)
    assert fingerprint(base, "gpu0") == fingerprint(config(llm=llm, other={"type": "ollama_binding"}), "gpu0")
    assert fingerprint(base, "gpu0") != fingerprint(config(llm={**llm, "n_threads": 2}), "gpu0")
