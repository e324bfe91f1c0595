"""The orchestrator: a GenerateRequest becomes a binding call (DESIGN §1 request path).

``route -> GenerationService -> PoolRegistry (pool host) -> ResourceManager + binding``: it
routes the request (``routing``), checks and builds its inputs (``text_inputs``,
``media_inputs``), admits it into the binding's pool (a :class:`PoolSession` holds a slot and
the loaded model for the whole generation, wherever the pool runs), runs it (whole, streamed,
with tools, or a scripted personality's workflow) and standardizes the result (``outputs``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from lollms_server.core.bindings import Binding, BindingInstance, BindingManager, CancelToken, TextResult
from lollms_server.core.config import AppConfig
from lollms_server.core.errors import (
    BadRequestError,
    BindingError,
    GenerationTimeoutError,
    LollmsError,
    RateLimitError,
    ServiceUnavailableError,
)
from lollms_server.core.functions import FunctionManager
from lollms_server.core.generation.admission import Admission, Job, MediaJob, TextJob, Timings
from lollms_server.core.generation.first_use import DownloadWatch, ModelFetcher, await_model
from lollms_server.core.generation.gates import InstanceGates
from lollms_server.core.generation.media_inputs import build_media_request, check_inputs
from lollms_server.core.generation.outputs import media_outputs, record, text_output
from lollms_server.core.generation.queued import QueuedStream
from lollms_server.core.generation.routing import Target, merged_parameters, resolve
from lollms_server.core.generation.stream import GenerationStream
from lollms_server.core.generation.text_inputs import text_request
from lollms_server.core.generation.tools import ToolLoop, single_turn
from lollms_server.core.generation.turn_stream import ToolTurnStream
from lollms_server.core.generation.workflows import WorkflowRun, WorkflowServices
from lollms_server.core.metrics import Metrics
from lollms_server.core.personalities import Personality, PersonalityManager
from lollms_server.core.pools import PoolRegistry, PoolSession
from lollms_server.core.quota_store import key_quotas
from lollms_server.core.quotas import Quotas
from lollms_server.core.resource_manager import Ticket
from lollms_server.core.security import Principal
from lollms_server.core.streams import abandon
from lollms_server.core.types import GenerateRequest, GenerateResponse
from lollms_server.utils.paths import validate_model_name

logger = logging.getLogger(__name__)
T = TypeVar("T")
QUEUED_STREAM_AFTER_SECONDS = 2.0
"""A stream that has waited this long in its queue starts, with ``queued`` events; one refused or
admitted sooner keeps plain HTTP errors (a full queue, a short queue timeout: 503 + Retry-After)."""


class GenerationWatcher:
    """What a caller of :meth:`GenerationService.generate` may hear while it runs (the base class
    ignores everything). ``progress`` may be called from a binding's thread."""

    def position(self, position: int, eta: float) -> None:
        """The request waits in its pool's queue at ``position`` (a slot in about ``eta`` s)."""

    def admitted(self) -> None:
        """The request holds its slot with the model resident: the generation starts."""

    async def starting(self) -> None:
        """Awaited after :meth:`admitted`, before the binding runs (a durable job stores its
        attempt here, so a run that kills the process is known at the next start)."""

    def progress(self, step: int, total: int) -> None:
        """A media generation finished ``step`` of ``total`` steps."""


class GenerationService:
    """Runs generations for the API; built once per app and kept on ``app.state``."""

    def __init__(
        self,
        config: AppConfig,
        bindings: BindingManager,
        pools: PoolRegistry,
        personalities: PersonalityManager,
        functions: FunctionManager,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.bindings = bindings
        self.pools = pools
        self.resources = pools.resources
        self.personalities = personalities
        self.functions = functions
        self.metrics = metrics
        self.timeout = config.resource_manager.generation_timeout
        self.quotas: Quotas = key_quotas(config)
        self.model_fetcher: ModelFetcher | None = None
        """Starts or joins the pull of a missing model (``PullManager.for_first_use``), before
        admission: a first-use download holds no slot (see ``first_use``)."""
        self.no_model: Callable[[BindingInstance], LollmsError | None] | None = None
        """The error for a request whose instance has no model (the first run's 503 saying how
        to get one, ``core.models.first_run``); None: routing's 400."""
        self.gates = InstanceGates(list(bindings.instances))

    def personality_of(self, request: GenerateRequest) -> Personality | None:
        """The request's personality, else the default one (404 for an unknown name)."""
        name = request.personality or self.config.defaults.personality
        return self.personalities.get(name) if name else None

    def resolve(
        self,
        principal: Principal,
        generation_type: str,
        binding_name: str | None,
        model_name: str | None,
        personality: Personality | None = None,
    ) -> Target:
        return resolve(
            self.config,
            self.bindings,
            principal,
            generation_type,
            binding_name,
            model_name,
            personality,
            self.no_model,
        )

    def _workflow(
        self,
        personality: Personality,
        request: GenerateRequest,
        principal: Principal,
        request_id: str,
        cancel: CancelToken,
    ) -> WorkflowRun:
        services = WorkflowServices(
            self.config, self.bindings, self.functions, self.personalities, self._sub_generate
        )
        return WorkflowRun(services, personality, request, principal, request_id, cancel)

    # ---- whole answers ------------------------------------------------------
    async def generate(
        self,
        request: GenerateRequest,
        principal: Principal,
        request_id: str,
        cancel: CancelToken,
        *,
        personalities: bool = True,
        watch: GenerationWatcher | None = None,
    ) -> GenerateResponse:
        """Run one request to completion (the client leaving cancels it). ``personalities``
        false: no personality at all, not even the default one (a workflow's sub-generations).
        ``watch`` hears the queue position, the admission and the media progress (async jobs)."""
        personality = self.personality_of(request) if personalities else None
        if personality is not None and personality.scripted:
            runner = self._workflow(personality, request, principal, request_id, cancel)
            outputs = await self._bounded(runner.collect(), cancel)
            return GenerateResponse(
                personality=personality.name,
                request_id=request_id,
                output=outputs,
                execution_time=round(time.monotonic() - runner.started, 6),
            )
        watch = watch or GenerationWatcher()
        admission = await self.admit(request, principal, personality, on_position=watch.position)
        job, timings = admission.job, admission.timings
        try:
            watch.admitted()
            await watch.starting()
            started = time.monotonic()
            if isinstance(job, MediaJob):
                media = await self._bounded(admission.run_media(job.request, cancel, watch.progress), cancel)
            elif job.tools:
                loop = ToolLoop(admission, job, self.functions, self.config.functions.max_rounds, cancel)
                result = await self._bounded(loop.run(), cancel)
            else:
                result = await self._bounded(
                    admission.binding.generate_text(admission.target.model, job.request, cancel), cancel
                )
            timings.finished(started)
        finally:
            await admission.release()
        if isinstance(job, MediaJob):
            outputs = await media_outputs(admission, media)
            record(self.metrics, admission)
        else:
            outputs = [text_output(admission, result)]
            record(self.metrics, admission, result)
        return GenerateResponse(
            personality=personality.name if personality is not None else None,
            request_id=request_id,
            output=outputs,
            execution_time=round(time.monotonic() - timings.started, 6),
        )

    async def _sub_generate(
        self, request: GenerateRequest, principal: Principal, request_id: str, cancel: CancelToken
    ) -> GenerateResponse:
        """A workflow's sub-generation: never a personality (a scripted default personality would
        otherwise run itself again, without end)."""
        return await self.generate(request, principal, request_id, cancel, personalities=False)

    async def _bounded(self, awaitable: Awaitable[T], cancel: CancelToken) -> T:
        """``awaitable`` within the generation timeout; a binding's unexpected failure is a 500."""
        try:
            return await asyncio.wait_for(awaitable, self.timeout)
        except asyncio.TimeoutError:
            cancel.set()
            raise GenerationTimeoutError(
                f"The generation did not finish within {self.timeout:g} s."
            ) from None
        except LollmsError:
            raise
        except Exception as exc:
            logger.exception("Binding failed during generation")
            raise BindingError(f"The binding failed during generation ({type(exc).__name__}).") from exc

    # ---- tokens, embeddings, tools -------------------------------------------
    @asynccontextmanager
    async def _resident(
        self, principal: Principal, generation_type: str, binding_name: str | None, model_name: str | None
    ) -> AsyncIterator[tuple[Target, Binding]]:
        """A slot of the binding's pool and its model loaded, for calls outside /generate."""
        target = self.resolve(principal, generation_type, binding_name, model_name)
        session, ended = await self._admitted(principal, target)
        try:
            yield target, session.binding
        finally:
            try:
                await session.aclose()
            finally:
                ended()

    def _check_text(self, size: int, param: str) -> None:
        """The prompt limit applies to every route that takes text (400 before any slot)."""
        limit = self.config.limits.max_prompt_chars
        if size > limit:
            raise BadRequestError(f"The text holds {size} characters; the limit is {limit}.", param=param)

    async def tokenize(
        self, principal: Principal, binding_name: str | None, model_name: str | None, text: str
    ) -> list[int]:
        self._check_text(len(text), "text")
        async with self._resident(principal, "ttt", binding_name, model_name) as (target, binding):
            return await self._bounded(binding.tokenize(target.model, text), CancelToken())

    async def detokenize(
        self, principal: Principal, binding_name: str | None, model_name: str | None, tokens: list[int]
    ) -> str:
        async with self._resident(principal, "ttt", binding_name, model_name) as (target, binding):
            return await self._bounded(binding.detokenize(target.model, tokens), CancelToken())

    async def embed(
        self, principal: Principal, binding_name: str | None, model_name: str | None, texts: list[str]
    ) -> tuple[Target, list[list[float]]]:
        """Embedding vectors of ``texts`` (holding a slot of the binding's pool)."""
        self._check_text(sum(len(text) for text in texts), "input")
        async with self._resident(principal, "embed", binding_name, model_name) as (target, binding):
            vectors = await self._bounded(binding.embed(target.model, texts), CancelToken())
        return target, vectors

    async def chat_turn(
        self, request: GenerateRequest, principal: Principal, tools: list[dict[str, Any]], cancel: CancelToken
    ) -> tuple[Target, TextResult, list[dict[str, Any]]]:
        """One model turn offering client-side ``tools`` (OpenAI semantics: the client runs them)."""
        admission = await self.admit(request, principal, self.personality_of(request))
        assert isinstance(admission.job, TextJob), "chat turns are text"
        try:
            started = time.monotonic()
            text, calls, usage = await self._bounded(
                single_turn(admission, admission.job.request, tools, cancel), cancel
            )
            admission.timings.finished(started)
        finally:
            await admission.release()
        finish = "tool_calls" if calls else "stop"
        result = TextResult(text=text, finish_reason=finish, usage=usage)
        record(self.metrics, admission, result)  # tokens in metrics and the key's token quota
        return admission.target, result, calls

    async def open_tool_turn(
        self, request: GenerateRequest, principal: Principal, tools: list[dict[str, Any]], request_id: str
    ) -> ToolTurnStream:
        """``chat_turn``, streamed (``turn_stream``): admitted before the response starts, so a
        refusal stays a plain HTTP error."""
        admission = await self.admit(request, principal, self.personality_of(request))
        try:
            return ToolTurnStream(admission, tools, request_id, timeout=self.timeout, metrics=self.metrics)
        except BaseException:
            await admission.release()
            raise

    async def preload(
        self, principal: Principal, generation_type: str, binding_name: str | None, model_name: str | None
    ) -> Target:
        """Make a model resident (a slot of its pool is held while it loads), generating nothing:
        what Ollama clients ask with an empty prompt."""
        async with self._resident(principal, generation_type, binding_name, model_name) as (target, _):
            return target

    @staticmethod
    def may_unload(principal: Principal) -> bool:
        """Whether ``principal`` may unload models on demand (Ollama's ``keep_alive: 0``): keys
        with the ``admin`` scope only. A model is shared by every key that may use its instance,
        so a generate key's unload would force reloads on everyone; its ``keep_alive: 0`` leaves
        the model to its pool's idle rule."""
        return "admin" in principal.scopes

    async def unload(self, principal: Principal, target: Target) -> bool:
        """Unload ``target``'s model now if nobody uses it (pools of this process only; a worker
        process or Ray actor unloads by its own idle rule) and ``principal`` may (see
        :meth:`may_unload`). Returns whether it was unloaded."""
        principal.require_binding(target.name)
        if not self.may_unload(principal):
            return False
        if self.pools.hosts[target.pool].kind != "inprocess":
            return False
        return await self.resources.unload(target.name, target.model)

    # ---- listings -----------------------------------------------------------
    async def list_models(self, principal: Principal, binding_name: str) -> list[dict[str, Any]]:
        """The models an instance can load (403 when the key may not use it)."""
        principal.require_binding(binding_name)  # before the lookup: no other names leak
        instance = self.bindings.instance(binding_name)
        binding = await self.pools.host(instance).binding(instance.name)
        return await binding.list_available_models()

    async def model_info(
        self, principal: Principal, binding_name: str, model_name: str | None
    ) -> dict[str, Any]:
        """What the binding tells about a model, with its residency (loading nothing)."""
        principal.require_binding(binding_name)  # before the lookup: no other names leak
        instance = self.bindings.instance(binding_name)
        model = model_name or instance.config.model_name
        if model is not None:
            validate_model_name(model)
        return await self.pools.host(instance).model_info(instance.name, model)

    # ---- streams ------------------------------------------------------------
    async def open_stream(
        self, request: GenerateRequest, principal: Principal, request_id: str
    ) -> GenerationStream | QueuedStream | WorkflowRun:
        """Validate, route, wait for a slot and load the model *before* the response starts, so
        that 4xx/5xx/503 answers stay plain HTTP errors, wherever the pool runs. A request still
        waiting in its pool's queue after ``QUEUED_STREAM_AFTER_SECONDS`` gets its stream then
        (a :class:`QueuedStream`: its place and an ETA, then the generation; a later queue
        timeout is an ``error`` event with status 503). A scripted personality streams what its
        workflow yields."""
        personality = self.personality_of(request)
        if personality is not None and personality.scripted:
            return self._workflow(personality, request, principal, request_id, CancelToken())
        positions: asyncio.Queue[tuple[int, float]] = asyncio.Queue()

        def moved(position: int, eta: float) -> None:
            positions.put_nowait((position, eta))

        download = DownloadWatch()  # a first-use download, before the queue
        admission = asyncio.ensure_future(
            self.admit(request, principal, personality, on_position=moved, on_download=download)
        )
        first = asyncio.ensure_future(positions.get())
        downloading = asyncio.ensure_future(download.changed.wait())
        try:
            await asyncio.wait({admission, first, downloading}, return_when=asyncio.FIRST_COMPLETED)
            if not admission.done():  # it waits: a quick refusal or admission stays plain HTTP
                await asyncio.wait({admission}, timeout=QUEUED_STREAM_AFTER_SECONDS)
        except asyncio.CancelledError:  # the client left: leave the queue (or free its slot)
            first.cancel()
            downloading.cancel()
            await abandon(admission, Admission.release)
            await asyncio.gather(first, downloading, return_exceptions=True)
            raise
        downloading.cancel()
        if admission.done():
            first.cancel()
            return self._stream(admission.result(), request_id)
        latest = first.result() if first.done() else None
        if latest is None:
            first.cancel()
        while not positions.empty():  # the latest place
            latest = positions.get_nowait()
        return QueuedStream(
            admission, latest, positions, lambda admitted: self._stream(admitted, request_id), download
        )

    def _stream(self, admission: Admission, request_id: str) -> GenerationStream:
        return GenerationStream(
            admission,
            request_id,
            timeout=self.timeout,
            functions=self.functions,
            max_rounds=self.config.functions.max_rounds,
            metrics=self.metrics,
        )

    async def admit(
        self,
        request: GenerateRequest,
        principal: Principal,
        personality: Personality | None = None,
        on_position: Callable[[int, float], None] | None = None,
        on_download: Callable[[dict[str, Any]], None] | None = None,
    ) -> Admission:
        """Route and check the request, then wait (FIFO) for a slot of its pool with the model resident
        (a model the binding may download is fetched first, outside the pool)."""
        target = self.resolve(
            principal, request.generation_type, request.binding_name, request.model_name, personality
        )
        check_inputs(request.input_data, self.config.limits)
        parameters = merged_parameters(self.config, request.generation_type, request.parameters, personality)
        tools = self.functions.require(request.functions) if request.functions else []
        if tools and request.generation_type != "ttt":
            raise BadRequestError("functions can only be used with generation_type 'ttt'.", param="functions")
        job: Job
        if request.generation_type == "ttt":
            job = TextJob(text_request(request.input_data, dict(parameters), personality), tools)
        else:
            # decoding and checking images and audio takes CPU: off the event loop
            media_request = await asyncio.to_thread(
                build_media_request,
                request.generation_type,
                request.input_data,
                dict(parameters),
                self.config.limits,
            )
            job = MediaJob(media_request)
        timings = Timings()
        session, ended = await self._admitted(principal, target, request.priority, on_position, on_download)
        timings.admitted(session)
        return Admission(
            target,
            job,
            parameters,
            timings,
            session,
            personality,
            principal.name,
            on_tokens=lambda tokens: self.quotas.add_tokens(principal, tokens),
            on_release=ended,
            provenance=self.config.provenance,
        )

    async def _admitted(
        self,
        principal: Principal,
        target: Target,
        priority: str | None = None,
        on_position: Callable[[int, float], None] | None = None,
        on_download: Callable[[dict[str, Any]], None] | None = None,
    ) -> tuple[PoolSession, Callable[[], None]]:
        """The key's quotas (429), the model's first-use download if it needs one (outside the
        pool: streamed, up to the generation timeout with ``on_download`` progress; else up to the
        pool's queue_timeout, then 503), then a slot of the target's pool with its model resident;
        returns the session and the end of the key's running count (and of the instance's gate:
        a settings change of the instance waits for it, see ``gates``)."""
        try:
            wait = (
                self.timeout
                if on_download is not None
                else self.config.resource_manager.pools[target.pool].queue_timeout
            )
            batch = principal.priority == "batch" or priority == "batch"  # a request never raises it
            ticket = Ticket(principal.name, principal.weight, "batch" if batch else "interactive")
            gate = self.gates.of(target.name)
            async with self.quotas.admit(principal) as queued:  # checked (429) and counted waiting at once
                await await_model(self.model_fetcher, principal, target, wait, on_download)
                while True:
                    await gate.opened()  # a settings change of its instance: waits holding no slot
                    session = await self.pools.admit(target.instance, target.model, ticket, on_position)
                    leave_gate = gate.try_enter()
                    if leave_gate is not None:
                        break
                    await session.aclose()  # a change began meanwhile: its slot goes back to the pool
                try:
                    stop_running = await queued.start()
                except BaseException:
                    leave_gate()
                    await session.aclose()
                    raise
        except (RateLimitError, ServiceUnavailableError) as exc:
            if self.metrics is not None:
                self.metrics.observe_rejection(target.pool, getattr(exc, "reason", "unavailable"))
            raise
        if self.metrics is not None:
            self.metrics.observe_admission(target.pool, principal.name, session.queue_wait)

        def ended() -> None:
            stop_running()
            leave_gate()

        return session, ended
