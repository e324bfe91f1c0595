"""Helpers for bindings built on PyTorch (transformers, diffusers): device, dtype, footprint,
freeing memory, finding model folders. Part of the public API bindings may import; torch is
imported only when a helper is called."""

from __future__ import annotations

import gc
import json
import logging
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from lollms_server.core.bindings import threads
from lollms_server.core.bindings.base import Binding, BindingContext
from lollms_server.core.bindings.contract import CancelToken
from lollms_server.core.errors import BadRequestError, BindingError, NotFoundError, ServiceUnavailableError
from lollms_server.utils.paths import safe_join

__all__ = [
    "DEVICE_OPTIONS",
    "DTYPE_OPTIONS",
    "pick_device",
    "pick_dtype",
    "module_footprint_mb",
    "free_memory",
    "folder_size_mb",
    "safetensors_bytes",
    "weight_files",
    "locate_model_folder",
    "LoadedTorchModel",
    "DeviceOutOfMemoryError",
    "TorchBinding",
]

T = TypeVar("T")

logger = logging.getLogger(__name__)

DEVICE_OPTIONS = ["auto", "cuda", "mps", "cpu"]
DTYPE_OPTIONS = ["auto", "float32", "float16", "bfloat16"]


def pick_device(setting: str = "auto") -> str:
    """``auto`` picks cuda, then mps, then cpu."""
    import torch

    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(setting: str, device: str) -> Any:
    """``auto`` is float16 on a GPU and float32 on the CPU."""
    import torch

    if setting == "auto":
        return torch.float16 if device in ("cuda", "mps") else torch.float32
    return getattr(torch, setting)


def module_footprint_mb(*objects: Any) -> float:
    """Bytes held by the parameters and buffers of torch modules (pipelines: their components)."""
    import torch

    seen: set[int] = set()
    total = 0
    modules: list[Any] = []
    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            modules.append(obj)
        elif hasattr(obj, "components"):
            modules.extend(value for value in obj.components.values() if isinstance(value, torch.nn.Module))
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total / 2**20


def free_memory() -> None:
    """Give memory back after unloading a model (Python objects, then the GPU's cache and the
    handles other processes held). Call it once nothing references the model any more."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.ipc_collect()
        mps = getattr(torch, "mps", None)
        if mps is not None and torch.backends.mps.is_available():
            mps.empty_cache()
    except ImportError:  # pragma: no cover
        pass


TRIM_SHARE = 0.25
"""PyTorch's cached-but-unused GPU memory is given back once it exceeds this share of the
driver's free memory (ComfyUI's rule)."""


def trim_cache() -> list[int]:
    """After a generation: give PyTorch's cached-but-unused memory back to the driver on each
    GPU where it is more than :data:`TRIM_SHARE` of what the driver has free, so llama.cpp and
    other programs sharing the card can allocate it. Returns the GPUs trimmed."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return []
    if not torch.cuda.is_available():
        return []
    trimmed = []
    for index in range(torch.cuda.device_count()):
        cached = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
        free, _total = torch.cuda.mem_get_info(index)
        if cached > 0 and cached > TRIM_SHARE * free:
            with torch.cuda.device(index):
                torch.cuda.empty_cache()
            trimmed.append(index)
    return trimmed


def folder_size_mb(path: Path) -> float:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file()) / 2**20


SAFETENSORS_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip
FLOAT_TYPES = {"F64", "F32", "F16", "BF16"}
"""Stored types a load in ``torch_dtype`` converts (8-bit floats and integers stay as they are)."""
MAX_HEADER_BYTES = 100 * 2**20


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files ``from_pretrained`` reads from a model folder (no variant such as
    ``.fp16``): a diffusers pipeline's component sub-folders named in ``model_index.json``, or
    the folder itself; a sharded checkpoint through its ``*.safetensors.index.json``."""
    index = folder / "model_index.json"
    folders = [folder]
    if index.is_file():
        components = json.loads(index.read_text(encoding="utf-8"))
        folders = [
            folder / name
            for name, value in components.items()
            if isinstance(value, list) and value and value[0] and (folder / name).is_dir()
        ]
    found: list[Path] = []
    for place in folders:
        shard_index = [p for p in place.glob("*.safetensors.index.json") if p.name.count(".") == 3]
        if shard_index:
            weight_map = json.loads(shard_index[0].read_text(encoding="utf-8")).get("weight_map", {})
            found.extend(safe_join(place, name) for name in sorted(set(weight_map.values())))
        else:  # model.safetensors, diffusion_pytorch_model.safetensors: one dot, no variant
            found.extend(p for p in sorted(place.glob("*.safetensors")) if p.name.count(".") == 1)
    return found


def safetensors_bytes(files: list[Path], itemsize: int | None = None) -> int:
    """Bytes the tensors of ``files`` hold once loaded, read from their headers only: floating
    tensors at ``itemsize`` bytes an element (the load dtype; None: as stored)."""
    total = 0
    for file in files:
        with file.open("rb") as stream:
            (length,) = struct.unpack("<Q", stream.read(8))
            if length > MAX_HEADER_BYTES:
                raise ValueError(f"{file.name}: safetensors header of {length} bytes")
            header = json.loads(stream.read(length))
        for name, tensor in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in tensor["shape"]:
                count *= int(dim)
            stored = tensor["dtype"]
            size = itemsize if itemsize is not None and stored in FLOAT_TYPES else SAFETENSORS_SIZES[stored]
            total += count * size
    return total


def locate_model_folder(
    models_folder: Path,
    model_name: str,
    *,
    allow_download: bool,
    instance: str,
    check_download: Callable[[str], None] | None = None,
) -> str:
    """A model folder inside ``models_folder`` (400 if the name escapes it), or a hub id
    (``owner/name``) when downloads are on and ``check_download`` lets it through; 404
    otherwise."""
    path = safe_join(models_folder, model_name)
    if path.is_dir():
        return str(path)
    if path.is_file():
        raise BadRequestError(f"Model '{model_name}' must be a model folder.", param="model_name")
    if allow_download and model_name.count("/") == 1:
        if check_download is not None:
            check_download(model_name)
        if Path(model_name).exists():  # from_pretrained would take ./owner/name of the server's cwd
            raise BadRequestError(f"Model '{model_name}' is ambiguous on this server.", param="model_name")
        return model_name  # from_pretrained downloads it (with a progress bar) on first use
    raise NotFoundError(f"Model '{model_name}' not found for binding '{instance}'.", param="model_name")


class DeviceOutOfMemoryError(ServiceUnavailableError):
    """A torch call ran out of device memory: 503 with ``reason = "memory"`` (the cache is
    emptied first), never a 500: the same request may fit once other work is done."""

    reason = "memory"


def _out_of_memory(exc: BaseException) -> bool:
    return any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__)


async def _memory_checked(call: Any) -> Any:
    try:
        return await call
    except Exception as exc:
        if not _out_of_memory(exc):
            raise
        logger.warning("Out of device memory: %s", str(exc).splitlines()[0] if str(exc) else exc)
        await threads.run_blocking(free_memory)
        raise DeviceOutOfMemoryError(
            "The device ran out of memory for this request; try again later or ask for less "
            "(fewer or smaller images, shorter audio).",
            retry_after=5,
        ) from None


def _wait_for(lock: threading.Lock) -> None:
    with lock:
        pass


class LoadedTorchModel:
    """One resident model: what holds its memory (for the footprint) and a lock for its calls."""

    def __init__(self, modules: Any) -> None:
        self.modules = modules
        self.lock = threading.Lock()


class TorchBinding(Binding):
    """The shared lifecycle of in-process PyTorch bindings (diffusers, transformers, audio):
    device and dtype from the ``device``/``dtype`` settings, model folders found with
    ``locate_model_folder``, one :class:`LoadedTorchModel` per model, footprint, unload that
    waits for a running call and frees memory. Subclasses implement :meth:`load_from`."""

    def __init__(self, context: BindingContext) -> None:
        super().__init__(context)
        self.device = pick_device(self.settings.get("device") or "auto")
        self.dtype = pick_dtype(self.settings.get("dtype") or "auto", self.device)
        self._models: dict[str, Any] = {}

    async def scan_models(
        self, marker: str, describe: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Model folders below the models folder that hold the JSON file ``marker``, each as
        ``{"name": <relative path>, **describe(<that JSON>)}`` (read in a worker thread)."""

        def scan() -> list[dict[str, Any]]:
            if not self.models_folder.is_dir():
                return []
            return [
                {
                    "name": str(found.parent.relative_to(self.models_folder)),
                    **describe(json.loads(found.read_text())),
                }
                for found in sorted(self.models_folder.rglob(marker))
            ]

        return await self.run_blocking(scan)

    def load_from(self, location: str) -> LoadedTorchModel:
        """Build the model from a folder or hub id (runs in a worker thread)."""
        raise NotImplementedError

    async def load_model(self, model_name: str) -> None:
        if model_name in self._models:
            return
        location = locate_model_folder(
            self.models_folder,
            model_name,
            allow_download=bool(self.settings.get("allow_download")),
            instance=self.instance_name,
            check_download=self.check_download,
        )
        try:
            self._models[model_name] = await self.run_blocking(self.load_from, location)
        except (OSError, ValueError, KeyError) as exc:
            logger.error("%s could not load %s: %s", self.card.type_name, model_name, exc)
            raise BindingError(
                f"Model '{model_name}' could not be loaded by {self.card.type_name}."
            ) from None

    async def unload_model(self, model_name: str) -> None:
        """Wait for a call still running on the model, drop every reference to it (the entry,
        its modules and derived pipelines), and only then collect and empty the device's cache:
        freed while something still pointed at them, the tensors would stay in PyTorch's cache."""
        loaded = self._models.pop(model_name, None)
        if loaded is None:
            return
        lock = loaded.lock
        await self.run_blocking(_wait_for, lock)
        for attribute in [name for name in vars(loaded) if name != "lock"]:
            setattr(loaded, attribute, None)
        del loaded
        await self.run_blocking(free_memory)

    def loaded_models(self) -> list[str]:
        return list(self._models)

    def footprint_mb(self, model_name: str) -> float:
        loaded = self._models.get(model_name)
        return module_footprint_mb(loaded.modules) if loaded is not None else 0.0

    def memory_device(self, model_name: str) -> str:
        return "cuda:0" if self.device == "cuda" else self.device

    async def estimate_footprint_mb(self, model_name: str) -> float | None:
        """The safetensors the loader reads, at the dtype it loads them in (headers only);
        the folder's size when it has none (older ``.bin`` checkpoints)."""
        try:
            path = safe_join(self.models_folder, model_name)
        except BadRequestError:
            return None
        if not path.is_dir():
            return None

        def estimate() -> float:
            try:
                files = weight_files(path)
                if files:
                    return safetensors_bytes(files, self.dtype.itemsize) / 2**20
            except (OSError, ValueError, KeyError, TypeError):
                logger.warning("Could not read the safetensors headers of %s", path, exc_info=True)
            return folder_size_mb(path)

        return await self.run_blocking(estimate)

    @staticmethod
    async def run_blocking(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """:meth:`Binding.run_blocking`; a torch out-of-memory error is a 503 ``reason = "memory"``."""
        result: T = await _memory_checked(threads.run_blocking(func, *args, **kwargs))
        return result

    @staticmethod
    async def run_cancellable(func: Callable[..., T], cancel: CancelToken, *args: Any, **kwargs: Any) -> T:
        """:meth:`Binding.run_cancellable` (a generation); a torch out-of-memory error is a 503
        ``reason = "memory"``; PyTorch's cache is trimmed after it (:func:`trim_cache`)."""
        try:
            result: T = await _memory_checked(threads.run_cancellable(func, cancel, *args, **kwargs))
        finally:
            await threads.run_blocking(trim_cache)
        return result

    def loaded(self, model_name: str) -> Any:
        loaded = self._models.get(model_name)
        if loaded is None:
            raise BindingError(f"Model '{model_name}' is not loaded.")
        return loaded

    def base_info(self, model_name: str | None) -> dict[str, Any]:
        return {"binding": self.instance_name, "model_name": model_name, "device": self.device}
