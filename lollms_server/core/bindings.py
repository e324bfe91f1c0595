"""Bindings: cards, the Binding base class and the BindingManager (DESIGN §5).

A binding type is a folder with ``binding_card.yaml`` (read without importing code) and
``__init__.py`` whose module constant ``BindingName`` names the class. The manager validates
each ``[bindings.<instance>]`` against its card at start-up and imports the code only when the
instance is first used.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, TypeVar

import anyio
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lollms_server.core.config import AppConfig, BindingInstanceConfig
from lollms_server.core.errors import (
    BadRequestError,
    BindingError,
    ConfigError,
    NotFoundError,
)
from lollms_server.utils.media import png_bytes, wav_bytes
from lollms_server.utils.modules import import_file
from lollms_server.utils.paths import is_safe_name, safe_join

logger = logging.getLogger(__name__)

__all__ = [  # the public API bindings build on
    "BadRequestError",
    "Binding",
    "BindingCard",
    "BindingContext",
    "BindingError",
    "CancelToken",
    "GenerationCancelled",
    "MediaOutput",
    "MediaRequest",
    "NotFoundError",
    "Progress",
    "StopTextBuffer",
    "SettingSpec",
    "TextChunk",
    "TextRequest",
    "TextResult",
    "png_bytes",
    "safe_join",
    "wav_bytes",
]

GenerationType = Literal["ttt", "tti", "i2i", "ttv", "ttm", "tts", "stt", "embed"]
T = TypeVar("T")
CARD_FILE = "binding_card.yaml"
SECRET_MASK = "********"


# --------------------------------------------------------------------------- cards


class SettingSpec(BaseModel):
    """One setting of a binding type, as its card declares it."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["str", "int", "float", "bool", "list", "dict"] = Field("str", description="Value type.")
    default: Any = Field(None, description="Value when the instance does not set it.")
    description: str = Field("", description="What the setting does.")
    options: list[Any] | None = Field(None, description="Allowed values, when restricted.")
    secret: bool = Field(False, description="Never shown in responses or logs.")
    required: bool = Field(False, description="The instance must set it.")


class BindingCard(BaseModel):
    """``binding_card.yaml``: what a binding type is and which settings it takes."""

    model_config = ConfigDict(extra="allow")

    type_name: str = Field(..., description="Type name; equals the folder name.")
    display_name: str = Field("", description="Human-readable name.")
    version: str = Field("0.0.0", description="Version of the binding.")
    author: str = Field("", description="Author.")
    description: str = Field("", description="What it serves.")
    requirements: list[str] = Field(default_factory=list, description="pip requirements.")
    generation_types: list[GenerationType] = Field(default_factory=list, description="Supported types.")
    supports_streaming: bool = Field(False, description="Whether text can be streamed.")
    models_subfolder: str | None = Field(None, description="Sub-folder of paths.models_folder.")
    instance_schema: dict[str, SettingSpec] = Field(default_factory=dict, description="Settings.")
    folder: Path | None = Field(None, exclude=True, description="Where the card was found.")

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"folder"})


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict),
}


def validate_settings(instance: str, card: BindingCard, values: dict[str, Any]) -> dict[str, Any]:
    """Check an instance's settings against its card; return them with defaults filled in."""
    schema = card.instance_schema
    for key in values:
        if key not in schema:
            known = ", ".join(sorted(schema)) or "none"
            raise ConfigError(
                f"bindings.{instance}.{key}: unknown setting for type '{card.type_name}' (known: {known})"
            )
    result: dict[str, Any] = {}
    for key, spec in schema.items():
        if key not in values:
            if spec.required:
                raise ConfigError(f"bindings.{instance}.{key}: required setting is missing")
            result[key] = spec.default
            continue
        value = values[key]
        if value is not None and not _TYPE_CHECKS[spec.type](value):
            raise ConfigError(f"bindings.{instance}.{key}: expected {spec.type}, got {type(value).__name__}")
        if spec.type == "float" and isinstance(value, int):
            value = float(value)
        if spec.options is not None and value is not None and value not in spec.options:
            raise ConfigError(f"bindings.{instance}.{key}: must be one of {spec.options}")
        result[key] = value
    return result


def read_card(folder: Path) -> BindingCard:
    path = folder / CARD_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        card = BindingCard.model_validate(data)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"{path}: invalid binding card: {exc}") from None
    if card.type_name != folder.name:
        raise ConfigError(f"{path}: type_name '{card.type_name}' must equal the folder name '{folder.name}'")
    card.folder = folder
    return card


# --------------------------------------------------------------------------- contract


class CancelToken(threading.Event):
    """Set when the client left or the server stops; bindings check it between steps."""

    @property
    def cancelled(self) -> bool:
        return self.is_set()

    def check(self) -> None:
        """Raise :class:`GenerationCancelled` if the generation should stop (call between steps)."""
        if self.is_set():
            raise GenerationCancelled()


@dataclass
class TextRequest:
    """What a text binding receives: chat messages (OpenAI shape) and merged parameters."""

    messages: list[dict[str, Any]]
    parameters: dict[str, Any] = field(default_factory=dict)
    prompt: str | None = None  # raw completion prompt, when the caller wants no chat template
    prompt_format: dict[str, str] = field(default_factory=dict)
    """For bindings that build a raw prompt themselves: ``user_prefix``, ``ai_prefix`` and
    ``link_text`` of the personality (empty when there is none)."""

    @property
    def stop(self) -> list[str]:
        stop = self.parameters.get("stop") or []
        return [stop] if isinstance(stop, str) else list(stop)


@dataclass
class TextChunk:
    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    metadata: dict[str, Any] | None = None  # on the last chunk: extra output metadata


@dataclass
class TextResult:
    text: str
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


class GenerationCancelled(Exception):
    """Raised inside a binding's worker thread when the client left (see ``CancelToken.check``)."""


@dataclass
class MediaRequest:
    """What a media binding receives: the prompt, decoded inputs and merged parameters.

    ``images`` and ``mask`` hold the bytes of validated images (PNG, JPEG, WebP...); ``audio``
    holds the bytes of an audio file in a format the server recognized (``audio_format``).
    """

    generation_type: str
    prompt: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    images: list[bytes] = field(default_factory=list)
    mask: bytes | None = None
    audio: bytes | None = None
    audio_format: str | None = None


@dataclass
class MediaOutput:
    """One produced item: raw bytes (image/video/audio) or text, with its mime type."""

    type: Literal["image", "video", "audio", "text", "json"]
    data: bytes | str | Any
    mime_type: str
    metadata: dict[str, Any] = field(default_factory=dict)


Progress = Callable[[int, int], None]
"""``progress(step, total)``: callable from any thread; streamed to the client as info events."""

MEDIA_METHODS: dict[str, str] = {
    "tti": "generate_image",
    "i2i": "edit_image",
    "ttv": "generate_video",
    "ttm": "generate_music",
    "tts": "synthesize_speech",
    "stt": "transcribe",
}


class StopTextBuffer:
    """Holds back text that may be the start of a stop sequence; cuts at the first stop.

    Text bindings feed it decoded pieces; what it returns is safe to stream.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self.pending = ""

    def push(self, piece: str) -> tuple[str, bool]:
        """Add decoded text; return (text safe to emit, whether a stop sequence was reached)."""
        self.pending += piece
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        found = [position for position in (self.pending.find(stop) for stop in self.stops) if position >= 0]
        if found:
            out, self.pending = self.pending[: min(found)], ""
            return out, True
        hold = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(stop[:size]):
                    hold = size
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass
class BindingContext:
    """Everything an instance learns about its place in the server."""

    instance_name: str
    card: BindingCard
    settings: dict[str, Any]
    models_folder: Path
    pool: str
    default_model: str | None = None


class Binding:
    """Base class of every binding.

    Subclasses implement the methods of the generation types their card declares. Every
    method is ``async``; blocking library calls go through :meth:`run_blocking` or
    :meth:`stream_from_thread` so the event loop never waits on a model.
    """

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
        """Memory the model will need once loaded, if it can be told before loading."""
        return None

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

    @staticmethod
    async def run_blocking(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call in a worker thread."""
        return await asyncio.to_thread(func, *args, **kwargs)

    @staticmethod
    async def run_cancellable(func: Callable[..., T], cancel: CancelToken, *args: Any, **kwargs: Any) -> T:
        """Run a blocking call that checks ``cancel`` between its steps, in a worker thread.

        If the awaiting task is cancelled (client gone, timeout), the token is set and this waits
        until the call has really stopped, so the pool slot is never freed under a busy model.
        """
        work = asyncio.ensure_future(asyncio.to_thread(func, *args, **kwargs))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            cancel.set()
            with anyio.CancelScope(shield=True), anyio.move_on_after(120):
                await asyncio.wait({work})
            if work.done() and not work.cancelled():
                work.exception()  # retrieved: a GenerationCancelled here is expected
            raise

    @staticmethod
    async def stream_from_thread(
        produce: Callable[[], Iterator[T]], cancel: CancelToken
    ) -> AsyncGenerator[T, None]:
        """Pull a blocking iterator in a dedicated thread and yield its items on the loop.

        The producer runs at full speed and appends items to a deque; it wakes the loop only
        when the consumer is actually waiting, so a fast producer costs one wake-up per batch
        rather than per item. When the consumer stops early or is cancelled, the token is set,
        the producer stops between items and this generator waits until it has: a slot is
        never released while the model is still busy.
        """
        loop = asyncio.get_running_loop()
        items: deque[tuple[str, Any]] = deque()
        ready = asyncio.Event()
        finished = asyncio.Event()
        consumer_waiting = False

        def wake(event: asyncio.Event) -> None:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # loop closed: nobody is listening any more
                pass

        def put(kind: str, value: Any) -> None:
            nonlocal consumer_waiting
            items.append((kind, value))
            if consumer_waiting:
                consumer_waiting = False
                wake(ready)

        def run() -> None:
            iterator: Iterator[T] | None = None
            try:
                iterator = produce()
                for item in iterator:
                    if cancel.is_set():
                        break
                    put("item", item)
                put("done", None)
            except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
                put("error", exc)
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    try:
                        close()
                    except Exception:  # noqa: BLE001
                        logger.debug("closing a producer failed", exc_info=True)
                wake(finished)

        completed = False
        thread = threading.Thread(target=run, name="lollms-producer", daemon=True)
        thread.start()
        try:
            while True:
                if not items:
                    ready.clear()
                    consumer_waiting = True
                    if not items:  # re-check: the producer may have appended meanwhile
                        await ready.wait()
                    consumer_waiting = False
                    continue
                kind, value = items.popleft()
                if kind == "item":
                    yield value
                    continue
                completed = True
                if kind == "done":
                    return
                raise value
        finally:
            if not completed:  # the consumer left early: stop the producer
                cancel.set()
            with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                await finished.wait()  # a slot is never released under a busy producer


async def with_progress(
    run: Callable[[CancelToken, Progress], Awaitable[list[MediaOutput]]], cancel: CancelToken
) -> AsyncGenerator[tuple[int, int] | list[MediaOutput], None]:
    """Run a media call ``run(cancel, progress)``, yielding its progress as (step, total), then
    its outputs; closing the generator early sets ``cancel``, cancels the call and waits until
    it has stopped."""
    loop = asyncio.get_running_loop()
    steps: asyncio.Queue[tuple[int, int]] = asyncio.Queue()

    def progress(step: int, total: int) -> None:
        try:
            loop.call_soon_threadsafe(steps.put_nowait, (step, total))
        except RuntimeError:  # loop closed
            pass

    work = asyncio.ensure_future(run(cancel, progress))
    try:
        while not work.done():
            getter = asyncio.ensure_future(steps.get())
            await asyncio.wait({work, getter}, return_when="FIRST_COMPLETED")
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()
        yield work.result()
    finally:
        if not work.done():
            cancel.set()
            work.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait({work})  # a slot is never released under a busy model


class ForwardingBinding(Binding):
    """Base of the stand-ins for instances whose pool runs elsewhere (a worker process, a Ray
    actor): every media generation type goes to :meth:`forward_media`."""

    async def forward_media(
        self, model_name: str, request: MediaRequest, progress: Progress
    ) -> list[MediaOutput]:
        raise NotImplementedError

    async def generate_image(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        return await self.forward_media(model_name, request, progress)

    async def edit_image(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        return await self.forward_media(model_name, request, progress)

    async def generate_video(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        return await self.forward_media(model_name, request, progress)

    async def generate_music(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        return await self.forward_media(model_name, request, progress)

    async def synthesize_speech(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        return await self.forward_media(model_name, request, progress)

    async def transcribe(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        return await self.forward_media(model_name, request, progress)


# --------------------------------------------------------------------------- manager


@dataclass
class BindingInstance:
    """A configured instance: its card, validated settings and (once used) its object."""

    name: str
    card: BindingCard
    config: BindingInstanceConfig
    settings: dict[str, Any]
    pool: str
    models_folder: Path
    binding: Binding | None = None

    def context(self) -> BindingContext:
        """What the binding object of this instance (or its stand-in) is built with."""
        return BindingContext(
            instance_name=self.name,
            card=self.card,
            settings=dict(self.settings),
            models_folder=self.models_folder,
            pool=self.pool,
            default_model=self.config.model_name,
        )

    def public(self) -> dict[str, Any]:
        """Description for list endpoints, with secret settings masked."""
        settings = {
            key: (SECRET_MASK if self.card.instance_schema[key].secret and value not in (None, "") else value)
            for key, value in self.settings.items()
        }
        return {
            "name": self.name,
            "type": self.card.type_name,
            "pool": self.pool,
            "model_name": self.config.model_name,
            "generation_types": list(self.card.generation_types),
            "supports_streaming": self.card.supports_streaming,
            "loaded": self.binding is not None,
            "settings": settings,
        }


class BindingManager:
    """Discovers binding types, validates instances, and instantiates them on first use."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.cards = self.discover_cards(
            [config.paths.zoos_folder / "bindings", config.paths.bindings_folder]
        )
        self.instances: dict[str, BindingInstance] = {}
        for name, instance_config in config.bindings.items():
            self.instances[name] = self._configure(name, instance_config)
        # pool -> its host when it runs elsewhere: WorkerSupervisor (isolation = "process") or
        # RayPoolHost (cluster.mode = "ray")
        self.supervisors: dict[str, Any] = {pool: self._host(pool) for pool in sorted(config.remote_pools())}
        self._locks: dict[str, asyncio.Lock] = {}

    @staticmethod
    def discover_cards(folders: list[Path]) -> dict[str, BindingCard]:
        """Read every card; a later folder (the user's) wins on a name clash."""
        cards: dict[str, BindingCard] = {}
        for root in folders:
            if not root.is_dir():
                continue
            for folder in sorted(root.iterdir()):
                if not (folder / CARD_FILE).is_file():
                    continue
                try:
                    cards[folder.name] = read_card(folder)
                except ConfigError as exc:
                    logger.error("Skipping binding %s: %s", folder.name, exc.message)
        return cards

    def _configure(self, name: str, instance_config: BindingInstanceConfig) -> BindingInstance:
        if not is_safe_name(name):
            raise ConfigError(f"bindings.{name}: instance names use letters, digits, '-', '_' and '.'")
        card = self.cards.get(instance_config.type)
        if card is None:
            known = ", ".join(sorted(self.cards)) or "none"
            raise ConfigError(
                f"bindings.{name}.type: unknown binding type '{instance_config.type}' (known: {known})"
            )
        settings = validate_settings(name, card, instance_config.settings())
        models_folder = instance_config.models_folder or (
            self.config.paths.models_folder / (card.models_subfolder or card.type_name)
        )
        return BindingInstance(
            name=name,
            card=card,
            config=instance_config,
            settings=settings,
            pool=instance_config.pool or self.config.resource_manager.default_pool,
            models_folder=Path(models_folder),
        )

    def instance(self, name: str) -> BindingInstance:
        instance = self.instances.get(name)
        if instance is None:
            raise NotFoundError(f"Binding '{_clip(name)}' not found.", param="binding_name")
        return instance

    async def get(self, name: str) -> Binding:
        """The binding object of an instance, importing and creating it on first use."""
        instance = self.instance(name)
        if instance.binding is not None:
            return instance.binding
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if instance.binding is None:
                if instance.pool in self.supervisors:
                    instance.binding = self._proxy(instance)
                else:
                    instance.binding = await asyncio.to_thread(self._create, instance)
        return instance.binding

    def _host(self, pool: str) -> Any:
        """The object that starts or finds the process or actor hosting ``pool``."""
        if self.config.pool_host(pool) == "ray":
            from lollms_server.core.cluster import RayPoolHost

            return RayPoolHost(self.config, pool)
        from lollms_server.core.workers import WorkerSupervisor

        requirements = sorted(
            {
                requirement
                for instance in self.instances.values()
                if instance.pool == pool
                for requirement in instance.card.requirements
            }
        )
        return WorkerSupervisor(self.config, pool, requirements)

    def _proxy(self, instance: BindingInstance) -> Binding:
        """A stand-in for an instance whose pool runs in a worker process or a Ray actor."""
        context = instance.context()
        host = self.supervisors[instance.pool]
        if host.host == "ray":
            from lollms_server.core.cluster import RayBinding

            return RayBinding(context, host)
        from lollms_server.core.workers import WorkerBinding

        return WorkerBinding(context, host)

    async def host_statuses(self) -> dict[str, dict[str, Any] | None]:
        """What the host of each remote pool reports now (``None``: not running or not answering)."""
        pools = list(self.supervisors)
        statuses = await asyncio.gather(*(self.supervisors[pool].status() for pool in pools))
        return dict(zip(pools, statuses, strict=True))

    def _create(self, instance: BindingInstance) -> Binding:
        card = instance.card
        if card.requirements and self.config.server.auto_install_requirements:
            self._install_requirements(card)
        module = self._import(card)
        class_name = getattr(module, "BindingName", None)
        binding_class = getattr(module, class_name, None) if isinstance(class_name, str) else None
        if not (isinstance(binding_class, type) and issubclass(binding_class, Binding)):
            raise BindingError(f"Binding type '{card.type_name}' does not define a valid BindingName class.")
        try:
            return binding_class(instance.context())
        except Exception as exc:
            logger.exception("Binding instance %s failed to start", instance.name)
            raise BindingError(f"Binding '{instance.name}' failed to start: {type(exc).__name__}.") from exc

    @staticmethod
    def _install_requirements(card: BindingCard) -> None:
        import pipmaster

        logger.info("Checking requirements of binding %s", card.type_name)
        if not pipmaster.ensure_packages(list(card.requirements)):
            raise BindingError(f"Could not install the requirements of binding '{card.type_name}'.")

    @staticmethod
    def _import(card: BindingCard) -> ModuleType:
        assert card.folder is not None
        module_name = f"lollms_bindings.{card.type_name}"
        if module_name in sys.modules:
            return sys.modules[module_name]
        init = card.folder / "__init__.py"
        if not init.is_file():
            raise BindingError(f"Binding type '{card.type_name}' has no __init__.py.")
        try:
            module = import_file(module_name, init, package_folder=card.folder)
        except ImportError as exc:
            logger.error("Binding %s cannot be imported: %s", card.type_name, exc)
            raise BindingError(
                f"Binding type '{card.type_name}' is missing a dependency ({exc.name or 'unknown'}); "
                f"install it with: pip install {' '.join(card.requirements)}"
            ) from exc
        except Exception as exc:
            logger.exception("Binding %s failed to import", card.type_name)
            raise BindingError(f"Binding type '{card.type_name}' failed to import.") from exc
        return module

    def active(self) -> list[BindingInstance]:
        return [instance for instance in self.instances.values() if instance.binding is not None]

    async def close(self) -> None:
        for instance in self.instances.values():
            binding = instance.binding
            if binding is None:
                continue
            for model in list(binding.loaded_models()):
                try:
                    await binding.unload_model(model)
                except Exception:  # noqa: BLE001 - shutting down anyway
                    logger.warning("Unloading %s/%s failed at shutdown", instance.name, model)
            try:
                await binding.close()
            except Exception:  # noqa: BLE001
                logger.warning("Closing binding %s failed at shutdown", instance.name)
        for supervisor in self.supervisors.values():
            await asyncio.to_thread(supervisor.stop)


def _clip(value: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in value)[:80]
