"""A streamed generation: its events from the first ``info`` to ``final`` or ``error``, under
one deadline, always releasing its pool session at the end."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from functools import partial

from lollms_server.core.bindings import TextChunk, TextResult, with_progress
from lollms_server.core.errors import BindingError, GenerationTimeoutError, LollmsError
from lollms_server.core.functions import FunctionManager
from lollms_server.core.generation.admission import Admission, AdmittedStream, MediaJob, TextJob
from lollms_server.core.generation.outputs import (
    error_chunk,
    final_chunk,
    media_outputs,
    record,
    text_output,
)
from lollms_server.core.generation.tools import ToolLoop
from lollms_server.core.metrics import Metrics
from lollms_server.core.streams import next_before, stop_and_wait
from lollms_server.core.types import StreamChunk

logger = logging.getLogger(__name__)


class GenerationStream(AdmittedStream):
    """A streamed generation holding its slot and model until ``events()`` ends or ``aclose()``."""

    metrics: Metrics | None

    def __init__(
        self,
        admission: Admission,
        request_id: str,
        *,
        timeout: float,
        functions: FunctionManager,
        max_rounds: int,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(admission, request_id, timeout=timeout, metrics=metrics)
        self.target = admission.target
        self.binding = admission.binding
        self.timings = admission.timings
        self.functions = functions
        self.max_rounds = max_rounds

    async def events(self) -> AsyncGenerator[StreamChunk, None]:
        """info, chunk... (text) or info progress events (media), then final; or error.
        Always releases the slot."""
        deadline = self.deadline
        job = self.admission.job
        try:
            yield StreamChunk(
                type="info", content="generation started", metadata=self.admission.info(self.request_id)
            )
            if isinstance(job, MediaJob):
                events = self._media_events(job, deadline)
            elif job.tools:
                events = self._tool_events(job)
            else:
                events = self._text_events(job, deadline)
            try:
                async for event in events:
                    yield event
            finally:
                await events.aclose()
        except (TimeoutError, asyncio.TimeoutError):
            self.cancel.set()
            yield error_chunk(
                GenerationTimeoutError(f"The generation did not finish within {self.timeout:g} s.")
            )
        except LollmsError as exc:
            yield error_chunk(exc)
        except Exception as exc:  # noqa: BLE001 - becomes an SSE error event
            logger.exception("Binding %s failed mid-stream", self.target.name)
            yield error_chunk(BindingError(f"The binding failed during generation ({type(exc).__name__})."))
        finally:
            await self.aclose()

    def _final(self, result: TextResult) -> StreamChunk:
        output = text_output(self.admission, result)
        record(self.metrics, self.admission, result)
        return final_chunk([output], self.request_id)

    async def _text_events(self, job: TextJob, deadline: float) -> AsyncGenerator[StreamChunk, None]:
        started = time.monotonic()
        parts: list[str] = []
        last: TextChunk | None = None
        chunks = self.binding.stream_text(self.target.model, job.request, self.cancel)
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
        yield self._final(
            TextResult(
                text="".join(parts),
                finish_reason=last.finish_reason if last else None,
                usage=(last.usage or {}) if last else {},
                metadata=(last.metadata or {}) if last else {},
            )
        )

    async def _tool_events(self, job: TextJob) -> AsyncGenerator[StreamChunk, None]:
        """function_call events as the loop runs, then the answer as one chunk, then final."""
        events: asyncio.Queue[StreamChunk | None] = asyncio.Queue()
        loop = ToolLoop(self.admission, job, self.functions, self.max_rounds, self.cancel, events.put_nowait)
        started = time.monotonic()
        work = asyncio.ensure_future(asyncio.wait_for(loop.run(), self.timeout))
        work.add_done_callback(lambda _: events.put_nowait(None))
        try:
            while (event := await events.get()) is not None:
                yield event
            result = work.result()
        finally:
            await stop_and_wait(work, self.cancel)
        self.timings.finished(started)
        if result.text:
            yield StreamChunk(type="chunk", content=result.text)
        yield self._final(result)

    async def _media_events(self, job: MediaJob, deadline: float) -> AsyncGenerator[StreamChunk, None]:
        """Progress events (step i of n) while the binding works, then final."""
        started = time.monotonic()
        items = with_progress(partial(self.admission.run_media, job.request), self.cancel)
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
        data = await media_outputs(self.admission, outputs)
        record(self.metrics, self.admission)
        yield final_chunk(data, self.request_id)
