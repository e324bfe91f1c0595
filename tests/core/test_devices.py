"""The device arbiter under a simulated GPU: the real ResourceManager and DeviceArbiter, a fake
device whose allocations raise out of memory past its size (with a reclaim lag and memory other
programs hold), and bindings that allocate on it when they load."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lollms_server.core.bindings import Binding, BindingCard, BindingContext
from lollms_server.core.config import DeviceConfig, PoolConfig, ResourceManagerConfig
from lollms_server.core.devices import (
    DeviceArbiter,
    Devices,
    FootprintStore,
    ModelTooLargeError,
    device_name,
)
from lollms_server.core.errors import ConfigError, ServiceUnavailableError
from lollms_server.core.resource_manager import ResourceManager

GPU = "cuda:0"


class FakeOutOfMemory(RuntimeError):
    pass


class FakeDevice:
    """A GPU of ``total`` MB: allocations past it raise; freed memory comes back ``lag``
    seconds later; ``external`` MB are held by another program."""

    def __init__(self, total: float = 1000.0, lag: float = 0.0, external: float = 0.0) -> None:
        self.total = total
        self.lag = lag
        self.external = external
        self.held: dict[str, float] = {}
        self.returning: list[tuple[float, float]] = []  # (when it is back, MB)
        self.high_water = 0.0
        self.ooms = 0

    def used(self) -> float:
        now = time.monotonic()
        self.returning = [(when, mb) for when, mb in self.returning if when > now]
        return self.external + sum(self.held.values()) + sum(mb for _, mb in self.returning)

    def alloc(self, owner: str, mb: float) -> None:
        if self.used() + mb > self.total:
            self.ooms += 1
            raise FakeOutOfMemory(f"{owner}: {mb} MB past the device")
        self.held[owner] = self.held.get(owner, 0.0) + mb
        self.high_water = max(self.high_water, self.used())

    def free(self, owner: str) -> None:
        mb = self.held.pop(owner, 0.0)
        if self.lag and mb:
            self.returning.append((time.monotonic() + self.lag, mb))

    # the probe
    def total_mb(self) -> float:
        return self.total

    def free_mb(self) -> float:
        return self.total - self.used()


class FakeBinding(Binding):
    """Models of ``sizes`` (real MB) estimated at ``estimate_factor`` of their size; a load
    allocates on the device and takes ``load_seconds``."""

    def __init__(
        self,
        name: str,
        device: FakeDevice,
        sizes: dict[str, float],
        *,
        estimate_factor: float = 1.0,
        load_seconds: float = 0.01,
        pool: str = "text",
    ) -> None:
        super().__init__(BindingContext(name, BindingCard(type_name=name), {}, Path("."), pool))
        self.device = device
        self.sizes = sizes
        self.estimate_factor = estimate_factor
        self.load_seconds = load_seconds
        self.loaded: list[str] = []
        self.generating: dict[str, int] = {}
        self.events: list[str] = []
        self.evicted_in_use = 0

    async def load_model(self, model_name: str) -> None:
        await asyncio.sleep(self.load_seconds)
        self.device.alloc(f"{self.instance_name}/{model_name}", self.sizes[model_name])
        self.loaded.append(model_name)
        self.events.append(f"load {model_name}")

    async def unload_model(self, model_name: str) -> None:
        if self.generating.get(model_name):
            self.evicted_in_use += 1
        self.device.free(f"{self.instance_name}/{model_name}")
        self.loaded.remove(model_name)
        self.events.append(f"unload {model_name}")

    def footprint_mb(self, model_name: str) -> float:
        return self.sizes[model_name] if model_name in self.loaded else 0.0

    async def estimate_footprint_mb(self, model_name: str) -> float | None:
        return self.sizes[model_name] * self.estimate_factor

    def memory_device(self, model_name: str) -> str:
        return GPU


def manager_for(
    device: FakeDevice,
    *,
    reserve: float = 100.0,
    pools: dict[str, dict[str, Any]] | None = None,
    store: FootprintStore | None = None,
    reclaim_timeout: float = 1.0,
    max_memory_mb: float | None = None,
) -> ResourceManager:
    pools = pools or {"text": {"limit": 4, "queue_timeout": 2.0}}
    config = ResourceManagerConfig(
        pools={name: PoolConfig(**values) for name, values in pools.items()}, default_pool=next(iter(pools))
    )
    devices = Devices(
        {GPU: DeviceConfig(reserve_mb=reserve, max_memory_mb=max_memory_mb)},
        store,
        {GPU: device},
        reclaim_timeout=reclaim_timeout,
    )
    return ResourceManager(config, devices=devices)


async def generate(
    manager: ResourceManager, binding: FakeBinding, pool: str, model: str, seconds: float = 0.0
) -> str:
    """One request: a slot, the model resident and busy for ``seconds``; its outcome."""
    try:
        async with manager.slot(pool), manager.use_model(binding, pool, model):
            binding.generating[model] = binding.generating.get(model, 0) + 1
            try:
                await asyncio.sleep(seconds)
            finally:
                binding.generating[model] -= 1
        return "ok"
    except ModelTooLargeError:
        return "too_large"
    except ServiceUnavailableError as exc:
        assert getattr(exc, "reason", None) == "memory", exc
        return "memory"


def arbiter(manager: ResourceManager) -> DeviceArbiter:
    return manager.devices.get(GPU)


# ---- decisions ---------------------------------------------------------------------------------
async def test_an_idle_text_model_is_evicted_for_an_image_model_of_another_pool() -> None:
    device = FakeDevice(1000)
    manager = manager_for(device, pools={"text": {"limit": 4}, "media": {"limit": 1}})
    text = FakeBinding("llm", device, {"llama": 600})
    image = FakeBinding("sd", device, {"sdxl": 500}, pool="media")
    assert await generate(manager, text, "text", "llama") == "ok"
    assert await generate(manager, image, "media", "sdxl") == "ok"
    assert text.events == ["load llama", "unload llama"] and image.loaded == ["sdxl"]
    assert device.ooms == 0 and device.high_water <= 900
    assert arbiter(manager).stats.evictions["lru"] == 1
    state = manager.snapshot()["devices"][GPU]
    assert [model["model"] for model in state["models"]] == ["sdxl"]
    assert state["models"][0]["state"] == "resident" and state["reserved_mb"] == 500


async def test_a_streaming_text_model_is_never_evicted_the_image_waits_for_it() -> None:
    device = FakeDevice(1000)
    manager = manager_for(device, pools={"text": {"limit": 4}, "media": {"limit": 1, "queue_timeout": 5}})
    text = FakeBinding("llm", device, {"llama": 600})
    image = FakeBinding("sd", device, {"sdxl": 500}, pool="media")
    stream = asyncio.create_task(generate(manager, text, "text", "llama", 0.4))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    assert await generate(manager, image, "media", "sdxl") == "ok"
    waited = time.monotonic() - started
    assert await stream == "ok"
    assert text.evicted_in_use == 0 and device.ooms == 0
    assert waited >= 0.2, "the image did not wait for the stream to end"
    assert arbiter(manager).stats.memory_waits == 1
    assert text.events == ["load llama", "unload llama"]


async def test_a_load_waiting_for_memory_is_told_so_once() -> None:
    device = FakeDevice(1000)
    manager = manager_for(device, pools={"text": {"limit": 2}})
    text = FakeBinding("llm", device, {"a": 600, "b": 500})
    stream = asyncio.create_task(generate(manager, text, "text", "a", 0.3))
    await asyncio.sleep(0.05)
    heard: list[float] = []
    async with manager.use_model(text, "text", "b", on_wait=heard.append):
        pass
    assert len(heard) == 1 and heard[0] >= 1  # an ETA in seconds, as the queue's
    assert await stream == "ok"


def test_a_stream_waiting_for_memory_says_so() -> None:
    from lollms_server.core.generation.queued import QueuedStream

    waiting: Any = QueuedStream.__new__(QueuedStream)
    waiting.position, waiting.download = (0, 5.0), None
    assert waiting._queued().metadata == {"queue_position": 0, "eta_seconds": 5.0, "reason": "memory"}
    waiting.position = (3, 5.0)
    assert "reason" not in waiting._queued().metadata


async def test_an_image_that_waits_past_its_deadline_gets_503_memory() -> None:
    device = FakeDevice(1000)
    manager = manager_for(device, pools={"text": {"limit": 4}, "media": {"limit": 1, "queue_timeout": 0.2}})
    text = FakeBinding("llm", device, {"llama": 600})
    image = FakeBinding("sd", device, {"sdxl": 500}, pool="media")
    stream = asyncio.create_task(generate(manager, text, "text", "llama", 0.8))
    await asyncio.sleep(0.1)
    try:
        await manager.use_model(image, "media", "sdxl").__aenter__()
    except ServiceUnavailableError as exc:
        assert getattr(exc, "reason", None) == "memory"
        assert int(exc.headers["Retry-After"]) >= 1
        assert "llm/llama" in exc.message  # names the holder
    else:  # pragma: no cover
        raise AssertionError("the image was admitted over a streaming model")
    assert await stream == "ok"
    assert text.evicted_in_use == 0 and image.loaded == []
    assert arbiter(manager).stats.rejections["memory"] == 1
    assert arbiter(manager).ledger.keys() == {("llm", "llama")}  # the waiter held nothing


async def test_three_text_models_in_turn_stay_within_the_device_in_lru_order() -> None:
    device = FakeDevice(1000)
    manager = manager_for(device)
    text = FakeBinding("llm", device, {"a": 400, "b": 400, "c": 400})
    for model in ("a", "b", "a", "c", "b"):
        assert await generate(manager, text, "text", model) == "ok"
    # evicted before the load: c evicts b (a was used after b), then b evicts a (LRU)
    assert text.events == ["load a", "load b", "unload b", "load c", "unload a", "load b"]
    assert device.high_water <= 900 and device.ooms == 0


async def test_two_pools_on_one_device_evict_each_other_within_its_memory() -> None:
    device = FakeDevice(2000)
    manager = manager_for(device, pools={"text": {"limit": 2}, "media": {"limit": 2}})
    text = FakeBinding("llm", device, {"a": 700, "b": 700})
    image = FakeBinding("sd", device, {"x": 800, "y": 800}, pool="media")
    for binding, pool, model in [
        (text, "text", "a"),
        (image, "media", "x"),
        (text, "text", "b"),  # evicts a (LRU, same pool as it happens)
        (image, "media", "y"),  # evicts x: b is more recent
        (text, "text", "a"),  # evicts b
    ]:
        assert await generate(manager, binding, pool, model) == "ok"
    assert device.high_water <= 1900 and device.ooms == 0
    assert sum(arbiter(manager).stats.evictions.values()) == 3
    assert set(text.loaded) == {"a"} and set(image.loaded) == {"y"}


async def test_two_loads_that_fit_alone_but_not_together_are_serialized() -> None:
    device = FakeDevice(1000)
    manager = manager_for(device, pools={"a": {"limit": 1}, "b": {"limit": 1}})
    first = FakeBinding("one", device, {"m": 600}, load_seconds=0.1)
    second = FakeBinding("two", device, {"m": 600}, load_seconds=0.1, pool="b")
    results = await asyncio.gather(
        generate(manager, first, "a", "m", 0.1), generate(manager, second, "b", "m", 0.1)
    )
    assert results == ["ok", "ok"]
    assert device.ooms == 0 and device.high_water <= 900


async def test_an_underestimate_is_corrected_and_remembered_across_restarts(tmp_path: Path) -> None:
    store_path = tmp_path / "run" / "footprints.json"
    device = FakeDevice(1000)
    manager = manager_for(device, store=FootprintStore(store_path))
    text = FakeBinding("llm", device, {"big": 500, "other": 300}, estimate_factor=0.5)
    assert await generate(manager, text, "text", "big") == "ok"
    entry = arbiter(manager).ledger[("llm", "big")]
    assert entry.estimate_mb == 250 and entry.mb == 500 and entry.measured_mb == 500
    assert store_path.is_file()
    # a new server process: the estimate is max(measured, formula)
    again = manager_for(FakeDevice(1000), store=FootprintStore(store_path))
    fresh = FakeBinding("llm", device, {"big": 500}, estimate_factor=0.5)
    assert await again.estimate_mb(fresh, "big", GPU) == 500
    # other settings are another key
    fresh.settings = {"n_ctx": 8192}
    assert await again.estimate_mb(fresh, "big", GPU) == 250


async def test_an_underestimated_load_evicts_idle_models_after_it() -> None:
    device = FakeDevice(1000)
    manager = manager_for(device)
    text = FakeBinding("llm", device, {"a": 400, "b": 550}, estimate_factor=0.5)
    assert await generate(manager, text, "text", "a") == "ok"
    assert await generate(manager, text, "text", "b") == "ok"  # 275 reserved, 550 real
    assert text.loaded == ["b"], "the ledger stayed past the device after the correction"
    assert arbiter(manager).reserved_mb() == 550 and device.ooms == 0


async def test_out_of_memory_while_loading_is_503_memory_and_raises_the_estimate() -> None:
    device = FakeDevice(1000)
    manager = manager_for(device)
    text = FakeBinding("llm", device, {"a": 400, "b": 700}, estimate_factor=0.5)
    assert await generate(manager, text, "text", "a") == "ok"
    assert await generate(manager, text, "text", "b") == "memory"  # 350 reserved, 700 real: OOM
    assert device.ooms == 1 and arbiter(manager).ledger.keys() == {("llm", "a")}
    assert await manager.estimate_mb(text, "b", GPU) == 700
    assert await generate(manager, text, "text", "b") == "ok"  # the raised estimate evicts a first
    assert device.ooms == 1 and text.loaded == ["b"]


async def test_a_model_larger_than_the_device_is_422_with_both_numbers() -> None:
    device = FakeDevice(1000)
    manager = manager_for(device, reserve=100)
    text = FakeBinding("llm", device, {"huge": 950})
    assert await generate(manager, text, "text", "huge") == "too_large"
    with pytest.raises(ModelTooLargeError, match=r"950 MB.*900 MB") as error:
        async with manager.use_model(text, "text", "huge"):
            pass
    assert error.value.status_code == 422 and error.value.error_type == "model_too_large"
    assert text.loaded == [] and arbiter(manager).ledger == {}
    # a max_memory_mb cap is the device's size for this server
    capped = manager_for(FakeDevice(1000), max_memory_mb=500)
    assert await generate(capped, FakeBinding("llm", device, {"m": 600}), "text", "m") == "too_large"


async def test_reclaim_lag_is_waited_out_before_the_next_load() -> None:
    device = FakeDevice(1000, lag=0.3)
    manager = manager_for(device, reclaim_timeout=2.0)
    text = FakeBinding("llm", device, {"a": 600, "b": 600})
    assert await generate(manager, text, "text", "a") == "ok"
    assert await generate(manager, text, "text", "b") == "ok"  # would OOM without the wait
    assert device.ooms == 0 and arbiter(manager).stats.reclaim_leaks == 0


async def test_a_leak_is_logged_and_the_probe_trusted(caplog: pytest.LogCaptureFixture) -> None:
    device = FakeDevice(1000, lag=30)  # the memory never comes back in time
    manager = manager_for(device, reclaim_timeout=0.1, pools={"text": {"limit": 1, "queue_timeout": 0.3}})
    text = FakeBinding("llm", device, {"a": 600, "b": 600})
    assert await generate(manager, text, "text", "a") == "ok"
    assert await generate(manager, text, "text", "b") == "memory"  # the probe says no room
    assert arbiter(manager).stats.reclaim_leaks == 1 and device.ooms == 0
    assert "trusting the probe" in caplog.text


async def test_memory_used_by_another_program_shrinks_admission() -> None:
    device = FakeDevice(1000, external=500)
    manager = manager_for(device, pools={"text": {"limit": 1, "queue_timeout": 0.3}})
    text = FakeBinding("llm", device, {"small": 300, "large": 600})
    assert await generate(manager, text, "text", "small") == "ok"
    assert await generate(manager, text, "text", "large") == "memory"  # fits the ledger, not the card
    assert device.ooms == 0
    device.external = 0  # the other program ends: the same request now passes
    assert await generate(manager, text, "text", "large") == "ok"
    assert text.loaded == ["large"]


async def test_a_pool_budget_is_a_quota_inside_its_device() -> None:
    device = FakeDevice(2000)
    manager = manager_for(device, pools={"text": {"limit": 2, "memory_budget_mb": 500}})
    text = FakeBinding("llm", device, {"a": 300, "b": 300, "huge": 600})
    assert await generate(manager, text, "text", "a") == "ok"
    assert await generate(manager, text, "text", "b") == "ok"  # the quota evicts a
    assert text.loaded == ["b"]
    assert await generate(manager, text, "text", "huge") == "too_large"


async def test_quotas_that_exceed_their_device_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    device = FakeDevice(1000)
    manager = manager_for(
        device, pools={"text": {"memory_budget_mb": 600}, "media": {"memory_budget_mb": 500}}
    )
    assert await generate(manager, FakeBinding("llm", device, {"a": 100}), "text", "a") == "ok"
    assert "exceed" not in caplog.text
    image = FakeBinding("sd", device, {"x": 100}, pool="media")
    assert await generate(manager, image, "media", "x") == "ok"
    assert "pools media, text (1100 MB together) exceed what device cuda:0 can hold (900 MB)" in caplog.text


def test_device_names_and_defaults() -> None:
    assert device_name("cuda") == "cuda:0" and device_name("cuda:1") == "cuda:1"
    assert device_name("CPU") == "cpu" and device_name(None) == "cpu"
    with pytest.raises(ConfigError):
        device_name("tpu")
    gpu = DeviceArbiter(GPU, probe=FakeDevice(40_000))
    assert gpu.reserve_mb == 2000  # 5 % of a 40 GB card
    small = DeviceArbiter(GPU, probe=FakeDevice(8000))
    assert small.reserve_mb == 1024  # at least 1 GiB
    cpu = DeviceArbiter("cpu", DeviceConfig(max_memory_mb=300, reserve_mb=0))
    assert cpu.limit_mb == 300 and cpu.total_mb > 300  # psutil's RAM
    assert DeviceArbiter("cpu").reserve_mb == min(1024, 0.05 * cpu.total_mb)


async def image_job(
    manager: ResourceManager, binding: FakeBinding, model: str, estimate: float, real: float, shape: str
) -> str:
    """One image request: the model resident, the job's working memory reserved, ``real`` MB
    allocated on the device while it runs."""
    try:
        async with manager.slot("media"), manager.use_model(binding, "media", model):
            async with manager.working_memory(binding, "media", model, estimate, shape) as reserved:
                binding.events.append(f"job {reserved:.0f}")
                binding.device.alloc("job", real)
                try:
                    await asyncio.sleep(0.01)
                finally:
                    binding.device.free("job")
        return "ok"
    except ModelTooLargeError:
        return "too_large"


async def test_an_image_job_reserves_its_working_memory_evicting_idle_text() -> None:
    device = FakeDevice(1000)
    manager = manager_for(device, pools={"text": {"limit": 1}, "media": {"limit": 1}})
    text = FakeBinding("llm", device, {"llama": 500})
    image = FakeBinding("sd", device, {"sdxl": 200}, pool="media")
    assert await generate(manager, text, "text", "llama") == "ok"
    assert await image_job(manager, image, "sdxl", 300, 300, "tti:1024:1024") == "ok"
    # 500 + 200 fit; the job's 300 more do not: the idle text model went, before the job ran
    assert text.events == ["load llama", "unload llama"] and image.events == ["load sdxl", "job 300"]
    assert device.ooms == 0 and device.high_water <= 900
    assert arbiter(manager).ledger.keys() == {("sd", "sdxl")}  # the job's reservation is gone
    assert await image_job(manager, image, "sdxl", 950, 0, "tti:4096:4096") == "too_large"


async def test_out_of_memory_in_a_job_raises_that_shapes_reservation() -> None:
    device = FakeDevice(1000, external=400)
    manager = manager_for(device, pools={"media": {"limit": 1}})
    image = FakeBinding("sd", device, {"sdxl": 200}, pool="media")
    with pytest.raises(FakeOutOfMemory):  # 100 reserved, 450 really needed: out of memory
        await image_job(manager, image, "sdxl", 100, 450, "tti:1024:1024")
    assert device.ooms == 1 and arbiter(manager).ledger.keys() == {("sd", "sdxl")}
    assert await image_job(manager, image, "sdxl", 100, 150, "tti:512:512") == "ok"  # another shape
    device.external = 0
    assert await image_job(manager, image, "sdxl", 100, 190, "tti:1024:1024") == "ok"
    assert image.events[-1] == "job 200"  # the shape that ran out now reserves twice as much


def process_manager(device: FakeDevice, folder: Path, owner: str, queue_timeout: float) -> ResourceManager:
    """The resource manager of one server process of the host (its own ``owner``)."""
    config = ResourceManagerConfig(pools={"text": PoolConfig(limit=2, queue_timeout=queue_timeout)})
    config.default_pool = "text"
    devices = Devices(
        {GPU: DeviceConfig(reserve_mb=100)},
        None,
        {GPU: device},
        reclaim_timeout=0.5,
        shared_folder=folder,
        owner=owner,
    )
    return ResourceManager(config, devices=devices)


async def test_server_processes_of_a_host_share_the_ledger(tmp_path: Path) -> None:
    import os

    device = FakeDevice(1000)
    first = process_manager(device, tmp_path, f"{os.getpid()}:first", 0.3)
    second = process_manager(device, tmp_path, f"{os.getpid()}:second", 0.3)
    text_a = FakeBinding("llm", device, {"a": 600})
    text_b = FakeBinding("llm", device, {"b": 500})
    assert await generate(first, text_a, "text", "a") == "ok"
    # the second process sees the first one's model and may not evict it: 503 naming the holder
    try:
        async with second.use_model(text_b, "text", "b"):
            raise AssertionError("admitted over another process's model")
    except ServiceUnavailableError as exc:
        assert getattr(exc, "reason", None) == "memory" and "llm/a (process" in exc.message
    assert device.ooms == 0 and text_b.loaded == []
    state = second.snapshot()["devices"][GPU]
    assert [(item["model"], item["mb"]) for item in state["other_processes"]] == [("a", 600.0)]
    # once the first process unloads it, the second one loads
    assert await first.unload("llm", "a")
    assert await generate(second, text_b, "text", "b") == "ok"
    await first.devices.refresh()  # the snapshot shows the last reading (taken off the loop)
    assert first.snapshot()["devices"][GPU]["other_processes"][0]["model"] == "b"


async def test_loads_of_two_processes_on_one_device_are_serialized(tmp_path: Path) -> None:
    import os

    device = FakeDevice(1000)
    first = process_manager(device, tmp_path, f"{os.getpid()}:first", 2.0)
    second = process_manager(device, tmp_path, f"{os.getpid()}:second", 2.0)
    text_a = FakeBinding("llm", device, {"a": 600}, load_seconds=0.1)
    text_b = FakeBinding("llm", device, {"b": 600}, load_seconds=0.1)
    results = await asyncio.gather(
        generate(first, text_a, "text", "a", 0.1), generate(second, text_b, "text", "b", 0.1)
    )
    # never both loading at once; the later one waited, and could not evict the other process's
    # (idle) model: 503 memory at its deadline
    assert sorted(results) == ["memory", "ok"]
    assert device.ooms == 0 and device.high_water <= 900


def test_the_shared_ledger_forgets_dead_processes_and_ignores_garbage(tmp_path: Path) -> None:
    from lollms_server.core.device_share import SharedLedger

    mine = SharedLedger(tmp_path, GPU, owner="1:me", alive=lambda pid: pid != 999)
    other = SharedLedger(tmp_path, GPU, owner="2:them", alive=lambda pid: True)
    dead = SharedLedger(tmp_path, GPU, owner="999", alive=lambda pid: True)
    other.publish([{"instance": "llm", "model": "x", "mb": 300}])
    dead.publish([{"instance": "llm", "model": "y", "mb": 400}])
    assert mine.others_mb() == 0  # not read yet: the cached view reads no file
    assert mine.read_others() == mine.others()
    assert mine.others_mb() == 300  # the dead process's 400 MB do not count
    mine.publish([])  # a write drops the dead process's entries
    assert "999" not in (tmp_path / "device-cuda-0.json").read_text()
    (tmp_path / "device-cuda-0.json").write_text('{"2:them": [{"mb": "lots"}, 5], "x": 7}')
    assert mine.read_others() == [] and mine.others_mb() == 0


def test_the_shared_ledger_forgets_a_dead_process_whose_pid_was_reused(tmp_path: Path) -> None:
    from lollms_server.core.device_share import SharedLedger
    from lollms_server.utils.processes import process_started

    pid = os.getpid()
    started = process_started(pid)
    assert started is not None
    mine = SharedLedger(tmp_path, GPU, owner="1:me", alive=lambda _: True)
    earlier = SharedLedger(tmp_path, GPU, owner=f"{pid}@{started - 3600}")  # the pid's last owner
    live = SharedLedger(tmp_path, GPU)  # this process, as a server process names itself
    assert live.owner == f"{pid}@{started}"
    earlier.publish([{"instance": "llm", "model": "gone", "mb": 400}])
    live.publish([{"instance": "llm", "model": "here", "mb": 300}])
    assert [entry["model"] for entry in mine.read_others()] == ["here"]


# ---- a property-based run ------------------------------------------------------------------
REQUEST = st.tuples(
    st.integers(0, 1),  # binding (pool)
    st.integers(0, 3),  # model
    st.floats(0, 0.03),  # arrives after
    st.floats(0, 0.05),  # generates for
    st.one_of(st.none(), st.floats(0, 0.04)),  # the client leaves after
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(50, 1100), min_size=8, max_size=8),
    factors=st.lists(st.floats(1.0, 1.5), min_size=2, max_size=2),
    requests=st.lists(REQUEST, min_size=1, max_size=12),
)
def test_any_sequence_stays_within_the_device_and_evicts_no_busy_model(
    sizes: list[int], factors: list[float], requests: list[tuple[int, int, float, float, float | None]]
) -> None:
    """Loads, generations and clients leaving in any order, models of any size (over-estimated
    or exact): the device never runs out of memory, nothing busy is evicted, and every request
    is admitted, told 503 memory or 422 too_large (or was left by its client)."""

    async def scenario() -> None:
        device = FakeDevice(1000)
        manager = manager_for(
            device,
            pools={"text": {"limit": 2, "queue_timeout": 0.3}, "media": {"limit": 1, "queue_timeout": 0.3}},
            reclaim_timeout=0.1,
        )
        bindings = [
            FakeBinding("llm", device, {f"m{i}": sizes[i] for i in range(4)}, estimate_factor=factors[0]),
            FakeBinding(
                "sd",
                device,
                {f"m{i}": sizes[4 + i] for i in range(4)},
                estimate_factor=factors[1],
                pool="media",
            ),
        ]
        pools = ["text", "media"]

        async def one(which: int, model: int, delay: float, hold: float, leave: float | None) -> str:
            await asyncio.sleep(delay)
            task = asyncio.create_task(generate(manager, bindings[which], pools[which], f"m{model}", hold))
            if leave is not None:
                await asyncio.sleep(leave)
                task.cancel()
            try:
                return await task
            except asyncio.CancelledError:
                return "left"

        outcomes = await asyncio.gather(*(one(*request) for request in requests))
        for (which, model, *_), outcome in zip(requests, outcomes, strict=True):
            binding = bindings[which]
            too_large = binding.sizes[f"m{model}"] * binding.estimate_factor > 900
            expected = ("too_large", "left") if too_large else ("ok", "memory", "left")
            assert outcome in expected, (which, model, outcome)
        assert device.ooms == 0 and device.high_water <= 900
        assert all(binding.evicted_in_use == 0 for binding in bindings)
        ledger = arbiter(manager).ledger
        loaded = {(binding.instance_name, model) for binding in bindings for model in binding.loaded}
        assert set(ledger) == loaded == set(manager.models)
        assert all(entry.state == "resident" for entry in ledger.values()), [
            (entry.key, entry.state, manager.models[entry.key].in_use) for entry in ledger.values()
        ]
        assert arbiter(manager).waiting == 0

    asyncio.run(scenario())


class ThreadRecordingStore(FootprintStore):
    """A footprint store that notes the thread of every write (the file write blocks)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writer_threads: list[int] = []

    def remember(self, key: str, mb: float) -> None:
        import threading

        self.writer_threads.append(threading.get_ident())
        super().remember(key, mb)


async def test_an_out_of_memory_load_remembers_its_footprint_off_the_event_loop(tmp_path: Path) -> None:
    import threading

    device = FakeDevice(1000, external=500)  # 500 MB free; the model is estimated at 60
    store = ThreadRecordingStore(tmp_path / "footprints.json")
    manager = manager_for(device, store=store, reserve=0.0)
    text = FakeBinding("llm", device, {"big": 600}, estimate_factor=0.1)
    assert await generate(manager, text, "text", "big") == "memory"
    assert device.ooms == 1, "the load did not run out of memory: the test checks nothing"
    assert store.writer_threads, "the out-of-memory load remembered nothing"
    assert threading.get_ident() not in store.writer_threads  # never written on the loop's thread


async def test_a_request_waiting_for_working_memory_does_not_hold_back_one_that_fits() -> None:
    """Two busy models: the first request's working memory waits for the other model; the
    second request's fits at once. It must not queue behind the waiter (which holds the device's
    load lock and waits for exactly the model that request would give back)."""
    device = FakeDevice(1000)  # 900 MB usable
    manager = manager_for(device, pools={"media": {"limit": 4, "queue_timeout": 3.0}})
    first = FakeBinding("a", device, {"m": 400}, pool="media")
    second = FakeBinding("b", device, {"m": 400}, pool="media")
    both_resident = asyncio.Event()
    inside: list[str] = []

    async def job(binding: FakeBinding, mb: float, delay: float) -> float:
        async with manager.slot("media"), manager.use_model(binding, "media", "m"):
            inside.append(binding.instance_name)
            if len(inside) == 2:
                both_resident.set()
            await both_resident.wait()
            await asyncio.sleep(delay)
            asked = time.monotonic()
            async with manager.working_memory(binding, "media", "m", mb, "s"):
                waited = time.monotonic() - asked
                await asyncio.sleep(0.05)
        return waited

    waits = await asyncio.gather(job(first, 200, 0.0), job(second, 50, 0.05), return_exceptions=True)
    assert not any(isinstance(wait, BaseException) for wait in waits), waits
    assert waits[1] < 1.0  # the one that fits went at once, not at the waiter's deadline
    assert device.ooms == 0 and device.high_water <= 900


def test_a_driver_hiccup_does_not_fail_the_status_snapshot() -> None:
    class FlakyProbe:
        def total_mb(self) -> float:
            return 1000.0

        def free_mb(self) -> float:
            raise RuntimeError("CUDA error: unspecified launch failure")

    state = DeviceArbiter(GPU, DeviceConfig(reserve_mb=100), FlakyProbe()).snapshot()
    assert state["free_mb"] is None and state["probe_free_mb"] is None and state["limit_mb"] == 900.0
