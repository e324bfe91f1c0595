"""A streamed model turn offering client-side tools (``GenerationService.open_tool_turn``): the
streamed form of ``chat_turn``, whose calls go back to the client to run.

A binding with native tools (``chat_with_tools``: llama.cpp function-calling chat formats,
OpenAI, Ollama) answers whole: its text is one ``chunk``. Other text bindings stream: the model
reads the tool protocol (``tools.protocol_prompt``) and its text streams as it comes, calls
included as the model writes them (``<tool_call>{...}</tool_call>``); the ``final`` event
carries the parsed calls (``metadata.tool_calls``, ``[{id, name, arguments}]``) and, as its
text, the answer without the calls (stripped), exactly what ``chat_turn`` returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from lollms_server.core.bindings import TextChunk, TextRequest, TextResult
from lollms_server.core.errors import BindingError, GenerationTimeoutError, LollmsError
from lollms_server.core.generation.admission import Admission, AdmittedStream, TextJob
from lollms_server.core.generation.outputs import error_chunk, final_chunk, record, text_output
from lollms_server.core.generation.tools import (
    _with_system,
    parse_tool_calls,
    protocol_prompt,
    strip_tool_calls,
)
from lollms_server.core.metrics import Metrics
from lollms_server.core.streams import next_before
from lollms_server.core.types import StreamChunk

logger = logging.getLogger(__name__)


class ToolTurnStream(AdmittedStream):
    """A streamed tool turn holding its slot until ``events()`` ends or ``aclose()``."""

    metrics: Metrics | None

    def __init__(
        self,
        admission: Admission,
        tools: list[dict[str, Any]],
        request_id: str,
        *,
        timeout: float,
        metrics: Metrics | None = None,
    ) -> None:
        assert isinstance(admission.job, TextJob), "tool turns are text"
        super().__init__(admission, request_id, timeout=timeout, metrics=metrics)
        self.base = admission.job.request
        self.tools = tools

    async def events(self) -> AsyncGenerator[StreamChunk, None]:
        """info, chunk..., then final (its metadata's ``tool_calls``); or error. Always releases
        the slot."""
        admission = self.admission
        try:
            yield StreamChunk(
                type="info", content="generation started", metadata=admission.info(self.request_id)
            )
            started = time.monotonic()
            if admission.binding.supports_native_tools(admission.target.model):
                remaining = self.deadline - asyncio.get_running_loop().time()
                text, calls, usage = await asyncio.wait_for(
                    admission.binding.chat_with_tools(
                        admission.target.model, self.base, self.tools, self.cancel
                    ),
                    remaining,
                )
                if text:
                    yield StreamChunk(type="chunk", content=text)
                finish = "tool_calls" if calls else "stop"
            else:
                parts: list[str] = []
                last: TextChunk | None = None
                async for chunk in self._protocol_chunks():
                    if chunk.text:
                        parts.append(chunk.text)
                        yield StreamChunk(type="chunk", content=chunk.text)
                    if chunk.finish_reason or chunk.usage:
                        last = chunk
                text = "".join(parts)
                calls = [call for call in parse_tool_calls(text) if not call.get("error")]
                for index, call in enumerate(calls):
                    call["id"] = f"call_{index}_{call['name'].replace('.', '_')}"
                text = strip_tool_calls(text).strip() if calls else text
                usage = dict(last.usage or {}) if last else {}
                finish = "tool_calls" if calls else ((last.finish_reason if last else None) or "stop")
            admission.timings.finished(started)
            result = TextResult(text=text, finish_reason=finish, usage=usage, metadata={"tool_calls": calls})
            record(self.metrics, admission, result)
            yield final_chunk([text_output(admission, result)], self.request_id)
        except (TimeoutError, asyncio.TimeoutError):
            self.cancel.set()
            yield error_chunk(
                GenerationTimeoutError(f"The generation did not finish within {self.timeout:g} s.")
            )
        except LollmsError as exc:
            yield error_chunk(exc)
        except Exception as exc:  # noqa: BLE001 - becomes a stream error event
            logger.exception("Binding %s failed mid-stream", admission.target.name)
            yield error_chunk(BindingError(f"The binding failed during generation ({type(exc).__name__})."))
        finally:
            await self.aclose()

    async def _protocol_chunks(self) -> AsyncGenerator[TextChunk, None]:
        """The model's text, reading the tool protocol in its system message."""
        request = TextRequest(
            messages=_with_system(self.base.messages, protocol_prompt(self.tools)),
            parameters=self.base.parameters,
            prompt_format=self.base.prompt_format,
        )
        chunks = self.admission.binding.stream_text(self.admission.target.model, request, self.cancel)
        try:
            while True:
                try:
                    yield await next_before(chunks, self.deadline)
                except StopAsyncIteration:
                    return
        finally:
            await chunks.aclose()
