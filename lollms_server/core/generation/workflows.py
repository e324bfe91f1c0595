"""Scripted personalities: run ``run_workflow(prompt, params, context)`` and standardize what it
returns (text, OutputData-like dicts, or an async generator of StreamChunk dicts)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from lollms_server.core.bindings import BindingManager, CancelToken
from lollms_server.core.config import AppConfig
from lollms_server.core.errors import BindingError, LollmsError
from lollms_server.core.functions import FunctionManager
from lollms_server.core.generation.outputs import error_chunk
from lollms_server.core.personalities import Personality, PersonalityManager
from lollms_server.core.security import Principal
from lollms_server.core.types import (
    PROMPT_ROLES,
    GenerateRequest,
    GenerateResponse,
    InputData,
    OutputData,
    StreamChunk,
)

MAX_WORKFLOW_DEPTH = 3
_depth: ContextVar[int] = ContextVar("lollms_workflow_depth", default=0)
"""How many workflows run around the current task (a guard against any recursion)."""

Generate = Callable[[GenerateRequest, Principal, str, CancelToken], Awaitable[GenerateResponse]]


@dataclass
class WorkflowServices:
    """What runs a workflow: the managers behind its facade and the server's ``generate`` for
    sub-generations (scripts see only :meth:`WorkflowRun.context`)."""

    config: AppConfig
    bindings: BindingManager
    functions: FunctionManager
    personalities: PersonalityManager
    generate: Generate


logger = logging.getLogger(__name__)


class WorkflowRun:
    """One run of a scripted personality; usable as a JSON answer (``collect``) or a stream."""

    deadline: float | None = None  # its sub-generations are bounded one by one

    def __init__(
        self,
        service: WorkflowServices,
        personality: Personality,
        request: GenerateRequest,
        principal: Principal,
        request_id: str,
        cancel: CancelToken,
    ) -> None:
        self.service = service
        self.personality = personality
        self.request = request
        self.principal = principal
        self.request_id = request_id
        self.cancel = cancel
        self.started = time.monotonic()

    def context(self) -> dict[str, Any]:
        service = self.service

        async def generate(
            prompt: str,
            generation_type: str = "ttt",
            binding_name: str | None = None,
            model_name: str | None = None,
            parameters: dict[str, Any] | None = None,
        ) -> list[OutputData]:
            """Run a sub-generation through the server's pools (with this request's key)."""
            sub = GenerateRequest(
                input_data=[InputData(type="text", role="user_prompt", data=prompt)],
                generation_type=generation_type,  # type: ignore[arg-type]
                binding_name=binding_name,
                model_name=model_name,
                parameters=parameters or {},
            )
            response = await service.generate(sub, self.principal, self.request_id, self.cancel)
            return response.output

        async def call_function(name: str, arguments: dict[str, Any] | None = None) -> tuple[bool, Any]:
            """Run one of the server's functions: (ok, result or error message)."""
            return await service.functions.safe_call(name, arguments or {})

        binding_name = self.request.binding_name or self.personality.config.recommended_binding
        binding_name = binding_name or service.config.defaults.binding_for("ttt")
        # a narrow facade: no manager, no configuration beyond defaults and limits (it may hold
        # keys in clear); everything goes through generate/call_function with the caller's key
        return {
            "binding": binding_name,
            "bindings": [name for name in service.bindings.instances if self.principal.can_use_binding(name)],
            "personality": self.personality,
            "config": {
                "defaults": service.config.defaults.model_dump(mode="json"),
                "limits": service.config.limits.model_dump(mode="json"),
            },
            "input_data": self.request.input_data,
            "request_info": {"request_id": self.request_id, "api_key_name": self.principal.name},
            "generate": generate,
            "call_function": call_function,
            "cancel": self.cancel,
        }

    def _prompt(self) -> str:
        return "\n".join(
            item.data for item in self.request.input_data if item.type == "text" and item.role in PROMPT_ROLES
        )

    async def chunks(self) -> AsyncGenerator[StreamChunk, None]:
        """What the workflow produces, as StreamChunks ending with ``final``."""
        depth = _depth.get() + 1
        if depth > MAX_WORKFLOW_DEPTH:
            raise BindingError(f"Scripted personalities nest deeper than {MAX_WORKFLOW_DEPTH} levels.")
        token = _depth.set(depth)
        try:
            async for chunk in self._chunks():
                yield chunk
        finally:
            try:
                _depth.reset(token)
            except ValueError:  # closed from another context (garbage collection)
                pass

    async def _chunks(self) -> AsyncGenerator[StreamChunk, None]:
        """The workflow's own chunks (see :meth:`chunks`)."""
        # the first call imports the script (and may install its requirements): off the loop
        workflow = await asyncio.to_thread(self.service.personalities.workflow, self.personality)
        name = self.personality.name
        try:
            result = workflow(self._prompt(), dict(self.request.parameters), self.context())
            if inspect.isawaitable(result):
                result = await result
            if inspect.isasyncgen(result):
                texts: list[str] = []
                final_sent = False
                async for item in result:
                    chunk = item if isinstance(item, StreamChunk) else StreamChunk.model_validate(item)
                    if chunk.type == "chunk" and isinstance(chunk.content, str):
                        texts.append(chunk.content)
                    final_sent = final_sent or chunk.type == "final"
                    yield chunk
                    if chunk.type in ("final", "error"):
                        return
                if not final_sent:
                    output = OutputData(type="text", data="".join(texts), mime_type="text/plain")
                    yield StreamChunk(type="final", content=[output.model_dump(mode="json")])
                return
            outputs = _outputs(result)
            for output in outputs:
                if output.type == "text" and isinstance(output.data, str):
                    yield StreamChunk(type="chunk", content=output.data)
            yield StreamChunk(type="final", content=[output.model_dump(mode="json") for output in outputs])
        except LollmsError:
            raise
        except (ValidationError, TypeError, ValueError) as exc:
            logger.exception("Workflow of personality %s returned something unusable", name)
            raise BindingError(
                f"The workflow of personality '{name}' returned an invalid result ({type(exc).__name__})."
            ) from exc
        except Exception as exc:
            logger.exception("Workflow of personality %s failed", name)
            raise BindingError(
                f"The workflow of personality '{name}' failed ({type(exc).__name__})."
            ) from exc

    async def collect(self) -> list[OutputData]:
        """The whole result (for JSON answers); a workflow error raises."""
        async for chunk in self.chunks():
            if chunk.type == "final":
                return [OutputData.model_validate(item) for item in chunk.content]
            if chunk.type == "error":
                raise BindingError(str(chunk.content))
        raise BindingError(f"The workflow of personality '{self.personality.name}' returned nothing.")

    async def events(self) -> AsyncGenerator[StreamChunk, None]:
        """For SSE: info, the workflow's events, and always final or error."""
        yield StreamChunk(
            type="info",
            content="workflow started",
            metadata={"request_id": self.request_id, "personality": self.personality.name},
        )
        try:
            async for chunk in self.chunks():
                if chunk.type == "final":
                    chunk.metadata.setdefault("request_id", self.request_id)
                yield chunk
        except LollmsError as exc:
            yield error_chunk(exc)

    async def aclose(self) -> None:
        self.cancel.set()


def _outputs(result: Any) -> list[OutputData]:
    if isinstance(result, str):
        return [OutputData(type="text", data=result, mime_type="text/plain")]
    if isinstance(result, dict):
        return [OutputData.model_validate(result)]
    if isinstance(result, list):
        return [
            OutputData.model_validate(item) if isinstance(item, dict) else _outputs(item)[0]
            for item in result
        ]
    if isinstance(result, OutputData):
        return [result]
    raise TypeError(f"unsupported workflow result {type(result).__name__}")
