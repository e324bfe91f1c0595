"""The orchestrator: a GenerateRequest becomes a binding call (DESIGN §1 request path).

It picks the binding (request > personality > ``[defaults]``) and the model, merges the
parameters (server defaults < personality < request), builds chat messages from
``input_data``, holds a pool slot for the model load and the whole generation, and
standardizes the result into ``OutputData`` with timings.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel, ConfigDict, Field

from lollms_server.core.bindings import (
    MEDIA_METHODS,
    Binding,
    BindingInstance,
    BindingManager,
    CancelToken,
    MediaOutput,
    MediaRequest,
    Progress,
    TextChunk,
    TextRequest,
    TextResult,
    with_progress,
)
from lollms_server.core.config import AppConfig
from lollms_server.core.errors import (
    BadRequestError,
    BindingError,
    GenerationTimeoutError,
    LollmsError,
)
from lollms_server.core.functions import FunctionManager, FunctionSpec
from lollms_server.core.media import (
    build_media_request,
    check_inputs,
    to_output_data,
    validate_media_parameters,
)
from lollms_server.core.metrics import Metrics
from lollms_server.core.personalities import Personality, PersonalityManager
from lollms_server.core.resource_manager import Lease, ResourceManager
from lollms_server.core.security import Principal
from lollms_server.core.tools import ToolLoop, single_turn
from lollms_server.core.types import (
    GenerateRequest,
    GenerateResponse,
    InputData,
    OutputData,
    StreamChunk,
    checked_parameters,
)
from lollms_server.core.workflows import WorkflowRun
from lollms_server.utils.paths import validate_model_name

logger = logging.getLogger(__name__)
T = TypeVar("T")

HISTORY_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "user_prompt": "user"}
SYSTEM_ROLES = {"system_context", "system_prompt"}
IMAGE_ROLES = {"input_image", "image"}


class TextParameters(BaseModel):
    """The text parameters the server understands; other keys pass through to the binding."""

    model_config = ConfigDict(extra="allow")

    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float | None = Field(None, ge=0, le=10)
    top_k: int | None = Field(None, ge=0, le=100_000)
    top_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0, le=10)
    stop: str | list[str] | None = None
    seed: int | None = None
    system_message: str | None = None


def validate_text_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """Check the known text parameters' types and ranges (400 naming the parameter)."""
    return checked_parameters(TextParameters, parameters, {"n_predict": "max_tokens"})


def build_messages(inputs: list[InputData], system_message: str | None) -> list[dict[str, Any]]:
    """Chat messages (OpenAI shape) from input items; images join the last user turn."""
    system_parts: list[str] = [system_message] if system_message else []
    messages: list[dict[str, Any]] = []
    images: list[InputData] = []
    for item in inputs:
        if item.type == "image" or item.role in IMAGE_ROLES:
            if item.role in IMAGE_ROLES:
                images.append(item)
            continue
        if item.type != "text":
            continue
        if item.role in SYSTEM_ROLES:
            system_parts.append(item.data)
        elif item.role in HISTORY_ROLES:
            messages.append({"role": HISTORY_ROLES[item.role], "content": item.data})
    if not any(message["role"] == "user" for message in messages):
        raise BadRequestError(
            "A text generation needs a text input with role 'user_prompt'.", param="input_data"
        )
    if images:
        last_user = max(i for i, message in enumerate(messages) if message["role"] == "user")
        parts: list[dict[str, Any]] = [{"type": "text", "text": messages[last_user]["content"]}]
        for image in images:
            mime = image.mime_type or "image/png"
            parts.append({"type": "image_url", "image_url": {"url": f"data:{mime};base64,{image.data}"}})
        messages[last_user] = {"role": "user", "content": parts}
    if system_parts:
        messages.insert(0, {"role": "system", "content": "\n\n".join(system_parts)})
    return messages


@dataclass
class Target:
    """Where a request goes: the instance, its pool and the model."""

    instance: BindingInstance
    model: str
    generation_type: str

    @property
    def name(self) -> str:
        return self.instance.name

    @property
    def pool(self) -> str:
        return self.instance.pool


@dataclass
class Timings:
    started: float = field(default_factory=time.monotonic)
    queue_wait: float = 0.0
    load: float = 0.0
    compute: float = 0.0
    slot_granted_at: float = 0.0
    compute_finished_at: float = 0.0

    def granted(self, queue_wait: float) -> None:
        self.queue_wait = queue_wait
        self.slot_granted_at = time.time()

    def finished(self, compute_started: float) -> None:
        self.compute = time.monotonic() - compute_started
        self.compute_finished_at = time.time()

    def public(self) -> dict[str, float]:
        """Seconds spent waiting, loading and computing; wall-clock times of slot grant and end."""
        return {
            "queue_wait": round(self.queue_wait, 6),
            "load": round(self.load, 6),
            "compute": round(self.compute, 6),
            "total": round(time.monotonic() - self.started, 6),
            "slot_granted_at": round(self.slot_granted_at, 6),
            "compute_finished_at": round(self.compute_finished_at, 6),
        }


class GenerationService:
    """Runs generations for the API; built once per app and kept on ``app.state``."""

    def __init__(
        self,
        config: AppConfig,
        bindings: BindingManager,
        resources: ResourceManager,
        personalities: PersonalityManager,
        functions: FunctionManager,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.bindings = bindings
        self.resources = resources
        self.personalities = personalities
        self.functions = functions
        self.metrics = metrics

    def personality_of(self, request: GenerateRequest) -> Personality | None:
        """The request's personality, else the default one (404 for an unknown name)."""
        name = request.personality or self.config.defaults.personality
        return self.personalities.get(name) if name else None

    # ---- routing ------------------------------------------------------------
    def resolve(
        self,
        principal: Principal,
        generation_type: str,
        binding_name: str | None,
        model_name: str | None,
        personality: Personality | None = None,
    ) -> Target:
        defaults = self.config.defaults
        recommended = personality.config if personality is not None and generation_type == "ttt" else None
        if binding_name is None and recommended is not None and recommended.recommended_binding:
            binding_name = recommended.recommended_binding
            if model_name is None:
                model_name = recommended.recommended_model
        name = binding_name or defaults.binding_for(generation_type)
        if not name:
            raise BadRequestError(
                f"No binding for generation_type '{generation_type}': name one in binding_name "
                f"or set [defaults] {generation_type}_binding.",
                param="binding_name",
            )
        instance = self.bindings.instance(name)
        principal.require_binding(instance.name)
        card_types = instance.card.generation_types
        if generation_type not in card_types and not (generation_type == "i2i" and "tti" in card_types):
            raise BadRequestError(
                f"Binding '{instance.name}' does not support generation_type '{generation_type}'.",
                param="generation_type",
            )
        model = model_name
        if model is None and name == defaults.binding_for(generation_type):
            model = defaults.model_for(generation_type)
        model = model or instance.config.model_name
        if not model:
            raise BadRequestError(
                f"No model for binding '{instance.name}': give model_name or set its model_name.",
                param="model_name",
            )
        validate_model_name(model)
        return Target(instance=instance, model=model, generation_type=generation_type)

    def merged_parameters(
        self, generation_type: str, request_parameters: dict[str, Any], personality: Personality | None = None
    ) -> dict[str, Any]:
        """Server defaults < personality < request; the personality's anti-prompts join the stop
        sequences. A request without a seed gets a random one, recorded in the output metadata
        so the answer can be reproduced."""
        if generation_type == "ttt":
            from_personality = personality.parameter_defaults() if personality is not None else {}
            parameters = validate_text_parameters(
                {**self.config.defaults.parameters, **from_personality, **request_parameters}
            )
            if personality is not None and personality.config.anti_prompts:
                stop = parameters.get("stop") or []
                stop = [stop] if isinstance(stop, str) else list(stop)
                parameters["stop"] = [*stop, *(p for p in personality.config.anti_prompts if p not in stop)]
        else:
            parameters = validate_media_parameters(request_parameters)
        parameters.setdefault("seed", secrets.randbelow(2**31))
        return parameters

    @staticmethod
    def _text_request(
        request: GenerateRequest, parameters: dict[str, Any], personality: Personality | None = None
    ) -> TextRequest:
        """Chat messages; the request's system_message wins over the personality's conditioning."""
        system_message = parameters.pop("system_message", None)
        prompt_format: dict[str, str] = {}
        if personality is not None:
            config = personality.config
            system_message = system_message or config.personality_conditioning or None
            prompt_format = {
                "user_prefix": config.user_message_prefix,
                "ai_prefix": config.ai_message_prefix,
                "link_text": config.link_text,
            }
        if parameters.pop("raw_prompt", False):  # a completion of the text as written, no template
            text = "".join(item.data for item in request.input_data if item.type == "text")
            return TextRequest(
                messages=[{"role": "user", "content": text}], parameters=parameters, prompt=text
            )
        messages = build_messages(request.input_data, system_message)
        return TextRequest(messages=messages, parameters=parameters, prompt_format=prompt_format)

    # ---- whole answers ------------------------------------------------------
    async def generate(
        self, request: GenerateRequest, principal: Principal, request_id: str, cancel: CancelToken
    ) -> GenerateResponse:
        """Run one request to completion (the client leaving cancels it)."""
        personality = self.personality_of(request)
        if personality is not None and personality.scripted:
            runner = WorkflowRun(self, personality, request, principal, request_id, cancel)
            outputs = await self._with_timeout(runner.collect(), cancel)
            return GenerateResponse(
                personality=personality.name,
                request_id=request_id,
                output=outputs,
                execution_time=round(time.monotonic() - runner.started, 6),
            )
        admission = await self._admit(request, principal, personality)
        target, timings = admission.target, admission.timings
        try:
            started = time.monotonic()
            if admission.media_request is not None:
                media = await self._with_timeout(
                    admission.run_media(cancel, lambda step, total: None), cancel
                )
            elif admission.tools:
                loop = ToolLoop(self, admission, cancel)
                result = await self._with_timeout(loop.run(), cancel)
            else:
                assert admission.text_request is not None
                result = await self._with_timeout(
                    admission.binding.generate_text(target.model, admission.text_request, cancel), cancel
                )
            timings.finished(started)
        finally:
            await admission.release()
        if admission.media_request is not None:
            outputs = self._media_outputs(target, admission.parameters, media, timings)
            self.record(admission, 0)
        else:
            outputs = [self._text_output(target, admission.parameters, result, timings)]
            self.record(admission, int(result.usage.get("completion_tokens", 0)))
        return GenerateResponse(
            personality=personality.name if personality is not None else None,
            request_id=request_id,
            output=outputs,
            execution_time=round(time.monotonic() - timings.started, 6),
        )

    async def _with_timeout(self, awaitable: Any, cancel: CancelToken) -> Any:
        timeout = self.config.resource_manager.generation_timeout
        try:
            return await asyncio.wait_for(awaitable, timeout)
        except asyncio.TimeoutError:
            cancel.set()
            raise GenerationTimeoutError(f"The generation did not finish within {timeout:g} s.") from None
        except LollmsError:
            raise
        except Exception as exc:
            logger.exception("Binding failed during generation")
            raise BindingError(f"The binding failed during generation ({type(exc).__name__}).") from exc

    @staticmethod
    def _text_output(
        target: Target, parameters: dict[str, Any], result: TextResult, timings: Timings
    ) -> OutputData:
        return OutputData(
            type="text",
            data=result.text,
            mime_type="text/plain",
            metadata={
                "binding": target.name,
                "model": target.model,
                "generation_type": target.generation_type,
                "parameters": parameters,
                "seed": parameters.get("seed"),
                "finish_reason": result.finish_reason,
                "usage": result.usage,
                "timings": timings.public(),
                **result.metadata,
            },
        )

    def record(self, admission: Admission, tokens: int) -> None:
        """Generation seconds and tokens, by binding and API key name."""
        if self.metrics is not None:
            target = admission.target
            self.metrics.observe_generation(
                target.name,
                admission.principal_name,
                target.generation_type,
                admission.timings.compute,
                tokens,
            )

    @staticmethod
    def _media_outputs(
        target: Target, parameters: dict[str, Any], outputs: list[MediaOutput], timings: Timings
    ) -> list[OutputData]:
        if not outputs:
            raise BindingError(f"Binding '{target.name}' returned no output.")
        metadata = {
            "binding": target.name,
            "model": target.model,
            "generation_type": target.generation_type,
            "parameters": parameters,
            "seed": parameters.get("seed"),
            "timings": timings.public(),
        }
        return [to_output_data(output, metadata) for output in outputs]

    # ---- tokens -------------------------------------------------------------
    @asynccontextmanager
    async def _resident(
        self, principal: Principal, generation_type: str, binding_name: str | None, model_name: str | None
    ) -> AsyncIterator[tuple[Target, Binding]]:
        """A slot of the binding's pool and its model loaded, for calls outside /generate."""
        target = self.resolve(principal, generation_type, binding_name, model_name)
        binding = await self.bindings.get(target.name)
        async with (
            self.resources.slot(target.pool),
            self.resources.use_model(binding, target.pool, target.model),
        ):
            yield target, binding

    async def tokenize(
        self, principal: Principal, binding_name: str | None, model_name: str | None, text: str
    ) -> list[int]:
        async with self._resident(principal, "ttt", binding_name, model_name) as (target, binding):
            tokens: list[int] = await binding.tokenize(target.model, text)
        return tokens

    async def detokenize(
        self, principal: Principal, binding_name: str | None, model_name: str | None, tokens: list[int]
    ) -> str:
        async with self._resident(principal, "ttt", binding_name, model_name) as (target, binding):
            text: str = await binding.detokenize(target.model, tokens)
        return text

    async def embed(
        self, principal: Principal, binding_name: str | None, model_name: str | None, texts: list[str]
    ) -> tuple[Target, list[list[float]]]:
        """Embedding vectors of ``texts`` (holding a slot of the binding's pool)."""
        async with self._resident(principal, "embed", binding_name, model_name) as (target, binding):
            vectors = await self._with_timeout(binding.embed(target.model, texts), CancelToken())
        return target, vectors

    async def chat_turn(
        self, request: GenerateRequest, principal: Principal, tools: list[dict[str, Any]], cancel: CancelToken
    ) -> tuple[Target, TextResult, list[dict[str, Any]]]:
        """One model turn offering client-side ``tools`` (OpenAI semantics: the client runs them)."""
        admission = await self._admit(request, principal, self.personality_of(request))
        try:
            text, calls, usage = await self._with_timeout(single_turn(admission, tools, cancel), cancel)
        finally:
            await admission.release()
        finish = "tool_calls" if calls else "stop"
        return admission.target, TextResult(text=text, finish_reason=finish, usage=usage), calls

    async def model_info(
        self, principal: Principal, binding_name: str, model_name: str | None
    ) -> dict[str, Any]:
        """What the binding tells about a model (loading nothing)."""
        instance = self.bindings.instance(binding_name)
        principal.require_binding(instance.name)
        model = model_name or instance.config.model_name
        if model is not None:
            validate_model_name(model)
        binding = await self.bindings.get(instance.name)
        info = await binding.get_model_info(model)
        if instance.pool in self.resources.remote_pools:
            return {"loaded": False, "residency": None, **info}  # the pool's host tells residency
        return self.resources.with_residency(info, instance.name, model)

    # ---- streams ------------------------------------------------------------
    async def open_stream(
        self, request: GenerateRequest, principal: Principal, request_id: str
    ) -> GenerationStream | WorkflowRun:
        """Validate, route, wait for a slot and load the model *before* the response starts, so
        that 4xx/5xx/503 answers stay plain HTTP errors. A scripted personality streams what its
        workflow yields."""
        personality = self.personality_of(request)
        if personality is not None and personality.scripted:
            return WorkflowRun(self, personality, request, principal, request_id, CancelToken())
        return GenerationStream(self, await self._admit(request, principal, personality), request_id)

    async def _admit(
        self, request: GenerateRequest, principal: Principal, personality: Personality | None = None
    ) -> Admission:
        """Route and validate the request, wait (FIFO) for a pool slot and make the model resident."""
        target = self.resolve(
            principal, request.generation_type, request.binding_name, request.model_name, personality
        )
        check_inputs(request.input_data, self.config.limits)
        parameters = self.merged_parameters(request.generation_type, request.parameters, personality)
        tools = self.functions.require(request.functions) if request.functions else []
        if tools and request.generation_type != "ttt":
            raise BadRequestError("functions can only be used with generation_type 'ttt'.", param="functions")
        text_request: TextRequest | None = None
        media_request: MediaRequest | None = None
        if request.generation_type == "ttt":
            text_request = self._text_request(request, dict(parameters), personality)
        else:
            media_request = build_media_request(
                request.generation_type, request.input_data, dict(parameters), self.config.limits
            )
        timings = Timings()
        binding = await self.bindings.get(target.name)
        lease = await self.resources.acquire(target.pool)
        timings.granted(lease.wait_seconds)
        residency = AsyncExitStack()
        try:
            timings.load = await residency.enter_async_context(
                self.resources.use_model(binding, target.pool, target.model)
            )
        except BaseException:
            lease.release()
            raise
        return Admission(
            target,
            binding,
            text_request,
            media_request,
            parameters,
            timings,
            lease,
            residency,
            tools,
            personality,
            principal.name,
        )


@dataclass
class Admission:
    """An admitted request: it holds a pool slot and keeps its model resident until released."""

    target: Target
    binding: Binding
    text_request: TextRequest | None
    media_request: MediaRequest | None
    parameters: dict[str, Any]
    timings: Timings
    lease: Lease
    residency: AsyncExitStack
    tools: list[FunctionSpec] = field(default_factory=list)
    personality: Personality | None = None
    principal_name: str = ""

    async def run_media(self, cancel: CancelToken, progress: Progress) -> list[MediaOutput]:
        """Call the binding method of this media generation type."""
        assert self.media_request is not None
        method = getattr(self.binding, MEDIA_METHODS[self.target.generation_type])
        outputs: list[MediaOutput] = await method(self.target.model, self.media_request, cancel, progress)
        return outputs

    async def release(self) -> None:
        """Give back the model and the slot (idempotent)."""
        try:
            await self.residency.aclose()
        finally:
            self.lease.release()


class GenerationStream:
    """A streamed generation holding its slot and model until ``events()`` ends or ``aclose()``."""

    def __init__(self, service: GenerationService, admission: Admission, request_id: str) -> None:
        self.service = service
        self.admission = admission
        self.target = admission.target
        self.binding = admission.binding
        self.parameters = admission.parameters
        self.timings = admission.timings
        self.request_id = request_id
        self.cancel = CancelToken()

    async def aclose(self) -> None:
        """Stop the generation and give back the model and the slot (idempotent)."""
        self.cancel.set()
        await self.admission.release()

    async def events(self) -> AsyncGenerator[StreamChunk, None]:
        """info, chunk... (text) or info progress events (media), then final; or error.
        Always releases the slot."""
        timeout = self.service.config.resource_manager.generation_timeout
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            yield StreamChunk(
                type="info",
                content="generation started",
                metadata={
                    "request_id": self.request_id,
                    "binding": self.target.name,
                    "model": self.target.model,
                    "queue_wait": round(self.timings.queue_wait, 6),
                    "load": round(self.timings.load, 6),
                },
            )
            if self.admission.media_request is not None:
                async for event in self._media_events(deadline):
                    yield event
                return
            if self.admission.tools:
                async for event in self._tool_events():
                    yield event
                return
            started = time.monotonic()
            parts: list[str] = []
            last: TextChunk | None = None
            assert self.admission.text_request is not None
            chunks = self.binding.stream_text(self.target.model, self.admission.text_request, self.cancel)
            try:
                while True:
                    try:
                        chunk = await next_before(chunks, deadline)
                    except StopAsyncIteration:
                        break
                    if chunk.text:
                        parts.append(chunk.text)
                        yield StreamChunk(type="chunk", content=chunk.text)
                    if chunk.finish_reason or chunk.usage:
                        last = chunk
            finally:
                await chunks.aclose()
            self.timings.finished(started)
            result = TextResult(
                text="".join(parts),
                finish_reason=last.finish_reason if last else None,
                usage=(last.usage or {}) if last else {},
                metadata=(last.metadata or {}) if last else {},
            )
            output = GenerationService._text_output(self.target, self.parameters, result, self.timings)
            self.service.record(self.admission, int(result.usage.get("completion_tokens", 0)))
            yield StreamChunk(
                type="final",
                content=[output.model_dump(mode="json")],
                metadata={"request_id": self.request_id},
            )
        except (TimeoutError, asyncio.TimeoutError):
            self.cancel.set()
            yield error_chunk(GenerationTimeoutError(f"The generation did not finish within {timeout:g} s."))
        except LollmsError as exc:
            yield error_chunk(exc)
        except Exception as exc:  # noqa: BLE001 - becomes an SSE error event
            logger.exception("Binding %s failed mid-stream", self.target.name)
            yield error_chunk(BindingError(f"The binding failed during generation ({type(exc).__name__})."))
        finally:
            await self.aclose()

    async def _stop(self, work: asyncio.Future[Any]) -> None:
        """Stop a generation task the stream no longer waits for, and wait until it has."""
        if not work.done():
            self.cancel.set()
            work.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait({work})

    async def _tool_events(self) -> AsyncGenerator[StreamChunk, None]:
        """function_call events as the loop runs, then the answer as one chunk, then final."""
        events: asyncio.Queue[StreamChunk | None] = asyncio.Queue()
        loop = ToolLoop(self.service, self.admission, self.cancel, on_call=events.put_nowait)
        started = time.monotonic()
        work = asyncio.ensure_future(loop.run())
        work.add_done_callback(lambda _: events.put_nowait(None))
        try:
            while (event := await events.get()) is not None:
                yield event
            result = work.result()
        finally:
            await self._stop(work)
        self.timings.finished(started)
        if result.text:
            yield StreamChunk(type="chunk", content=result.text)
        output = GenerationService._text_output(self.target, self.parameters, result, self.timings)
        self.service.record(self.admission, int(result.usage.get("completion_tokens", 0)))
        yield StreamChunk(
            type="final", content=[output.model_dump(mode="json")], metadata={"request_id": self.request_id}
        )

    async def _media_events(self, deadline: float) -> AsyncGenerator[StreamChunk, None]:
        """Progress events (step i of n) while the binding works, then final."""
        started = time.monotonic()
        items = with_progress(self.admission.run_media, self.cancel)
        try:
            while True:
                item = await next_before(items, deadline)
                if isinstance(item, list):
                    outputs = item
                    break
                step, total = item
                yield StreamChunk(
                    type="info", content=f"step {step} of {total}", metadata={"step": step, "total": total}
                )
        finally:
            await items.aclose()
        self.timings.finished(started)
        data = GenerationService._media_outputs(self.target, self.parameters, outputs, self.timings)
        self.service.record(self.admission, 0)
        yield StreamChunk(
            type="final",
            content=[item.model_dump(mode="json") for item in data],
            metadata={"request_id": self.request_id},
        )


async def next_before(iterator: AsyncGenerator[T, None], deadline: float) -> T:
    """The next item of ``iterator``, or ``TimeoutError`` once the loop time passes ``deadline``.

    The timeout wraps only the wait for one item (never a ``yield``), and costs one timer
    handle per item rather than a task.
    """
    if sys.version_info >= (3, 11):
        async with asyncio.timeout_at(deadline):
            return await iterator.__anext__()
    remaining = deadline - asyncio.get_running_loop().time()  # pragma: no cover - Python 3.10
    return await asyncio.wait_for(iterator.__anext__(), max(remaining, 0))  # pragma: no cover


def error_chunk(exc: LollmsError) -> StreamChunk:
    return StreamChunk(
        type="error",
        content=exc.message,
        metadata={"type": exc.error_type, "status": exc.status_code},
    )
