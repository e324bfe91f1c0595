"""What ``/api/tags``, ``/api/show`` and ``/api/ps`` say about models, from the binding cards,
the bindings' listings and model info, and the pools' residency.

Every model the key may use is listed twice over: ``<instance>/<model>:latest`` for each model
an instance can load, and ``<instance>:latest`` for its default model. ``digest`` identifies a
listing (name, size, file time); it is not a hash of the weights, which would mean reading them.
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio

from lollms_server.api.kit.catalog import default_model, kind, listings
from lollms_server.api.ollama_compat.translate import public_name
from lollms_server.core.bindings import BindingInstance
from lollms_server.core.config import AppConfig
from lollms_server.core.errors import LollmsError
from lollms_server.core.generation import GenerationService
from lollms_server.core.security import Principal
from lollms_server.utils.paths import safe_join

DECLARED_CAPABILITIES = ("vision", "insert", "thinking")
"""Capabilities a binding card declares in its ``capabilities`` list; ``completion``/``tools``
(text) and ``embedding`` follow from its ``generation_types``."""
PARAMETER_SIZE = re.compile(r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)([BbMm])(?![A-Za-z])")
QUANTIZATION = re.compile(
    r"(?<![A-Za-z0-9])(I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32)(?![A-Za-z0-9])", re.IGNORECASE
)
NEVER = datetime(2318, 1, 1, tzinfo=timezone.utc)
"""``expires_at`` of a model no idle rule unloads (Ollama's own "forever" is as far away)."""


@dataclass
class Listed:
    """One model an instance can load, as listed."""

    instance: BindingInstance
    model: str
    size: int
    modified: float


def capabilities(instance: BindingInstance) -> list[str]:
    card = instance.card
    kinds = set(card.generation_types)
    declared = set((card.model_extra or {}).get("capabilities") or [])
    found = ["completion", "tools"] if "ttt" in kinds else []
    if "embed" in kinds:
        found.append("embedding")
    return found + [name for name in DECLARED_CAPABILITIES if name in declared]


def details(instance: BindingInstance, model: str, architecture: str | None = None) -> dict[str, Any]:
    """Ollama's ``details``; size and quantization are read from the model's name when it says."""
    family = architecture or instance.card.type_name.removesuffix("_binding")
    size = PARAMETER_SIZE.search(model)
    quantization = QUANTIZATION.search(model.rsplit("/", 1)[-1])
    return {
        "parent_model": "",
        "format": "gguf" if model.lower().endswith(".gguf") else instance.card.type_name,
        "family": family,
        "families": [family],
        "parameter_size": f"{size.group(1)}{size.group(2).upper()}" if size else "",
        "quantization_level": quantization.group(1).upper() if quantization else "",
    }


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()


async def listed_models(
    generation: GenerationService, principal: Principal, started_at: float
) -> list[tuple[str, Listed]]:
    """(Ollama name, listing) for every text or embedding model the key may use (what Ollama
    serves; image, audio and video instances are for the other APIs), instances in config order."""
    found: list[tuple[str, Listed]] = []
    for listing in await listings(generation, principal, lambda instance: kind(instance) in ("ttt", "embed")):
        if listing.models is None:
            continue  # an instance that cannot start lists nothing
        instance = listing.instance
        entries = await anyio.to_thread.run_sync(_entries, instance, listing.models, started_at)
        default = default_model(generation, principal, instance)
        for entry in entries:
            if entry.model == default:
                found.append((public_name(instance.name), entry))
            found.append((public_name(instance.name, entry.model), entry))
    return found


def _entries(instance: BindingInstance, models: list[dict[str, Any]], started_at: float) -> list[Listed]:
    entries = []
    for model in models:
        name = str(model.get("name", ""))
        if not name:
            continue
        size = int(float(model.get("size_mb") or 0) * 2**20)
        modified = started_at
        try:
            stat = safe_join(instance.models_folder, name).stat()
            modified, size = stat.st_mtime, stat.st_size
        except (LollmsError, OSError):
            pass  # not a file of the models folder (a remote API's model)
        entries.append(Listed(instance, name, size, modified))
    return entries


async def modified_time(instance: BindingInstance, model: str, default: float) -> float:
    """When the model's file changed (``default`` for a model that is no file here)."""
    [entry] = await anyio.to_thread.run_sync(_entries, instance, [{"name": model}], default)
    return entry.modified


def tag(name: str, entry: Listed) -> dict[str, Any]:
    """One ``/api/tags`` model."""
    digest = hashlib.sha256(f"{entry.instance.name}/{entry.model}:{entry.size}:{entry.modified}".encode())
    return {
        "name": name,
        "model": name,
        "modified_at": _stamp(entry.modified),
        "size": entry.size,
        "digest": digest.hexdigest(),
        "details": details(entry.instance, entry.model),
    }


def context_length(instance: BindingInstance, info: dict[str, Any]) -> int | None:
    """The context the model runs with: the loaded model's, else the instance's setting."""
    for value in (info.get("context_size"), instance.settings.get("n_ctx"), instance.settings.get("num_ctx")):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def show(instance: BindingInstance, model: str, info: dict[str, Any], modified: float) -> dict[str, Any]:
    """``/api/show``: Go-template-like ``template`` (with ``.Suffix`` where the model fills in the
    middle, which Continue reads), ``parameters`` lines, ``model_info`` and ``capabilities``."""
    found = capabilities(instance)
    architecture = info.get("architecture") or instance.card.type_name.removesuffix("_binding")
    context = context_length(instance, info)
    model_info: dict[str, Any] = {"general.architecture": architecture, "general.basename": model}
    if context is not None:
        model_info[f"{architecture}.context_length"] = context
    if info.get("vocab_size"):
        model_info[f"{architecture}.vocab_size"] = info["vocab_size"]
    template = "{{ if .System }}{{ .System }}\n{{ end }}{{ .Prompt }}"
    if "insert" in found:
        template = "{{ .Prompt }}{{ .Suffix }}"
    return {
        "modelfile": f"# served by lollms_server binding instance {instance.name}\nFROM {model}\n",
        "parameters": f"num_ctx {context}" if context is not None else "",
        "template": template,
        "details": details(instance, model, info.get("architecture")),
        "model_info": model_info,
        "capabilities": found,
        "modified_at": _stamp(modified),
    }


def running(config: AppConfig, generation: GenerationService, principal: Principal) -> list[dict[str, Any]]:
    """``/api/ps``: the loaded models of the key's instances, with when idle unload frees them."""
    models = []
    now = time.time()
    for pool in generation.pools.snapshot()["pools"]:
        pool_config = config.resource_manager.pools.get(pool.get("name", ""))
        idle_limit = pool_config.idle_unload_seconds if pool_config is not None else None
        for loaded in pool.get("models") or []:
            instance = generation.bindings.instances.get(loaded.get("binding", ""))
            if instance is None or not principal.can_use_binding(instance.name):
                continue
            model = str(loaded.get("model", ""))
            size = int(float(loaded.get("footprint_mb") or 0) * 2**20)
            if idle_limit is None:
                expires = NEVER
            else:
                idle = 0.0 if loaded.get("in_use") else float(loaded.get("idle_seconds") or 0)
                expires = datetime.fromtimestamp(now, timezone.utc) + timedelta(seconds=idle_limit - idle)
            name = public_name(instance.name, model)
            models.append(
                {
                    "name": name,
                    "model": name,
                    "size": size,
                    "digest": hashlib.sha256(name.encode()).hexdigest(),
                    "details": details(instance, model),
                    "expires_at": expires.isoformat(),
                    "size_vram": size if on_device(loaded, instance) else 0,
                }
            )
    return models


def on_device(loaded: dict[str, Any], instance: BindingInstance) -> bool:
    """Whether a loaded model holds accelerator memory: its device in the memory ledger, else
    (a host that reports none) what the instance's settings say."""
    device = loaded.get("device")
    return device != "cpu" if isinstance(device, str) else on_gpu(instance)


def on_gpu(instance: BindingInstance) -> bool:
    """Whether the instance's settings put its model on an accelerator (``n_gpu_layers = "auto"``:
    when the installed llama.cpp can offload, as the binding decides)."""
    settings = instance.settings
    layers = settings.get("n_gpu_layers")
    if layers == "auto":
        return llama_gpu_offload()
    device = str(settings.get("device") or "")
    return bool(isinstance(layers, int) and layers != 0) or device.startswith(("cuda", "mps", "xpu"))


@functools.cache
def llama_gpu_offload() -> bool:
    """Whether the installed llama-cpp-python has a GPU backend (looked up once)."""
    try:
        import llama_cpp
    except ImportError:
        return False
    return bool(llama_cpp.llama_supports_gpu_offload())
