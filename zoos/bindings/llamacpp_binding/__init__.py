"""llama.cpp binding: GGUF text models through llama-cpp-python, in the server process.

The worked example of ``zoos/bindings/README.md``. Each loaded model has one context with
``parallel`` sequences and a :class:`~.batching.BatchEngine` whose decode thread runs every
request of the model together (continuous batching, prefix cache, per-request sampling and
grammars); a stream stops at the next step when its client leaves. llama-cpp-python's own
high-level calls (forced chat formats, images, native tool calls) get the context alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import secrets
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import Any

from llama_cpp import LogitsProcessorList

from lollms_server.core.bindings import (
    BadRequestError,
    Binding,
    BindingContext,
    BindingError,
    CancelToken,
    GenerationCancelled,
    NotFoundError,
    TextChunk,
    TextRequest,
    safe_join,
    wait_through_cancellation,
)

from .batching import RANDOM_SEED, BatchEngine, Finished, LoopSink, Sampling, SequenceRequest
from .memory import Footprint, estimate_footprint, layers_that_fit, offloaded_layers, read_header
from .structured import requested_grammar

logger = logging.getLogger("lollms_bindings.llamacpp_binding")

BindingName = "LlamaCppBinding"
PromptParts = list[tuple[str, bool]]
"""A prompt's text in parts, each with whether special-token text in it becomes control tokens."""
SAMPLING_KEYS = (
    "max_tokens",
    "temperature",
    "top_k",
    "top_p",
    "repeat_penalty",
    "seed",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
)


MAX_GPU_LAYERS = 100_000  # more than any model has; llama.cpp offloads what there is


def gpu_offload_supported() -> bool:
    """Whether this llama-cpp-python build has a GPU backend (CUDA, Metal, Vulkan, ROCm...)."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def resolve_gpu_layers(settings: dict[str, Any], model_path: Path) -> int:
    """The ``n_gpu_layers`` llama.cpp gets for the model at ``model_path``: an explicit number
    wins (negative = every layer); ``"auto"`` (the default) = every layer (-1) when the build
    can offload, else 0.

    The device memory arbiter (``lollms_server.core.devices``) narrows it before a load: with
    ``fit = "offload"`` (the default), ``fit_to_memory`` passes the largest layer count whose share
    fits the device's free memory (after evicting idle models) as an explicit number here."""
    wanted = settings.get("n_gpu_layers", "auto")
    if wanted is None or wanted == "auto":
        return -1 if gpu_offload_supported() else 0
    layers = int(wanted)
    return -1 if layers < 0 else min(layers, MAX_GPU_LAYERS)


class LoadedLlama:
    def __init__(self, llama: Any, path: Path, engine: BatchEngine, gpu_layers: int = 0) -> None:
        self.llama = llama
        self.path = path
        self.engine = engine
        self.gpu_layers = gpu_layers  # what n_gpu_layers resolved to (-1 = all)
        self.size_mb = path.stat().st_size / 2**20
        self.chat_formatter: Any = None  # built once from the model's chat template
        self.footprint: Footprint | None = None  # what the load holds, per device


FLASH_ATTENTION = {"auto": -1, "off": 0, "on": 1}  # llama.cpp's LLAMA_FLASH_ATTN_TYPE_*


def with_batch_context(llama: Any, parallel: int, flash_attention: str) -> None:
    """Give ``llama`` a context of ``parallel`` sequences, each with the context size it was
    created with, and llama.cpp's flash attention choice (llama-cpp-python's constructor makes one
    sequence only and switches flash attention off)."""
    import numpy as np
    from llama_cpp import _internals, llama_context_params

    per_sequence = llama.n_ctx()
    params = llama_context_params.from_buffer_copy(llama.context_params)
    params.n_ctx = per_sequence * parallel
    params.n_seq_max = parallel
    params.kv_unified = False  # each sequence its own n_ctx cells: no request starves another
    params.flash_attn_type = FLASH_ATTENTION[flash_attention]
    params.n_batch = max(params.n_batch, parallel)  # one token of every sequence fits a decode
    llama._ctx.close()  # the first context goes before the new one is made
    context = _internals.LlamaContext(model=llama._model, params=params, verbose=False)
    llama._stack.enter_context(contextlib.closing(context))
    llama._ctx, llama.context_params = context, params
    llama._n_ctx = context.n_ctx()
    llama.input_ids = np.ndarray((llama._n_ctx,), dtype=np.intc)


TOOL_CHAT_FORMATS = ("chatml-function-calling", "functionary", "functionary-v1", "functionary-v2")


def _tool_name(name: str) -> str:
    return name.replace(".", "__")


def _renamed_message(message: dict[str, Any]) -> dict[str, Any]:
    calls = message.get("tool_calls")
    if not calls:
        return message
    renamed = [
        {**call, "function": {**call["function"], "name": _tool_name(call["function"]["name"])}}
        for call in calls
    ]
    return {**message, "tool_calls": renamed}


class TokenCounter:  # for llama-cpp-python's chat handlers
    """A logits processor llama.cpp calls once per sampled token: it counts them, and can
    forbid the end-of-generation tokens (the ``ignore_eos`` parameter)."""

    def __init__(self, banned_tokens: list[int] | None = None) -> None:
        self.prompt_tokens = 0
        self.sampled = 0
        self.banned_tokens = banned_tokens or []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.sampled == 0:
            self.prompt_tokens = len(input_ids)
        self.sampled += 1
        if self.banned_tokens:
            scores[self.banned_tokens] = -float("inf")
        return scores

    def usage(self, finish_reason: str) -> dict[str, int]:
        # on "stop" the last sampled token (end of sequence or stop string) is not output
        completion = self.sampled - (1 if finish_reason == "stop" else 0)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": max(0, completion)}


class LlamaCppBinding(Binding):
    """GGUF models with llama-cpp-python."""

    def __init__(self, context: BindingContext) -> None:
        super().__init__(context)
        import llama_cpp  # noqa: F401 - fail at start-up, not at the first request

        self._models: dict[str, LoadedLlama] = {}
        self._fitted: dict[str, int] = {}  # n_gpu_layers planned for a coming load (fit = "offload")

    # ---- models ------------------------------------------------------------
    async def list_available_models(self) -> list[dict[str, Any]]:
        def scan() -> list[dict[str, Any]]:
            if not self.models_folder.is_dir():
                return []
            return [
                {
                    "name": str(path.relative_to(self.models_folder)),
                    "size_mb": round(path.stat().st_size / 2**20, 3),
                }
                for path in sorted(self.models_folder.rglob("*.gguf"))
            ]

        return await self.run_blocking(scan)

    def _locate(self, model_name: str) -> Path:
        path = safe_join(self.models_folder, model_name)
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise BadRequestError(f"Model '{model_name}' is not a .gguf file.", param="model_name")
            return path
        if self.settings.get("allow_download") and model_name.count("/") >= 2:
            # the server pulls hub names before admission (core.generation.first_use): none is
            # downloaded here, inside a pool slot
            raise NotFoundError(
                f"Model '{model_name}' is not downloaded; pull it with: lollms-server pull "
                f"--binding {self.instance_name} {model_name}",
                param="model_name",
            )
        raise NotFoundError(
            f"Model '{model_name}' not found for binding '{self.instance_name}'.", param="model_name"
        )

    def _create(self, path: Path, settings: dict[str, Any] | None = None) -> LoadedLlama:
        import llama_cpp

        settings = self.settings if settings is None else settings
        gpu_layers = resolve_gpu_layers(settings, path)
        llama = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=settings["n_ctx"],
            n_gpu_layers=gpu_layers,
            n_threads=settings["n_threads"] or None,
            n_batch=settings["n_batch"],
            chat_format=settings["chat_format"] or None,
            seed=settings["seed"] if settings["seed"] >= 0 else llama_cpp.LLAMA_DEFAULT_SEED,
            verbose=False,
        )
        parallel = max(1, int(settings["parallel"]))
        try:
            with_batch_context(llama, parallel, settings["flash_attention"])
            engine = BatchEngine(llama, parallel, settings["n_batch"])
        except BaseException:
            llama.close()
            raise
        logger.info(
            "Loaded %s with n_gpu_layers=%d (%s%s)",
            path.name,
            gpu_layers,
            "setting " if settings.get("n_gpu_layers") not in (None, "auto") else "auto: ",
            "GPU offload" if gpu_layers != 0 else "CPU only",
        )
        loaded = LoadedLlama(llama, path, engine, gpu_layers)
        try:  # the footprint of the context really made (its n_ctx is padded by llama.cpp)
            header = read_header(path)
            loaded.footprint = estimate_footprint(
                header, {**settings, "n_ctx": engine.n_ctx_seq, "parallel": parallel}, self._gpu()
            )
        except (OSError, ValueError, KeyError):
            logger.warning("Could not read the GGUF header of %s", path, exc_info=True)
        return loaded

    @staticmethod
    def _gpu() -> bool:
        return gpu_offload_supported()

    def memory_device(self, model_name: str) -> str:
        """A GPU (``cuda:<main_gpu>``, ``mps`` on Apple) when layers are offloaded to one,
        else the CPU."""
        if not self._gpu() or offloaded_layers(self.settings.get("n_gpu_layers", 0), 1) == 0:
            return "cpu"
        import sys

        return "mps" if sys.platform == "darwin" else f"cuda:{int(self.settings.get('main_gpu') or 0)}"

    async def load_model(self, model_name: str) -> None:
        if model_name in self._models:
            return
        path = await self.run_blocking(self._locate, model_name)
        fitted = self._fitted.pop(model_name, None)
        settings = self.settings if fitted is None else {**self.settings, "n_gpu_layers": fitted}
        try:
            loaded = await self.run_blocking(self._create, path, settings)
        except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
            logger.error("llama.cpp could not load %s: %s", model_name, exc)
            raise BindingError(f"llama.cpp could not load model '{model_name}'.") from None
        self._models[model_name] = loaded

    async def unload_model(self, model_name: str) -> None:
        loaded = self._models.pop(model_name, None)
        if loaded is None:
            return

        def close() -> None:
            loaded.engine.close()  # ends what still runs on this model
            loaded.llama.close()

        await self.run_blocking(close)

    def loaded_models(self) -> list[str]:
        return list(self._models)

    def footprint_mb(self, model_name: str) -> float:
        """What the loaded model holds on its device: the weights of its layers there, their KV
        cache (``parallel x n_ctx`` cells at the cache type) and the compute buffer."""
        loaded = self._models.get(model_name)
        if loaded is None:
            return 0.0
        if loaded.footprint is None:  # an unreadable header: the file
            return loaded.size_mb
        footprint = loaded.footprint
        return (footprint.gpu if self.memory_device(model_name) != "cpu" else footprint.total) / 2**20

    async def estimate_footprint_mb(self, model_name: str) -> float | None:
        """The same numbers, from the GGUF header, before the load."""
        try:
            path = safe_join(self.models_folder, model_name)
        except BadRequestError:
            return None
        if not path.is_file():
            return None
        gpu = self.memory_device(model_name) != "cpu"

        def estimate() -> float | None:
            try:
                footprint = estimate_footprint(read_header(path), self.settings, gpu)
            except (OSError, ValueError, KeyError):
                logger.warning("Could not read the GGUF header of %s", path, exc_info=True)
                return path.stat().st_size / 2**20 if path.is_file() else None
            return (footprint.gpu if gpu else footprint.total) / 2**20

        return await self.run_blocking(estimate)

    async def fit_to_memory(self, model_name: str, available_mb: float | None) -> float | None:
        """``fit = "offload"`` on a GPU: the next load of ``model_name`` offloads the largest
        number of layers whose share fits ``available_mb`` (never fewer sequences or a shorter
        context); returns that load's estimate. None: load as configured."""
        self._fitted = {}
        if (
            available_mb is None
            or self.settings.get("fit", "offload") != "offload"
            or self.memory_device(model_name) == "cpu"
        ):
            return None
        try:
            path = await self.run_blocking(self._locate_local, model_name)
            header = await self.run_blocking(read_header, path)
        except (NotFoundError, BadRequestError, OSError, ValueError):
            return None
        layers = await self.run_blocking(
            layers_that_fit, path, self.settings, int(max(0.0, available_mb) * 2**20)
        )
        self._fitted = {model_name: layers}  # one load at a time per device: only the next one
        footprint = estimate_footprint(header, {**self.settings, "n_gpu_layers": layers}, True)
        return footprint.gpu / 2**20

    def layers_that_fit(self, model_name: str, free_bytes: int) -> int:
        """The largest ``n_gpu_layers`` of ``model_name`` with these settings whose GPU share
        fits ``free_bytes`` (for ``n_gpu_layers = "auto"``; blocking: call it in a thread)."""
        return layers_that_fit(self._locate_local(model_name), self.settings, free_bytes)

    async def get_model_info(self, model_name: str | None) -> dict[str, Any]:
        info: dict[str, Any] = {"binding": self.instance_name, "model_name": model_name}
        if model_name is None:
            return info
        loaded = self._models.get(model_name)
        if loaded is not None:
            metadata = loaded.llama.metadata
            info.update(
                context_size=loaded.engine.n_ctx_seq,
                parallel=loaded.engine.parallel,
                batching=loaded.engine.describe(),
                vocab_size=loaded.llama.n_vocab(),
                architecture=metadata.get("general.architecture"),
                has_chat_template="tokenizer.chat_template" in metadata,
                size_mb=round(loaded.size_mb, 3),
                n_gpu_layers=loaded.gpu_layers,
                gpu_offload=loaded.gpu_layers != 0,
                gpu_layers=loaded.footprint.gpu_layers if loaded.footprint is not None else None,
            )
            return info
        path = await self.run_blocking(self._locate_local, model_name)
        info.update(size_mb=round(path.stat().st_size / 2**20, 3))
        return info

    def _locate_local(self, model_name: str) -> Path:
        path = safe_join(self.models_folder, model_name)
        if not path.is_file():
            raise NotFoundError(f"Model '{model_name}' not found for binding '{self.instance_name}'.")
        return path

    def _loaded(self, model_name: str) -> LoadedLlama:
        loaded = self._models.get(model_name)
        if loaded is None:
            raise BindingError(f"Model '{model_name}' is not loaded.")
        return loaded

    def engine_counters(self, model_name: str) -> dict[str, float]:
        loaded = self._models.get(model_name)
        return loaded.engine.counters() if loaded is not None else {}

    # ---- generation ----------------------------------------------------------
    async def stream_text(
        self, model_name: str, request: TextRequest, cancel: CancelToken
    ) -> AsyncGenerator[TextChunk, None]:
        loaded = self._loaded(model_name)
        prompt_and_stops = self._prompt(loaded, request)
        if prompt_and_stops is None:  # a forced chat_format or images: llama-cpp-python's handlers
            async for chunk in self.stream_from_thread(self._handler_stream(loaded, request, cancel), cancel):
                yield chunk
            return
        prompt, template_stops = prompt_and_stops
        engine = loaded.engine
        engine.announce()  # a burst of requests shares the idle engine's first prefill
        try:
            sequence = await self.run_blocking(
                self._sequence, loaded, request, prompt, template_stops, cancel
            )
        except BaseException:
            engine.withdraw()
            raise
        async for chunk in self._engine_stream(engine, sequence, announced=True):
            yield chunk

    @staticmethod
    async def _engine_stream(
        engine: BatchEngine, sequence: SequenceRequest, announced: bool = False
    ) -> AsyncGenerator[TextChunk, None]:
        """The request as one sequence of the model's batch engine; its events come to this loop
        once per decode step. A consumer that leaves ends the sequence at the next step, and is
        let go once the engine has dropped it."""
        sink = LoopSink(asyncio.get_running_loop())
        engine.submit(sequence, sink, announced)
        try:
            while True:
                event = await sink.queue.get()
                if isinstance(event, BaseException):
                    raise event
                if isinstance(event, Finished):
                    if event.reason == "cancelled":
                        raise GenerationCancelled()
                    yield TextChunk("", event.reason, event.usage, {"sequence_timings": event.timings})
                    return
                if event:
                    yield TextChunk(event)
        finally:
            if not sink.ended.is_set():
                sequence.cancelled.set()
                engine.wake()  # a request still waiting for a sequence leaves at once
                await wait_through_cancellation(asyncio.ensure_future(sink.ended.wait()))

    def _prompt(self, loaded: LoadedLlama, request: TextRequest) -> tuple[PromptParts, list[str]] | None:
        """The prompt through the model's own chat template, as parts each marked with whether
        its special-token text may become control tokens: the template's own text may, message
        contents never (a user writing ``<|im_end|>`` cannot close its turn and open a fake
        one). A raw prompt is the caller's whole prompt: it may. None: let a handler do it."""
        if request.prompt is not None:
            return [(request.prompt, True)], []
        template = loaded.llama.metadata.get("tokenizer.chat_template")
        has_images = any(isinstance(message.get("content"), list) for message in request.messages)
        if self.settings["chat_format"] or not template or has_images:
            return None
        if loaded.chat_formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            llama = loaded.llama
            loaded.chat_formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=llama._model.token_get_text(llama.token_eos()),
                bos_token=llama._model.token_get_text(llama.token_bos()),
            )
        formatter = loaded.chat_formatter
        # each message's content goes through the template as a placeholder, put back as text
        marker = f"\x00{secrets.token_hex(8)}:"
        contents: dict[str, str] = {}
        messages = []
        for index, message in enumerate(request.messages):
            content = message.get("content")
            if isinstance(content, str) and content:
                placeholder = f"{marker}{index}\x00"
                contents[placeholder] = content
                message = {**message, "content": placeholder}
            messages.append(message)
        formatted = formatter(messages=messages)  # type: ignore[arg-type]
        pieces = re.split(f"({re.escape(marker)}\\d+\x00)", formatted.prompt)
        parts = [
            (contents[piece], False) if piece in contents else (piece, True) for piece in pieces if piece
        ]
        stops = (
            formatted.stop if isinstance(formatted.stop, list) else [formatted.stop] if formatted.stop else []
        )
        return parts, [stop for stop in stops if stop]

    def _sequence(
        self,
        loaded: LoadedLlama,
        request: TextRequest,
        prompt: PromptParts,
        template_stops: list[str],
        cancel: CancelToken,
    ) -> SequenceRequest:
        """Tokens, limits and sampling of one request (in a worker thread: tokenizing and
        checking a grammar take time)."""
        llama, engine, parameters = loaded.llama, loaded.engine, request.parameters
        tokens: list[int] = []
        for index, (text, special) in enumerate(prompt):
            tokens += llama.tokenize(text.encode("utf-8"), add_bos=index == 0, special=special)
        if not tokens:
            raise BadRequestError("The prompt is empty.", param="input_data")
        room = engine.n_ctx_seq - len(tokens)
        if room <= 0:
            raise BadRequestError(
                f"The prompt has {len(tokens)} tokens; the context holds {engine.n_ctx_seq}.",
                param="input_data",
            )
        seed = parameters.get("seed")
        if seed is None:
            seed = self.settings["seed"] if self.settings["seed"] >= 0 else RANDOM_SEED
        sampling = Sampling(
            temperature=float(parameters.get("temperature", 0.8)),
            top_k=int(parameters.get("top_k", 40)),
            top_p=float(parameters.get("top_p", 0.95)),
            min_p=float(parameters.get("min_p", 0.05)),
            repeat_penalty=float(parameters.get("repeat_penalty", 1.0)),
            presence_penalty=float(parameters.get("presence_penalty", 0.0)),
            frequency_penalty=float(parameters.get("frequency_penalty", 0.0)),
            seed=int(seed) & 0xFFFFFFFF,
            logit_bias=self._logit_bias(parameters.get("logit_bias"), llama.n_vocab()),
            grammar=requested_grammar(parameters, llama._model.vocab),
        )
        if sampling.grammar and (parameters.get("ignore_eos") or sampling.logit_bias):
            # a finished grammar allows only the end of sequence: banning it (or the tokens the
            # grammar needs) would leave llama.cpp's grammar sampler nothing it may accept
            raise BadRequestError(
                "A grammar or JSON schema cannot be combined with ignore_eos or logit_bias.",
                param="parameters.ignore_eos" if parameters.get("ignore_eos") else "parameters.logit_bias",
            )
        return SequenceRequest(
            tokens=list(tokens),
            max_tokens=min(int(parameters.get("max_tokens") or room), room),
            sampling=sampling,
            stops=[*request.stop, *template_stops],
            cache_prompt=parameters.get("cache_prompt", True) is not False,
            ignore_eos=bool(parameters.get("ignore_eos")),
            cancelled=cancel,
        )

    @staticmethod
    def _logit_bias(bias: Any, n_vocab: int) -> dict[int, float]:
        """``{"token id": bias}`` (OpenAI's shape; -100 bans a token) as llama.cpp wants it."""
        if not bias:
            return {}
        if not isinstance(bias, dict) or len(bias) > 1024:
            raise BadRequestError(
                "logit_bias must map at most 1024 token ids to numbers.", param="parameters.logit_bias"
            )
        checked: dict[int, float] = {}
        for key, value in bias.items():
            try:
                token, amount = int(key), float(value)
                if math.isnan(amount):
                    raise ValueError(amount)
            except (TypeError, ValueError):
                raise BadRequestError(
                    "logit_bias must map token ids to numbers.", param="parameters.logit_bias"
                ) from None
            if not 0 <= token < n_vocab:
                raise BadRequestError(
                    f"logit_bias names token {token}, outside the vocabulary (0..{n_vocab - 1}).",
                    param="parameters.logit_bias",
                )
            checked[token] = float("-inf") if amount <= -100 else amount
        return checked

    @staticmethod
    def _sampling(loaded: LoadedLlama, request: TextRequest) -> dict[str, Any]:
        """Keyword arguments of ``create_chat_completion`` from the request's parameters."""
        parameters = request.parameters
        kwargs: dict[str, Any] = {key: parameters[key] for key in SAMPLING_KEYS if key in parameters}
        if request.stop:
            kwargs["stop"] = request.stop
        if "max_tokens" in kwargs:  # sequence 0 has the context of one sequence
            kwargs["max_tokens"] = min(int(kwargs["max_tokens"]), loaded.engine.n_ctx_seq)
        if "seed" in kwargs:  # llama.cpp's seeds are 32-bit, as the engine's
            kwargs["seed"] = int(kwargs["seed"]) & 0xFFFFFFFF
        return kwargs

    def _handler_stream(
        self, loaded: LoadedLlama, request: TextRequest, cancel: CancelToken
    ) -> Callable[[], Iterator[TextChunk]]:
        """Streaming through llama-cpp-python's chat handlers (forced chat_format, vision)."""
        kwargs = self._sampling(loaded, request)
        counter = TokenCounter(loaded.engine.banned_at_eos if request.parameters.get("ignore_eos") else None)
        kwargs["logits_processor"] = LogitsProcessorList([counter])

        def produce() -> Iterator[TextChunk]:
            with loaded.engine.exclusive(cancel):  # a client that leaves meanwhile stops waiting
                stream = loaded.llama.create_chat_completion(request.messages, stream=True, **kwargs)
                try:
                    for part in stream:
                        choice = part["choices"][0]
                        text = choice["delta"].get("content")
                        finish = choice.get("finish_reason")
                        if finish:
                            yield TextChunk(text or "", finish, counter.usage(finish))
                        elif text:
                            yield TextChunk(text)
                        if cancel.is_set():
                            break
                finally:
                    stream.close()

        return produce

    # ---- tools -------------------------------------------------------------------
    def supports_native_tools(self, model_name: str) -> bool:
        """llama-cpp-python's function-calling chat formats constrain tool calls with a grammar."""
        return self.settings["chat_format"] in TOOL_CHAT_FORMATS

    async def chat_with_tools(
        self, model_name: str, request: TextRequest, tools: list[dict[str, Any]], cancel: CancelToken
    ) -> tuple[str, list[dict[str, Any]], dict[str, int]]:
        loaded = self._loaded(model_name)
        # grammar rule names allow no dots: module.function travels as module__function
        renamed = [
            {**tool, "function": {**tool["function"], "name": _tool_name(tool["function"]["name"])}}
            for tool in tools
        ]
        choice = request.parameters.get("tool_choice")
        if isinstance(choice, str) and choice not in ("auto", "none"):
            tool_choice: Any = {"type": "function", "function": {"name": _tool_name(choice)}}
        else:
            tool_choice = choice or "auto"
        kwargs = self._sampling(loaded, request)
        messages = [_renamed_message(message) for message in request.messages]

        def run() -> dict[str, Any]:
            cancel.check()
            with loaded.engine.exclusive(cancel):
                result: dict[str, Any] = loaded.llama.create_chat_completion(
                    messages, tools=renamed, tool_choice=tool_choice, **kwargs
                )
            return result

        result = await self.run_cancellable(run, cancel)
        message = result["choices"][0]["message"]
        calls = []
        for call in message.get("tool_calls") or []:
            try:
                arguments = json.loads(call["function"]["arguments"] or "{}")
            except json.JSONDecodeError:
                arguments = {}
            calls.append(
                {
                    "id": call["id"],
                    "name": call["function"]["name"].replace("__", "."),
                    "arguments": arguments,
                }
            )
        return message.get("content") or "", calls, dict(result.get("usage") or {})

    async def tokenize(self, model_name: str, text: str) -> list[int]:
        loaded = self._loaded(model_name)

        def run() -> list[int]:  # the vocabulary only: no need to wait for the decode thread
            return list(loaded.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

        return await self.run_blocking(run)

    async def detokenize(self, model_name: str, tokens: list[int]) -> str:
        loaded = self._loaded(model_name)
        n_vocab = loaded.llama.n_vocab()
        bad = next((token for token in tokens if not 0 <= token < n_vocab), None)
        if bad is not None:
            raise BadRequestError(
                f"Token id {bad} is outside the vocabulary (0..{n_vocab - 1}).", param="tokens"
            )

        def run() -> str:
            data: bytes = loaded.llama.detokenize(tokens)
            return data.decode("utf-8", errors="replace")

        return await self.run_blocking(run)
