"""The Binding base class: the ~20 async methods a binding implements, with safe defaults.

Subclasses implement the methods of the generation types their card declares (the manager
checks it when it creates the instance). Blocking library calls go through the thread
bridges (:meth:`Binding.run_blocking`, :meth:`Binding.run_cancellable`,
:meth:`Binding.stream_from_thread`), so the event loop never waits on a model.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lollms_server.core.bindings import threads
from lollms_server.core.bindings.cards import BindingCard
from lollms_server.core.bindings.contract import (
    CancelToken,
    MediaOutput,
    MediaRequest,
    Progress,
    TextChunk,
    TextRequest,
    TextResult,
)
from lollms_server.core.errors import BadRequestError, BindingError, NotFoundError, PermissionDeniedError
from lollms_server.utils.paths import safe_join

T = TypeVar("T")


@dataclass
class BindingContext:
    """Everything an instance learns about its place in the server."""

    instance_name: str
    card: BindingCard
    settings: dict[str, Any]
    models_folder: Path
    pool: str
    default_model: str | None = None
    allowed_downloads: tuple[str, ...] = ()
    """Hub owners or ``owner/repo`` this instance may download from (``[downloads]``)."""
    max_download_mb: float = 20480.0


class Binding:
    """Base class of every binding.

    Subclasses implement the methods of the generation types their card declares. Every
    method is ``async``; blocking library calls go through :meth:`run_blocking` or
    :meth:`stream_from_thread` so the event loop never waits on a model.
    """

    resident_models: bool = True
    """False for a binding whose models live elsewhere (a remote API): its pool then tracks no
    residency (footprint, idle unload, eviction) for it."""

    def __init__(self, context: BindingContext) -> None:
        self.context = context
        self.instance_name = context.instance_name
        self.card = context.card
        self.settings = context.settings
        self.models_folder = context.models_folder

    # ---- model lifecycle -------------------------------------------------
    async def list_available_models(self) -> list[dict[str, Any]]:
        """Models this instance can load (name plus whatever details are cheap to get)."""
        return []

    async def load_model(self, model_name: str) -> None:
        """Load ``model_name`` (idempotent)."""
        raise NotImplementedError

    async def unload_model(self, model_name: str) -> None:
        """Release ``model_name`` and its memory."""

    def loaded_models(self) -> list[str]:
        return []

    def footprint_mb(self, model_name: str) -> float:
        """Memory the loaded model holds, for the pool's memory budget."""
        return 0.0

    async def estimate_footprint_mb(self, model_name: str) -> float | None:
        """Memory the model will need once loaded on :meth:`memory_device` (weights plus what
        the binding allocates with them: KV cache, buffers), if it can be told before loading.
        The server reserves it on the device before the load, so an estimate should rather be
        high than low; after the load it measures :meth:`footprint_mb` and remembers it."""
        return None

    async def request_memory_mb(self, model_name: str, request: MediaRequest) -> float:
        """Working memory one media request needs on :meth:`memory_device` beyond the resident
        model (activations for its width x height x images, frames, seconds of audio...): the
        server reserves it for the generation. 0: nothing beyond what the model holds."""
        return 0.0

    async def fit_to_memory(self, model_name: str, available_mb: float | None) -> float | None:
        """Called before every load: ``available_mb`` is what its device can give even after
        idle models are evicted when the estimate exceeds it, else None (load as configured). A
        binding that can place part of the model elsewhere (llama.cpp: fewer GPU layers)
        prepares that for the coming load and returns its new estimate; None: it cannot (the
        load then waits for memory) or need not."""
        return None

    def memory_device(self, model_name: str) -> str:
        """Where ``model_name`` puts its memory: ``cpu``, ``cuda:0``, ``cuda:1``..., ``mps``
        (one memory arbiter per device, shared by every pool; see core.devices)."""
        return "cpu"

    def engine_counters(self, model_name: str) -> dict[str, float]:
        """Cumulative counters of a loaded model's generation engine (a batch engine's steps,
        tokens and seconds), reported as ``/metrics`` ``lollms_engine_*``; none by default."""
        return {}

    async def get_model_info(self, model_name: str | None) -> dict[str, Any]:
        return {"binding": self.instance_name, "model_name": model_name}

    async def health_check(self) -> dict[str, Any]:
        return {"status": "ok"}

    async def close(self) -> None:
        """Release what the instance holds besides models (connections...) at shutdown."""

    # ---- generation ------------------------------------------------------
    async def stream_text(
        self, model_name: str, request: TextRequest, cancel: CancelToken
    ) -> AsyncGenerator[TextChunk, None]:
        raise BindingError(f"Binding '{self.instance_name}' does not generate text.")
        yield TextChunk()  # pragma: no cover - makes this an async generator

    async def generate_text(self, model_name: str, request: TextRequest, cancel: CancelToken) -> TextResult:
        """Whole text; by default the joined stream (so it stops when cancelled)."""
        parts: list[str] = []
        finish_reason: str | None = None
        usage: dict[str, int] = {}
        metadata: dict[str, Any] = {}
        async for chunk in self.stream_text(model_name, request, cancel):
            parts.append(chunk.text)
            finish_reason = chunk.finish_reason or finish_reason
            usage = chunk.usage or usage
            metadata.update(chunk.metadata or {})
        return TextResult(text="".join(parts), finish_reason=finish_reason, usage=usage, metadata=metadata)

    # ---- media (run blocking work with run_blocking; call cancel.check() between steps) ----
    async def generate_image(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        raise BindingError(f"Binding '{self.instance_name}' does not generate images.")

    async def edit_image(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        raise BindingError(f"Binding '{self.instance_name}' does not edit images.")

    async def generate_video(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        raise BindingError(f"Binding '{self.instance_name}' does not generate video.")

    async def generate_music(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        raise BindingError(f"Binding '{self.instance_name}' does not generate music.")

    async def synthesize_speech(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        raise BindingError(f"Binding '{self.instance_name}' does not synthesize speech.")

    async def transcribe(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        raise BindingError(f"Binding '{self.instance_name}' does not transcribe audio.")

    async def embed(self, model_name: str, texts: list[str]) -> list[list[float]]:
        raise BindingError(f"Binding '{self.instance_name}' does not compute embeddings.")

    def supports_native_tools(self, model_name: str) -> bool:
        """Whether :meth:`chat_with_tools` works for this model (else the JSON tool protocol is used)."""
        return False

    async def chat_with_tools(
        self, model_name: str, request: TextRequest, tools: list[dict[str, Any]], cancel: CancelToken
    ) -> tuple[str, list[dict[str, Any]], dict[str, int]]:
        """One chat turn offering OpenAI-style ``tools``: (text, calls [{id, name, arguments}], usage)."""
        raise BindingError(f"Binding '{self.instance_name}' has no native tool calling.")

    async def tokenize(self, model_name: str, text: str) -> list[int]:
        raise BadRequestError(f"Binding '{self.instance_name}' cannot tokenize.")

    async def detokenize(self, model_name: str, tokens: list[int]) -> str:
        raise BadRequestError(f"Binding '{self.instance_name}' cannot detokenize.")

    # ---- commands and runtime settings ------------------------------------
    async def run_command(self, name: str, parameters: dict[str, Any], progress: Progress) -> Any:
        """Run command ``name`` of the card's ``commands`` (the API allows declared names only,
        with checked parameters): the method ``command_<name>``, awaited when it is async, else
        run in a thread. Returns something JSON can carry."""
        method = getattr(self, f"command_{name}", None)
        if not callable(method):
            raise BindingError(f"Binding '{self.instance_name}' does not implement command '{name}'.")
        if inspect.iscoroutinefunction(method):
            return await method(**parameters)
        return await self.run_blocking(method, **parameters)

    async def apply_settings(self, settings: dict[str, Any]) -> None:
        """New validated settings, applied between generations (none of this instance runs).
        A binding that builds clients or loads state from its settings at start overrides this."""
        self.settings = dict(settings)
        self.context.settings = dict(settings)

    # ---- helpers for subclasses -------------------------------------------
    def resolve_model_path(self, model_name: str, suffixes: tuple[str, ...] = ()) -> Path:
        """The file or folder of ``model_name`` inside the models folder (400 if it escapes)."""
        path = safe_join(self.models_folder, model_name)
        if suffixes and path.is_dir() is False and path.suffix.lower() not in suffixes:
            raise BadRequestError(
                f"Model '{model_name}' must be one of: {', '.join(suffixes)}.", param="model_name"
            )
        if not path.exists():
            raise NotFoundError(f"Model '{model_name}' not found for binding '{self.instance_name}'.")
        return path

    def check_download(self, repo_id: str, size_mb: float | None = None) -> None:
        """Refuse a download the server does not allow: 403 unless ``repo_id``'s owner or the
        repository is in ``[downloads] allowed_sources``; 400 past ``max_download_mb``."""
        owner = repo_id.split("/", 1)[0]
        if owner not in self.context.allowed_downloads and repo_id not in self.context.allowed_downloads:
            raise PermissionDeniedError(
                f"Downloading '{repo_id}' is not allowed on this server "
                "(an administrator lists allowed sources in [downloads] allowed_sources)."
            )
        if size_mb is not None and size_mb > self.context.max_download_mb:
            raise BadRequestError(
                f"'{repo_id}' is {size_mb:.0f} MB; this server downloads at most "
                f"{self.context.max_download_mb:.0f} MB.",
                param="model_name",
            )

    # ---- thread bridges (see core.bindings.threads) ------------------------
    @staticmethod
    async def run_blocking(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call in a worker thread."""
        return await threads.run_blocking(func, *args, **kwargs)

    @staticmethod
    async def run_cancellable(func: Callable[..., T], cancel: CancelToken, *args: Any, **kwargs: Any) -> T:
        """Run a blocking call that checks ``cancel`` between its steps, in a worker thread;
        when the awaiting task is cancelled, wait until the call has really stopped."""
        return await threads.run_cancellable(func, cancel, *args, **kwargs)

    @staticmethod
    def stream_from_thread(
        produce: Callable[[], Iterator[T]], cancel: CancelToken
    ) -> AsyncGenerator[T, None]:
        """Pull a blocking iterator in a dedicated thread and yield its items on the loop."""
        return threads.stream_from_thread(produce, cancel)
