"""The Responses dialect: a request becomes a native call, native events become the response
object and its SSE frames.

In: ``input`` items (messages, ``function_call``/``custom_tool_call`` and their outputs) become
OpenAI chat messages and then native input items through the OpenAI family's own translation
(``openai_compat.translate.chat_inputs``: one mapping for both); ``instructions`` and every
system/developer message end up in one leading system turn (``build_messages`` joins them).
``tools`` of type ``function``, ``custom`` (Codex's freeform ``apply_patch``) and ``namespace``
(one per MCP server) are offered to the model as functions; built-in tool types this server
cannot run (``web_search``, ``local_shell``, ...) are ignored with a warning.

Out: :class:`ResponseBuilder` keeps the output items and numbers the events; whole answers are
built by the same calls as streams, so both carry the same object.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from lollms_server.api.openai_compat import translate
from lollms_server.api.openai_compat.protocol import ChatMessage
from lollms_server.api.responses.protocol import ResponsesInput, ResponsesRequest
from lollms_server.core.errors import BadRequestError
from lollms_server.core.types import GenerateRequest, InputData

logger = logging.getLogger(__name__)

MAX_GRAMMAR_NOTE = 4000
"""Characters of a custom tool's grammar shown to the model in its description."""


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# ---------------------------------------------------------------- tools


@dataclass(frozen=True)
class ToolName:
    """What a name the model calls stands for: a ``function`` or ``custom`` tool, maybe in a namespace."""

    kind: str
    name: str
    namespace: str | None = None


@dataclass
class Tools:
    """The request's tools as chat functions for the model, with the way back to Responses items."""

    specs: list[dict[str, Any]] = field(default_factory=list)
    names: dict[str, ToolName] = field(default_factory=dict)

    def add(self, tool: dict[str, Any], namespace: str | None, index: int) -> None:
        kind = tool.get("type")
        name = tool.get("name")
        if kind not in ("function", "custom"):
            logger.warning("/v1/responses: tool type %r is not supported here; ignored", str(kind)[:64])
            return
        if not isinstance(name, str) or not name or len(name) > 256:
            raise BadRequestError(
                "A tool needs a 'name' of 1 to 256 characters.", param=f"tools[{index}].name"
            )
        description = str(tool.get("description") or "")
        if kind == "function":
            parameters = tool.get("parameters")
            if not isinstance(parameters, dict):
                parameters = {"type": "object", "properties": {}}
        else:  # freeform: the model passes its raw text as one string argument
            description += "\nThis tool takes free text: pass the whole text as the string argument 'input'."
            grammar = tool.get("format")
            if isinstance(grammar, dict) and isinstance(grammar.get("definition"), str):
                syntax = str(grammar.get("syntax") or "grammar")
                description += (
                    f"\nThe text follows this {syntax} grammar:\n{grammar['definition'][:MAX_GRAMMAR_NOTE]}"
                )
            parameters = {
                "type": "object",
                "properties": {"input": {"type": "string"}},
                "required": ["input"],
            }
        internal = internal_name(name, namespace)
        self.names[internal] = ToolName(kind, name, namespace)
        self.specs.append(
            {
                "type": "function",
                "function": {"name": internal, "description": description.strip(), "parameters": parameters},
            }
        )

    def spec(self, internal: str) -> dict[str, Any]:
        return next(spec for spec in self.specs if spec["function"]["name"] == internal)

    def lookup(self, internal: str) -> ToolName:
        return self.names.get(internal) or ToolName("function", internal)


def internal_name(name: str, namespace: str | None) -> str:
    """The name the model sees: a namespace's member is ``namespace.name``."""
    return f"{namespace}.{name}" if namespace else name


def read_tools(tools: list[dict[str, Any]] | None) -> Tools:
    found = Tools()
    for index, tool in enumerate(tools or []):
        if not isinstance(tool, dict):
            raise BadRequestError("Each tool must be an object.", param=f"tools[{index}]")
        if tool.get("type") == "namespace":
            namespace = tool.get("name")
            if not isinstance(namespace, str) or not namespace or len(namespace) > 256:
                raise BadRequestError("A namespace needs a 'name'.", param=f"tools[{index}].name")
            members = tool.get("tools")
            for member in members if isinstance(members, list) else []:
                if isinstance(member, dict):
                    found.add(member, namespace, index)
        else:
            found.add(tool, None, index)
    return found


@dataclass(frozen=True)
class Plan:
    """How the model turn runs: ``text`` (no tools offered), ``forced`` (one named tool must be
    called: its arguments are the answer, grammar-constrained by its schema where the binding
    can), ``required`` (one of several tools must be called) or ``auto`` (the model may call)."""

    mode: str
    tools: Tools
    forced: str | None = None


def plan(body: ResponsesInput) -> Plan:
    """The mode of the request from its ``tools`` and ``tool_choice``."""
    tools = read_tools(body.tools)
    choice = body.tool_choice
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = {
            internal_name(str(item.get("name")), item.get("namespace"))
            for item in choice.get("tools") or []
            if isinstance(item, dict)
        }
        tools = Tools(
            [spec for spec in tools.specs if spec["function"]["name"] in allowed],
            {name: value for name, value in tools.names.items() if name in allowed},
        )
        choice = "required" if choice.get("mode") == "required" else "auto"
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind in ("function", "custom"):
            name = internal_name(str(choice.get("name")), choice.get("namespace"))
            if name not in tools.names:
                raise BadRequestError(
                    f"tool_choice names '{name[:256]}', which is not in tools.", param="tool_choice"
                )
            return Plan("forced", tools, name)
        logger.warning("/v1/responses: tool_choice %r is not supported here; auto", str(kind)[:64])
        choice = "auto"
    if choice not in (None, "auto", "none", "required"):
        raise BadRequestError("tool_choice must be auto, none, required or a tool.", param="tool_choice")
    if not tools.specs or choice == "none":
        return Plan("text", tools)
    if choice == "required":
        if len(tools.specs) == 1:
            return Plan("forced", tools, tools.specs[0]["function"]["name"])
        return Plan("required", tools)
    return Plan("auto", tools)


# ---------------------------------------------------------------- input


def input_items(body: ResponsesInput) -> list[dict[str, Any]]:
    """``input`` as a list of items (a string is one user message)."""
    if isinstance(body.input, str):
        return [{"type": "message", "role": "user", "content": body.input}] if body.input else []
    return [item for item in body.input]


def _parts(content: Any, where: str) -> str | list[dict[str, Any]]:
    """Responses content parts as chat content parts (text and data: URL images)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequestError("content must be a string or a list of parts.", param=where)
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal", ""))})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url.startswith("data:"):
                raise BadRequestError("Images must be sent inline as data: URLs in image_url.", param=where)
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            raise BadRequestError(f"Unsupported content part '{str(kind)[:32]}'.", param=where)
    return parts


def _text_of(content: Any, where: str) -> str:
    """A tool output (string or parts) as text; images in a tool output are left out."""
    parts = _parts(content, where)
    if isinstance(parts, str):
        return parts
    return "".join(part["text"] for part in parts if part["type"] == "text")


def chat_messages(instructions: str | None, items: list[dict[str, Any]]) -> list[ChatMessage]:
    """Responses items as OpenAI chat messages (unknown item types: a warning, then skipped)."""
    messages: list[ChatMessage] = []
    if instructions:
        messages.append(ChatMessage(role="system", content=instructions))

    def assistant() -> ChatMessage:
        """The assistant turn calls join (several calls of one turn, text then calls)."""
        if messages and messages[-1].role == "assistant":
            return messages[-1]
        messages.append(ChatMessage(role="assistant", content="", tool_calls=[]))
        return messages[-1]

    for index, item in enumerate(items):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise BadRequestError("Each input item must be an object.", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise BadRequestError(
                    "role must be user, assistant, system or developer.", param=f"{where}.role"
                )
            content = _parts(item.get("content"), f"{where}.content")
            if role == "assistant":
                turn = assistant()
                text = content if isinstance(content, str) else _text_of(content, where)
                turn.content = f"{turn.content or ''}{text}"
            else:
                messages.append(ChatMessage(role=role, content=content))
        elif kind in ("function_call", "custom_tool_call"):
            name = internal_name(str(item.get("name", "")), item.get("namespace"))
            if kind == "function_call":
                arguments = item.get("arguments") or "{}"
            else:
                arguments = json.dumps({"input": str(item.get("input", ""))}, ensure_ascii=False)
            call = {
                "id": str(item.get("call_id", "")),
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            turn = assistant()
            turn.tool_calls = [*(turn.tool_calls or []), call]
        elif kind in ("function_call_output", "custom_tool_call_output"):
            messages.append(
                ChatMessage(
                    role="tool",
                    tool_call_id=str(item.get("call_id", "")),
                    content=_text_of(item.get("output"), f"{where}.output"),
                )
            )
        else:  # reasoning, item_reference, web_search_call...: nothing a local model can replay
            logger.debug("/v1/responses: input item type %r skipped", str(kind)[:64])
    return messages


def native_inputs(instructions: str | None, items: list[dict[str, Any]]) -> list[InputData]:
    """Native input items of a conversation; one with no user turn gets an empty one (Codex
    probes with an empty ``input``)."""
    inputs = translate.chat_inputs(chat_messages(instructions, items))
    if not any(item.role in ("user", "user_prompt") for item in inputs):
        inputs.append(InputData(type="text", role="user_prompt", data=""))
    return inputs


def parameters(body: ResponsesInput, the_plan: Plan) -> dict[str, Any]:
    """Native sampling and structure parameters of the request."""
    found: dict[str, Any] = {}
    if isinstance(body, ResponsesRequest):
        for key, value in (
            ("max_tokens", body.max_output_tokens),
            ("temperature", body.temperature),
            ("top_p", body.top_p),
            ("seed", body.seed),
        ):
            if value is not None:
                found[key] = value
    text_format = body.text.format if body.text else None
    if the_plan.mode == "forced":
        assert the_plan.forced is not None
        spec = the_plan.tools.spec(the_plan.forced)["function"]
        if the_plan.tools.lookup(the_plan.forced).kind == "function":
            found["json_schema"] = spec["parameters"]  # grammar-constrained where the binding can
            found["system_message"] = (
                f"Call the tool '{spec['name']}': {spec['description']}\n"
                "Answer with only its arguments, as one JSON object."
            )
        else:
            found["system_message"] = (
                f"Call the tool '{spec['name']}': {spec['description']}\n"
                "Answer with only the tool's input text."
            )
    elif the_plan.mode == "required":
        found["json_schema"] = {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {
                        "name": {"const": spec["function"]["name"]},
                        "arguments": spec["function"]["parameters"],
                    },
                    "required": ["name", "arguments"],
                }
                for spec in the_plan.tools.specs
            ]
        }
        listing = "\n".join(json.dumps(spec["function"], ensure_ascii=False) for spec in the_plan.tools.specs)
        found["system_message"] = (
            f"Call one of these tools:\n{listing}\n"
            'Answer with only {"name": <tool name>, "arguments": {<arguments>}}.'
        )
    elif text_format and text_format.get("type") not in (None, "text"):
        kind = text_format.get("type")
        if kind == "json_schema":
            schema = translate.structured_output(
                {"type": kind, "json_schema": {"schema": text_format.get("schema")}}
            )
        else:
            schema = translate.structured_output({"type": kind})
        found["json_schema"] = schema  # grammar-constrained where the binding can (llama.cpp)
        found["system_message"] = "Answer with one valid JSON object and nothing else."
    return found


def native_request(
    body: ResponsesInput,
    the_plan: Plan,
    items: list[dict[str, Any]],
    *,
    stream: bool,
    max_tokens: int | None = None,
) -> GenerateRequest:
    instance, model = translate.split_model(body.model)
    found = parameters(body, the_plan)
    if max_tokens is not None:
        found["max_tokens"] = max_tokens
    extra: dict[str, Any] = {}
    if isinstance(body, ResponsesRequest):
        extra = {"personality": body.personality, "priority": body.priority}
    return translate.native(
        GenerateRequest,
        input_data=native_inputs(body.instructions, items),
        binding_name=instance,
        model_name=model,
        parameters=found,
        stream=stream,
        **extra,
    )


# ---------------------------------------------------------------- output


def usage(found: dict[str, Any]) -> dict[str, Any]:
    """Native usage counts in Responses' shape (``cached_tokens``: prompt tokens read from the
    binding's prompt cache)."""
    prompt, completion = int(found.get("prompt_tokens", 0)), int(found.get("completion_tokens", 0))
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": min(int(found.get("cached_tokens", 0)), prompt),
            "cache_write_tokens": 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def sse(event: dict[str, Any]) -> bytes:
    """One event as OpenAI sends it: an ``event:`` line naming its type, then its data."""
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


class ResponseBuilder:
    """The response object of one request and its stream events, numbered from 0."""

    def __init__(self, body: ResponsesRequest, response_id: str, stored: bool) -> None:
        self.body = body
        self.id = response_id
        self.stored = stored
        self.created_at = int(time.time())
        self.status = "in_progress"
        self.output: list[dict[str, Any]] = []
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.incomplete: dict[str, Any] | None = None
        self.completed_at: int | None = None
        self.sequence = 0

    def response(self) -> dict[str, Any]:
        body = self.body
        text_format = (body.text.format if body.text else None) or {"type": "text"}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "completed_at": self.completed_at,
            "background": False,
            "error": self.error,
            "incomplete_details": self.incomplete,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "model": body.model or "",
            "output": [dict(item) for item in self.output],
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": body.previous_response_id,
            "prompt_cache_key": body.prompt_cache_key,
            "reasoning": {
                "effort": body.reasoning.effort if body.reasoning else None,
                "summary": body.reasoning.summary if body.reasoning else None,
            },
            "store": self.stored,
            "temperature": body.temperature,
            "text": {"format": text_format},
            "tool_choice": body.tool_choice or "auto",
            "tools": body.tools or [],
            "top_p": body.top_p,
            "truncation": "disabled",
            "usage": self.usage,
            "user": body.user,
            "metadata": body.metadata or {},
        }

    def event(self, kind: str, **fields: Any) -> bytes:
        frame = sse({"type": kind, "sequence_number": self.sequence, **fields})
        self.sequence += 1
        return frame

    def start(self) -> list[bytes]:
        return [
            self.event("response.created", response=self.response()),
            self.event("response.in_progress", response=self.response()),
        ]

    # ---- an assistant message ----
    def open_message(self) -> list[bytes]:
        item = {
            "id": new_id("msg"),
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        self.output.append(item)
        index = len(self.output) - 1
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            self.event("response.output_item.added", output_index=index, item=dict(item, content=[])),
            self.event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=part,
            ),
        ]

    def text_delta(self, delta: str) -> list[bytes]:
        item = self.output[-1]
        item["_text"] = item.get("_text", "") + delta
        return [
            self.event(
                "response.output_text.delta",
                item_id=item["id"],
                output_index=len(self.output) - 1,
                content_index=0,
                delta=delta,
                logprobs=[],
            )
        ]

    def close_message(self) -> list[bytes]:
        item = self.output[-1]
        index = len(self.output) - 1
        text = item.pop("_text", "")
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        item["content"] = [part]
        item["status"] = "completed"
        return [
            self.event(
                "response.output_text.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                text=text,
                logprobs=[],
            ),
            self.event(
                "response.content_part.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=part,
            ),
            self.event("response.output_item.done", output_index=index, item=dict(item)),
        ]

    def message(self, text: str) -> list[bytes]:
        """A whole assistant message (a replayed or whole answer)."""
        frames = self.open_message()
        if text:
            frames += self.text_delta(text)
        return frames + self.close_message()

    # ---- a tool call ----
    def open_call(self, tool: ToolName) -> list[bytes]:
        call_id = new_id("call")
        if tool.kind == "custom":
            item: dict[str, Any] = {
                "id": new_id("ctc"),
                "type": "custom_tool_call",
                "status": "in_progress",
                "call_id": call_id,
                "name": tool.name,
                "input": "",
            }
        else:
            item = {
                "id": new_id("fc"),
                "type": "function_call",
                "status": "in_progress",
                "call_id": call_id,
                "name": tool.name,
                "arguments": "",
            }
        if tool.namespace:
            item["namespace"] = tool.namespace
        self.output.append(item)
        return [self.event("response.output_item.added", output_index=len(self.output) - 1, item=dict(item))]

    def call_delta(self, delta: str) -> list[bytes]:
        item = self.output[-1]
        index = len(self.output) - 1
        if item["type"] == "custom_tool_call":
            item["input"] += delta
            return [
                self.event(
                    "response.custom_tool_call_input.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=delta,
                )
            ]
        item["arguments"] += delta
        return [
            self.event(
                "response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=delta
            )
        ]

    def close_call(self, value: str | None = None) -> list[bytes]:
        """End the open call (``value``: its whole arguments or input, replacing the deltas)."""
        item = self.output[-1]
        index = len(self.output) - 1
        item["status"] = "completed"
        if item["type"] == "custom_tool_call":
            if value is not None:
                item["input"] = value
            done = self.event(
                "response.custom_tool_call_input.done",
                item_id=item["id"],
                output_index=index,
                input=item["input"],
            )
        else:
            if value is not None:
                item["arguments"] = value
            done = self.event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                name=item["name"],
                arguments=item["arguments"],
            )
        return [done, self.event("response.output_item.done", output_index=index, item=dict(item))]

    def call(self, tool: ToolName, arguments: Any) -> list[bytes]:
        """A whole tool call: a function's JSON arguments, a custom tool's raw ``input`` text."""
        if tool.kind == "custom":
            value = arguments.get("input", "") if isinstance(arguments, dict) else arguments
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        else:
            text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        return self.open_call(tool) + self.call_delta(text) + self.close_call()

    # ---- the end ----
    def finish(self, native_usage: dict[str, Any], finish_reason: str | None) -> list[bytes]:
        self.usage = usage(native_usage)
        self.completed_at = int(time.time())
        if finish_reason == "length":
            self.status = "incomplete"
            self.incomplete = {"reason": "max_output_tokens"}
            return [self.event("response.incomplete", response=self.response())]
        self.status = "completed"
        return [self.event("response.completed", response=self.response())]

    def fail(self, code: str, message: str, status: str = "failed") -> list[bytes]:
        self.status = status
        self.error = {"code": code, "message": message}
        for item in self.output:
            item.pop("_text", None)
            if item.get("status") == "in_progress":
                item["status"] = "incomplete"
        return [self.event("response.failed", response=self.response())]
