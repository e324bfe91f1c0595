"""The Responses dialect, requests: ``input`` items become a native call.

Items (messages, ``function_call``/``custom_tool_call`` and their outputs) become OpenAI chat
messages, then native input items through the OpenAI family's own translation
(``openai_compat.translate.chat_inputs``: one mapping for both); ``instructions`` and every
system/developer message end up in one leading system turn (``build_messages`` joins them).
The answer side is ``output``; the tools and the plan of the turn are ``tools``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from lollms_server.api.kit.native import given
from lollms_server.api.openai_compat import translate
from lollms_server.api.openai_compat.protocol import ChatMessage
from lollms_server.api.responses.protocol import ResponsesInput, ResponsesRequest
from lollms_server.api.responses.tools import Plan, internal_name
from lollms_server.core.errors import BadRequestError
from lollms_server.core.generation.tools import protocol_prompt
from lollms_server.core.types import GenerateRequest, InputData

logger = logging.getLogger(__name__)


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
        found.update(
            given(
                max_tokens=body.max_output_tokens,
                temperature=body.temperature,
                top_p=body.top_p,
                seed=body.seed,
            )
        )
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
    protocol: bool = False,
) -> GenerateRequest:
    """The native request of the turn; ``protocol``: the tools are taught in the system turn
    (the server's text tool protocol), for a streamed ``auto`` turn."""
    instance, model = translate.split_model(body.model)
    found = parameters(body, the_plan)
    if max_tokens is not None:
        found["max_tokens"] = max_tokens
    extra: dict[str, Any] = {}
    if isinstance(body, ResponsesRequest):
        extra = {"personality": body.personality, "priority": body.priority}
    inputs = native_inputs(body.instructions, items)
    if protocol:  # last in the system turn, as the tool loop's own prompt (core.generation.tools)
        inputs.append(
            InputData(type="text", role="system_context", data=protocol_prompt(the_plan.tools.specs))
        )
    return translate.native(
        GenerateRequest,
        input_data=inputs,
        binding_name=instance,
        model_name=model,
        parameters=found,
        stream=stream,
        **extra,
    )
