"""The Binding that runs a lollms_client binding object: our methods mapped to theirs.

Every call into the lollms_client object is blocking and runs in a worker thread
(``core.bindings.threads``). Text streams through the binding's ``streaming_callback``;
cancelling sets our token, which makes the callback return False and calls the object's
``cancel()``. Media calls of lollms_client have no cancel API: the slot stays held until they
return. Returned error dicts and raised exceptions become clean BindingErrors.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import logging
import tempfile
import threading
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

from lollms_server.core.bindings import threads
from lollms_server.core.bindings.base import Binding, BindingContext
from lollms_server.core.bindings.contract import (
    CancelToken,
    MediaOutput,
    MediaRequest,
    Progress,
    TextChunk,
    TextRequest,
)
from lollms_server.core.bindings.lollms_client_adapter import loading
from lollms_server.core.bindings.lollms_client_adapter.cards import (
    declared_call_parameters,
    lollms_client_info,
)
from lollms_server.core.bindings.lollms_client_adapter.prompts import generation_kwargs, prompt_of
from lollms_server.core.bindings.lollms_client_adapter.results import (
    checked,
    media_output,
    parameters_json,
    progress_from,
)
from lollms_server.core.bindings.text import StopTextBuffer
from lollms_server.core.errors import BindingError, LollmsError
from lollms_server.core.streams import wait_through_cancellation

logger = logging.getLogger(__name__)

CHUNK = 0  # lollms_types.MSG_TYPE.MSG_TYPE_CHUNK
_OURS_ONLY = {"stop", "system_message", "raw_prompt", "tool_choice", "output_format", "num_images"}


class LollmsClientBinding(Binding):
    """One instance of a lollms_client binding type (``lc_<modality>_<folder>``)."""

    def __init__(self, context: BindingContext, auto_install: bool = True) -> None:
        super().__init__(context)
        self.auto_install = auto_install
        self.modality: str = lollms_client_info(self.card)["modality"]
        self.model_name = context.default_model
        self.obj: Any = self._build(self.settings)
        self.resident_models = bool(self._call_quietly("is_local", False))
        self._lock = threading.Lock()
        self._loaded: set[str] = set()

    # ---- construction and settings -----------------------------------------
    def _build(self, settings: dict[str, Any], model_name: str | None = None) -> Any:
        system_dir = self.models_folder
        system_dir.mkdir(parents=True, exist_ok=True)
        kwargs = loading.constructor_kwargs(self.card, settings, model_name or self.model_name, system_dir)
        return loading.construct(self.card, kwargs, self.auto_install)

    async def apply_settings(self, settings: dict[str, Any]) -> None:
        """New settings: the object is rebuilt with them, as LollmsClient would."""
        current = getattr(self.obj, "model_name", None)  # the model it serves stays the same
        self.obj = await self.run_blocking(self._build, settings, current)
        await super().apply_settings(settings)

    def _call_quietly(self, name: str, default: Any, *args: Any) -> Any:
        method = getattr(self.obj, name, None)
        if method is None:
            return default
        try:
            return method(*args)
        except Exception:  # noqa: BLE001 - an optional resource call
            logger.debug("%s.%s failed", self.instance_name, name, exc_info=True)
            return default

    def _checked(self, result: Any) -> Any:
        """``result``, or a BindingError naming the binding's error without this instance's secrets."""
        schema = self.card.instance_schema
        secrets = [
            str(v)
            for k, v in self.settings.items()
            if k in schema and schema[k].secret and k != "extra_kwargs"
        ]
        secrets += [str(v) for v in (self.settings.get("extra_kwargs") or {}).values() if isinstance(v, str)]
        return checked(self.instance_name, result, tuple(s for s in secrets if len(s) >= 4))

    def _select(self, model_name: str | None) -> None:
        """Point the object at ``model_name`` (its ``load_model``, then ``model_name``); call it
        holding ``_lock``."""
        if not model_name or model_name == getattr(self.obj, "model_name", None):
            return
        loader = getattr(self.obj, "load_model", None)
        if loader is not None:
            self._checked(loader(model_name))
        self.obj.model_name = model_name
        if isinstance(getattr(self.obj, "config", None), dict):
            self.obj.config["model_name"] = model_name

    async def _run(
        self,
        func: Callable[..., Any],
        *args: Any,
        model: str | None = None,
        cancel: CancelToken | None = None,
        **kwargs: Any,
    ) -> Any:
        """A blocking call of the binding; with ``model``, that model selected and one such call
        at a time (a lollms_client object holds one model and one cancel flag). A generation
        (``cancel`` given) runs in the generation executor. An exception becomes a BindingError."""

        def call() -> Any:
            if model is None:  # listings, commands: no model state involved
                return func(*args, **kwargs)
            with self._lock:
                self._select(model)
                return func(*args, **kwargs)

        try:
            if cancel is not None:
                result = await self.run_cancellable(call, cancel)
            else:
                result = await self.run_blocking(call)
        except LollmsError:
            raise
        except Exception as exc:
            logger.exception("lollms_client binding %s failed", self.instance_name)
            raise BindingError(f"Binding '{self.instance_name}' failed ({type(exc).__name__}).") from exc
        return self._checked(result)

    # ---- model lifecycle --------------------------------------------------
    async def list_available_models(self) -> list[dict[str, Any]]:
        found = await self._run(self.obj.list_models)
        models: list[dict[str, Any]] = []
        for item in found or []:
            if isinstance(item, str):
                models.append({"name": item})
            elif isinstance(item, dict):
                name = item.get("model_name") or item.get("name") or item.get("id")
                if name:
                    models.append({**item, "name": str(name)})
        return models

    async def load_model(self, model_name: str) -> None:
        await self._run(lambda: None, model=model_name)
        self._loaded.add(model_name)

    async def unload_model(self, model_name: str) -> None:
        self._loaded.discard(model_name)
        if self.resident_models:
            await self.run_blocking(self._call_quietly, "unload_model", None, model_name)

    def loaded_models(self) -> list[str]:
        return sorted(self._loaded)

    def footprint_mb(self, model_name: str) -> float:
        if not self.resident_models:
            return 0.0
        for entry in self._call_quietly("ps", []) or []:
            if isinstance(entry, dict) and entry.get("model_name") == model_name:
                try:
                    return float(entry.get("vram_size") or 0.0)
                except (TypeError, ValueError):
                    return 0.0
        return 0.0

    async def get_model_info(self, model_name: str | None) -> dict[str, Any]:
        info: dict[str, Any] = {"binding": self.instance_name, "model_name": model_name}
        if self.modality == "llm":
            found = await self.run_blocking(self._call_quietly, "get_model_info", {})
            if isinstance(found, dict):
                info.update({k: v for k, v in found.items() if k not in ("host_address", "service_key")})
        return info

    async def close(self) -> None:
        await self.run_blocking(self._call_quietly, "shutdown_server", None)

    # ---- text ----------------------------------------------------------------
    async def stream_text(
        self, model_name: str, request: TextRequest, cancel: CancelToken
    ) -> AsyncGenerator[TextChunk, None]:
        if self.modality != "llm":
            raise BindingError(f"Binding '{self.instance_name}' does not generate text.")
        async for piece in self._text_pieces(model_name, request, cancel):
            yield TextChunk(text=piece)
        yield TextChunk(finish_reason="stop")

    def _text_call(self, request: TextRequest) -> Callable[[Callable[..., bool]], Any]:
        """The blocking generation, given its streaming callback."""
        kwargs = generation_kwargs(request)
        obj = self.obj
        overrides = type(obj).generate_from_messages is not loading.base_class("llm").generate_from_messages
        if request.prompt is None and overrides:
            messages = request.messages
            return lambda callback: obj.generate_from_messages(
                messages, streaming_callback=callback, **kwargs
            )
        prompt, system, images = prompt_of(request)
        return lambda callback: obj.generate_text(
            prompt, images=images or None, system_prompt=system, streaming_callback=callback, **kwargs
        )

    async def _text_pieces(
        self, model_name: str, request: TextRequest, cancel: CancelToken
    ) -> AsyncGenerator[str, None]:
        """Text of the binding's callback, cut at the first stop sequence (which cancels the
        call). The stop matching runs in the binding's thread, in its callback: the event loop
        only hands over text that is ready to send."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str] = asyncio.Queue()
        call = self._text_call(request)
        obj = self.obj
        stops = StopTextBuffer(request.stop)
        streamed = threading.Event()
        stop = threading.Event()  # a stop sequence ended it, or the consumer left: not a cancellation

        def emit(text: str) -> None:
            if text:
                loop.call_soon_threadsafe(pieces.put_nowait, text)

        def matched(text: str) -> None:
            out, stopped = stops.push(text)
            emit(out)
            if stopped:
                stop.set()

        def callback(chunk: Any, msg_type: Any = None, *args: Any, **kwargs: Any) -> bool:
            if cancel.is_set() or stop.is_set():
                obj.cancel()
                return False
            kind = getattr(msg_type, "value", msg_type)
            if (kind is None or kind == CHUNK) and isinstance(chunk, str) and chunk:
                streamed.set()
                matched(chunk)
                if stop.is_set():
                    obj.cancel()
                    return False
            return True

        def run() -> Any:
            with self._lock:
                self._select(model_name)
                obj.reset_cancel()
                result = call(callback)
            if stop.is_set():
                return result
            if not streamed.is_set() and isinstance(result, str) and result:  # it ignored stream=True
                matched(result)
            if not stop.is_set():
                emit(stops.flush())
            return result

        work = asyncio.ensure_future(threads.run_cancellable(run, cancel))
        try:
            while True:
                getter = asyncio.ensure_future(pieces.get())
                await asyncio.wait({work, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                    continue
                getter.cancel()
                while not pieces.empty():
                    yield pieces.get_nowait()
                break
            try:
                result = work.result()
            except Exception as exc:
                logger.exception("lollms_client binding %s failed", self.instance_name)
                raise BindingError(f"Binding '{self.instance_name}' failed ({type(exc).__name__}).") from exc
            if not stop.is_set():  # cut by a stop sequence, the call was cancelled on purpose
                self._checked(result)
        finally:
            if not work.done():
                stop.set()
                obj.cancel()
                await wait_through_cancellation(work)
            if work.done() and not work.cancelled():
                work.exception()  # retrieved: a failure after the consumer left is only logged

    async def tokenize(self, model_name: str, text: str) -> list[int]:
        return list(await self._run(self.obj.tokenize, text, model=model_name))

    async def detokenize(self, model_name: str, tokens: list[int]) -> str:
        return str(await self._run(self.obj.detokenize, tokens, model=model_name))

    async def embed(self, model_name: str, texts: list[str]) -> list[list[float]]:
        def run() -> list[list[float]]:
            return [list(self.obj.embed(text)) for text in texts]

        return list(await self._run(run, model=model_name))

    # ---- media -----------------------------------------------------------------
    def _media_kwargs(self, request: MediaRequest, names: dict[str, str], method: str) -> dict[str, Any]:
        """The request's parameters ``method`` of the lollms_client binding declares (its card's
        ``<method>_parameters``, else the media parameters the server checks): others are not
        passed to third-party code."""
        allowed = declared_call_parameters(self.card, method)
        kwargs: dict[str, Any] = {}
        for key, value in request.parameters.items():
            name = names.get(key, key)
            if key in _OURS_ONLY or value is None or name not in allowed:
                continue
            kwargs[name] = value
        return kwargs

    async def _media(
        self, model_name: str, call: Callable[[], Any], cancel: CancelToken, expected: Any
    ) -> list[MediaOutput]:
        cancel.check()
        result = await self._run(call, model=model_name, cancel=cancel)
        return [media_output(self.instance_name, expected, result)]

    async def generate_image(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        kwargs = self._media_kwargs(request, {"steps": "num_inference_steps"}, "generate_image")
        count = int(request.parameters.get("num_images", 1))
        kwargs.setdefault("width", 512)
        kwargs.setdefault("height", 512)
        kwargs["metadata"] = {"parameters": parameters_json(request.parameters)}
        obj = self.obj

        own_generate = type(obj).generate is not loading.base_class("tti").generate

        def run() -> Any:
            if own_generate:  # an omni binding: n images from one call
                result = self._checked(obj.generate(request.prompt, n=count, **kwargs))
                return result.get("images") if isinstance(result, dict) else result
            return [self._checked(obj.generate_image(request.prompt, **kwargs)) for _ in range(count)]

        cancel.check()
        images = await self._run(run, model=model_name, cancel=cancel)
        if isinstance(images, bytes | bytearray):
            images = [images]
        return [media_output(self.instance_name, "image", image) for image in images or []]

    async def edit_image(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        kwargs = self._media_kwargs(request, {"steps": "num_inference_steps"}, "edit_image")
        kwargs["metadata"] = {"parameters": parameters_json(request.parameters)}
        images = [base64.b64encode(image).decode("ascii") for image in request.images]
        mask = base64.b64encode(request.mask).decode("ascii") if request.mask else None
        obj = self.obj
        return await self._media(
            model_name,
            lambda: obj.edit_image(images=images, prompt=request.prompt, mask=mask, **kwargs),
            cancel,
            "image",
        )

    async def synthesize_speech(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        kwargs = self._media_kwargs(request, {}, "generate_audio")
        voice = kwargs.pop("voice", request.parameters.get("voice"))
        obj = self.obj
        return await self._media(
            model_name, lambda: obj.generate_audio(request.prompt, voice=voice, **kwargs), cancel, "audio"
        )

    async def generate_music(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        kwargs = self._media_kwargs(request, {}, "generate_music")
        obj = self.obj
        return await self._media(
            model_name, lambda: obj.generate_music(request.prompt, **kwargs), cancel, "audio"
        )

    async def generate_video(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        kwargs = self._media_kwargs(request, {"steps": "num_inference_steps"}, "generate_video")
        obj = self.obj
        return await self._media(
            model_name, lambda: obj.generate_video(request.prompt, **kwargs), cancel, "video"
        )

    async def transcribe(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        if request.audio is None:
            raise BindingError(f"Binding '{self.instance_name}' received no audio.")
        audio, suffix = request.audio, f".{request.audio_format or 'wav'}"
        kwargs = self._media_kwargs(request, {}, "transcribe_audio")
        kwargs.pop("timestamps", None)
        obj = self.obj

        def run() -> Any:
            with tempfile.TemporaryDirectory(prefix="lollms-stt-") as folder:
                path = Path(folder) / f"audio{suffix}"
                path.write_bytes(audio)
                return obj.transcribe_audio(str(path), model=model_name, **kwargs)

        cancel.check()
        text = await self._run(run, model=model_name, cancel=cancel)
        if not isinstance(text, str):
            raise BindingError(f"Binding '{self.instance_name}' returned no transcription.")
        return [MediaOutput("text", text, "text/plain")]

    # ---- commands --------------------------------------------------------------
    async def run_command(self, name: str, parameters: dict[str, Any], progress: Progress) -> Any:
        """A declared command: the object's method of that name, in a thread (lollms_client's GUI
        does the same), with ``progress_callback`` when the method takes one."""
        method = getattr(self.obj, name, None)
        if not callable(method):
            raise BindingError(f"Binding '{self.instance_name}' has no method for command '{name}'.")
        kwargs = dict(parameters)
        try:
            if "progress_callback" in inspect.signature(method).parameters:
                kwargs["progress_callback"] = lambda info: progress_from(info, progress)
        except (TypeError, ValueError):
            pass
        return await self._run(method, **kwargs)
