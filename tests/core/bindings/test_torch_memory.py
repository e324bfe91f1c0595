"""Torch bindings' memory: the safetensors estimate (headers only, at the load dtype) equals the
parameter bytes of a real CPU load of the tiny models, and unloading drops every reference to
the model before the cache is emptied."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import pytest

from lollms_server.core.bindings import BindingManager
from lollms_server.core.bindings import torch as torch_helpers
from lollms_server.core.config import config_from_dict

torch = pytest.importorskip("torch")


def parameter_bytes(*modules: Any) -> int:
    seen: set[int] = set()
    total = 0
    for module in modules:
        for parameter in module.parameters():
            if id(parameter) not in seen:
                seen.add(id(parameter))
                total += parameter.numel() * parameter.element_size()
    return total


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("diffusers")
    from tests import tiny_media_models as tiny

    root = tmp_path_factory.mktemp("torch-memory")
    return {
        "sd": tiny.build_tiny_stable_diffusion(root / "diffusers_binding" / "tiny-sd"),
        "llama": tiny.build_tiny_llama_hf(root / "transformers_binding" / "tiny-llama"),
    }


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_safetensors_estimate_of_a_pipeline_is_its_parameter_bytes(
    tiny_folders: dict[str, Path], dtype: str
) -> None:
    from diffusers import DiffusionPipeline

    folder = tiny_folders["sd"]
    files = torch_helpers.weight_files(folder)
    assert {file.parent.name for file in files} == {"text_encoder", "unet", "vae"}
    torch_dtype = getattr(torch, dtype)
    pipeline = DiffusionPipeline.from_pretrained(str(folder), dtype=torch_dtype)
    modules = [c for c in pipeline.components.values() if isinstance(c, torch.nn.Module)]
    assert torch_helpers.safetensors_bytes(files, torch_dtype.itemsize) == parameter_bytes(*modules)
    # the folder size, the old estimate, is off (and counts fp32 whatever the load dtype)
    folder_bytes = torch_helpers.folder_size_mb(folder) * 2**20
    assert folder_bytes != parameter_bytes(*modules)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_safetensors_estimate_of_a_causal_lm_is_its_parameter_bytes(
    tiny_folders: dict[str, Path], dtype: str
) -> None:
    from transformers import AutoModelForCausalLM

    folder = tiny_folders["llama"]
    files = torch_helpers.weight_files(folder)
    assert [file.name for file in files] == ["model.safetensors"]
    torch_dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype)
    assert torch_helpers.safetensors_bytes(files, torch_dtype.itemsize) == parameter_bytes(model)


async def test_the_binding_estimates_before_and_measures_after_a_load(
    tiny_folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = config_from_dict(
        {
            "server": {"auto_install_requirements": False},
            "bindings": {
                "images": {
                    "type": "diffusers_binding",
                    "device": "cpu",
                    "models_folder": str(tiny_folders["sd"].parent),
                }
            },
        },
        environ={},
    )
    binding = await BindingManager(config).get("images")
    assert binding.memory_device("tiny-sd") == "cpu"
    estimate = await binding.estimate_footprint_mb("tiny-sd")
    assert await binding.estimate_footprint_mb("../escape") is None
    await binding.load_model("tiny-sd")
    pipeline = binding._models["tiny-sd"].pipeline
    modules = [c for c in pipeline.components.values() if isinstance(c, torch.nn.Module)]
    assert estimate == pytest.approx(parameter_bytes(*modules) / 2**20)
    assert binding.footprint_mb("tiny-sd") >= estimate  # buffers come on top
    probe = weakref.ref(next(modules[0].parameters()))
    del pipeline, modules
    alive_when_freed: list[bool] = []

    def free_memory() -> None:  # what the real one runs: gc, then the device caches
        import gc

        gc.collect()
        alive_when_freed.append(probe() is not None)

    monkeypatch.setattr(torch_helpers, "free_memory", free_memory)
    await binding.unload_model("tiny-sd")
    assert alive_when_freed == [False], "the model was still referenced when the cache was emptied"


class OutOfMemoryError(RuntimeError):
    """Named as torch's (``torch.OutOfMemoryError``, ``torch.cuda.OutOfMemoryError``)."""


async def test_out_of_memory_in_a_torch_call_is_503_memory_with_the_cache_emptied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lollms_server.core.bindings import BindingCard, BindingContext, CancelToken
    from lollms_server.core.errors import ServiceUnavailableError

    freed: list[bool] = []
    monkeypatch.setattr(torch_helpers, "free_memory", lambda: freed.append(True))
    binding = torch_helpers.TorchBinding(
        BindingContext("images", BindingCard(type_name="fake_torch"), {"device": "cpu"}, Path("."), "media")
    )

    def denoise(cancel: Any) -> None:
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(ServiceUnavailableError) as error:
        await binding.run_cancellable(denoise, CancelToken(), CancelToken())
    assert error.value.status_code == 503 and getattr(error.value, "reason", None) == "memory"
    assert int(error.value.headers["Retry-After"]) >= 1 and freed == [True]

    def other_failure() -> None:
        raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="something else"):  # stays the binding's failure (500)
        await binding.run_blocking(other_failure)
    assert freed == [True]


def test_the_cache_is_trimmed_after_a_job_only_when_it_hoards(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated GPUs: 0 keeps 3 GiB cached with 4 GiB free (trimmed), 1 keeps 0.5 GiB cached
    with 10 GiB free (kept)."""
    import contextlib

    cuda = torch.cuda
    reserved = {0: 5 * 2**30, 1: 3 * 2**30}
    allocated = {0: 2 * 2**30, 1: int(2.5 * 2**30)}
    free = {0: 4 * 2**30, 1: 10 * 2**30}
    current = {"device": 0}
    emptied: list[int] = []

    @contextlib.contextmanager
    def device(index: int) -> Any:
        current["device"] = index
        yield

    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "device_count", lambda: 2)
    monkeypatch.setattr(cuda, "memory_reserved", lambda index: reserved[index])
    monkeypatch.setattr(cuda, "memory_allocated", lambda index: allocated[index])
    monkeypatch.setattr(cuda, "mem_get_info", lambda index: (free[index], 80 * 2**30))
    monkeypatch.setattr(cuda, "device", device)
    monkeypatch.setattr(cuda, "empty_cache", lambda: emptied.append(current["device"]))
    assert torch_helpers.trim_cache() == [0] and emptied == [0]
