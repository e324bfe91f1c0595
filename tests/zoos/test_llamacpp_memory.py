"""The llama.cpp footprint estimator against llama.cpp itself, on the tiny GGUF models: weight
bytes from the header == ``llama_model_size``; the KV formula == the KV buffer llama.cpp logs
when it makes the context; the estimate before a load == the footprint after it."""

from __future__ import annotations

import ctypes
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from lollms_server.core.bindings import BindingManager
from lollms_server.core.config import config_from_dict

llama_cpp = pytest.importorskip("llama_cpp")


@pytest.fixture
def module() -> Any:
    config = config_from_dict({"server": {"auto_install_requirements": False}}, environ={})
    return BindingManager._import(BindingManager(config).cards["llamacpp_binding"])


@pytest.fixture
def memory(module: Any) -> Any:
    return sys.modules[f"{module.__name__}.memory"]


async def binding_for(models_folder: Path, **settings: Any) -> Any:
    config = config_from_dict(
        {
            "server": {"auto_install_requirements": False},
            "paths": {"models_folder": str(models_folder)},
            "bindings": {"llm": {"type": "llamacpp_binding", "n_threads": 1, **settings}},
        },
        environ={},
    )
    return await BindingManager(config).get("llm")


@pytest.fixture
def llama_log() -> Any:
    """What llama.cpp logs while the test runs (its own callback is put back afterwards)."""
    lines: list[str] = []

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lines.append(text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


@pytest.mark.parametrize("model", ["tiny.gguf", "slow.gguf"])
async def test_header_weights_are_llama_cpp_model_size(models_folder: Path, memory: Any, model: str) -> None:
    binding = await binding_for(models_folder, n_ctx=256, parallel=1)
    await binding.load_model(model)
    try:
        loaded = binding._models[model]
        size = llama_cpp.llama_model_size(loaded.llama._model.model)
        header = memory.read_header(models_folder / "llamacpp_binding" / model)
        assert header.weight_bytes() == size
        blocks, output, inputs = header.layer_bytes()
        assert sum(blocks) + output + inputs == size and len(blocks) == header.n_layer
    finally:
        await binding.unload_model(model)


@pytest.mark.parametrize(
    ("model", "n_ctx", "parallel"), [("tiny.gguf", 300, 3), ("tiny.gguf", 4096, 1), ("slow.gguf", 512, 2)]
)
async def test_kv_formula_is_llama_cpp_kv_buffer(
    models_folder: Path, memory: Any, llama_log: list[str], model: str, n_ctx: int, parallel: int
) -> None:
    binding = await binding_for(models_folder, n_ctx=n_ctx, parallel=parallel)
    await binding.load_model(model)
    try:
        log = "".join(llama_log)
        # the last context made: llama-cpp-python's constructor makes a first, one-sequence one
        found = re.findall(r"llama_kv_cache: size =\s*([\d.]+) MiB \(\s*(\d+) cells,\s*(\d+) layers", log)
        assert found, log[-2000:]
        logged_mib, cells, layers = float(found[-1][0]), int(found[-1][1]), int(found[-1][2])
        per_sequence, sequences = memory.context_cells({"n_ctx": n_ctx, "parallel": parallel})
        assert cells == per_sequence  # cells of one stream (one per sequence: kv_unified off)
        header = memory.read_header(models_folder / "llamacpp_binding" / model)
        kv = memory.kv_bytes(header, per_sequence * sequences)
        assert len(kv) == layers
        assert f"{sum(kv) / 2**20:.2f}" == f"{logged_mib:.2f}"  # llama.cpp prints two decimals
        assert sum(kv) % (cells * sequences) == 0  # and the same bytes for every cell
        compute = re.findall(r"CPU compute buffer size =\s*([\d.]+) MiB", log)
        assert compute and memory.compute_bytes(header, binding.settings) / 2**20 >= float(compute[-1])
    finally:
        await binding.unload_model(model)


async def test_the_estimate_before_a_load_is_the_footprint_after_it(models_folder: Path) -> None:
    binding = await binding_for(models_folder, n_ctx=300, parallel=3)
    assert binding.memory_device("tiny.gguf") == "cpu"  # no GPU backend here
    estimate = await binding.estimate_footprint_mb("tiny.gguf")
    file_mb = (models_folder / "llamacpp_binding" / "tiny.gguf").stat().st_size / 2**20
    assert estimate is not None and estimate > file_mb  # KV and compute buffer included
    await binding.load_model("tiny.gguf")
    try:
        assert binding.footprint_mb("tiny.gguf") == pytest.approx(estimate)
    finally:
        await binding.unload_model("tiny.gguf")


def test_layers_that_fit_gives_the_largest_offload(models_folder: Path, memory: Any) -> None:
    path = models_folder / "llamacpp_binding" / "slow.gguf"
    header = memory.read_header(path)
    settings = {"n_ctx": 512, "parallel": 2}

    def gpu_bytes(layers: int) -> int:
        return int(memory.estimate_footprint(header, {**settings, "n_gpu_layers": layers}, True).gpu)

    everything = header.n_layer + 1
    assert memory.layers_that_fit(path, settings, 10**12) == everything
    assert memory.layers_that_fit(path, settings, gpu_bytes(2)) == 2
    assert memory.layers_that_fit(path, settings, gpu_bytes(2) - 1) == 1
    assert memory.layers_that_fit(path, settings, 0) == 0
    assert gpu_bytes(everything) > gpu_bytes(header.n_layer) > gpu_bytes(1)
    all_on_gpu = memory.estimate_footprint(header, {**settings, "n_gpu_layers": -1}, True)
    assert all_on_gpu.gpu_layers == everything and all_on_gpu.kv_cpu == 0
    assert all_on_gpu.weights_cpu == header.layer_bytes()[2]  # token embeddings stay in RAM


def test_a_bad_header_is_refused_not_followed(tmp_path: Path, memory: Any) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (2**40).to_bytes(8, "little") + bytes(8))
    with pytest.raises(ValueError):
        memory.read_header(bad)
    bad.write_bytes(b"NOPE" + bytes(100))
    with pytest.raises(ValueError):
        memory.read_header(bad)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF" + (3).to_bytes(4, "little"))
    with pytest.raises(ValueError):
        memory.read_header(truncated)


async def test_fit_offload_loads_the_largest_layer_count_that_fits(
    models_folder: Path, memory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a (simulated) GPU too small for every layer, ``fit = "offload"`` loads the largest
    number of layers that fits, with parallel and n_ctx as configured; ``fit = "evict"`` keeps
    n_gpu_layers and is refused as too large."""
    from lollms_server.core.config import DeviceConfig, PoolConfig, ResourceManagerConfig
    from lollms_server.core.devices import Devices, ModelTooLargeError
    from lollms_server.core.resource_manager import ResourceManager
    from tests.core.test_devices import FakeDevice

    binding = await binding_for(models_folder, n_ctx=512, parallel=2, n_gpu_layers=-1)
    monkeypatch.setattr(type(binding), "_gpu", staticmethod(lambda: True))  # a GPU backend
    assert binding.memory_device("slow.gguf") == "cuda:0"
    header = memory.read_header(models_folder / "llamacpp_binding" / "slow.gguf")

    def gpu_mb(layers: int) -> float:
        footprint = memory.estimate_footprint(header, {**binding.settings, "n_gpu_layers": layers}, True)
        return float(footprint.gpu) / 2**20

    assert await binding.estimate_footprint_mb("slow.gguf") == pytest.approx(gpu_mb(header.n_layer + 1))
    device = FakeDevice((gpu_mb(2) + gpu_mb(3)) / 2)  # room for two layers, not three
    manager = ResourceManager(
        ResourceManagerConfig(pools={"p": PoolConfig(queue_timeout=0.5)}, default_pool="p"),
        devices=Devices({"cuda:0": DeviceConfig(reserve_mb=0)}, None, {"cuda:0": device}),
    )
    async with manager.use_model(binding, "p", "slow.gguf"):
        loaded = binding._models["slow.gguf"]
        assert loaded.footprint.gpu_layers == 2 and loaded.engine.parallel == 2
        entry = manager.devices.get("cuda:0").ledger[("llm", "slow.gguf")]
        assert entry.estimate_mb == pytest.approx(gpu_mb(2)) and entry.mb == pytest.approx(gpu_mb(2))
        assert (await binding.get_model_info("slow.gguf"))["gpu_layers"] == 2
    assert await manager.unload("llm", "slow.gguf")
    await binding.apply_settings({**binding.settings, "fit": "evict"})
    with pytest.raises(ModelTooLargeError):
        async with manager.use_model(binding, "p", "slow.gguf"):
            pass
    assert binding.loaded_models() == []
