"""The Responses dialect, requests: ``input`` items become a native call.

Items (messages, ``function_call``/``custom_tool_call`` and their outputs) become the kit's
chat turns, then native input items through the kit's one mapping (``kit.chat``);
``instructions`` and every system/developer message end up in one leading system turn
(``build_messages`` joins them).
The answer side is ``output``; the tools and the plan of the turn are ``tools``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from lollms_server.api.kit import chat
from lollms_server.api.kit.chat import Image, ToolCall, Turn, arguments, data_url_image
from lollms_server.api.kit.names import split_model
from lollms_server.api.kit.native import given, native, structured_output
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


def _content(content: Any, where: str) -> tuple[str, list[Image]]:
    """Responses content parts as text and images (inline ``data:`` URLs only)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise BadRequestError("content must be a string or a list of parts.", param=where)
    texts: list[str] = []
    images: list[Image] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            texts.append(str(part.get("text", "")))
        elif kind == "refusal":
            texts.append(str(part.get("refusal", "")))
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url.startswith("data:"):
                raise BadRequestError("Images must be sent inline as data: URLs in image_url.", param=where)
            images.append(data_url_image(url))
        else:
            raise BadRequestError(f"Unsupported content part '{str(kind)[:32]}'.", param=where)
    return "".join(texts), images


def chat_turns(instructions: str | None, items: list[dict[str, Any]]) -> list[Turn]:
    """Responses items as the kit's chat turns (unknown item types: a warning, then skipped);
    the calls of one assistant turn join it, after its text."""
    turns: list[Turn] = []
    if instructions:
        turns.append(Turn("system", instructions))

    def assistant() -> Turn:
        if turns and turns[-1].role == "assistant":
            return turns[-1]
        turns.append(Turn("assistant"))
        return turns[-1]

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
            text, images = _content(item.get("content"), f"{where}.content")
            if role == "assistant":
                assistant().text += text
            else:
                turns.append(Turn("user", text, images=images) if role == "user" else Turn("system", text))
        elif kind in ("function_call", "custom_tool_call"):
            name = internal_name(str(item.get("name", "")), item.get("namespace"))
            if kind == "function_call":
                raw = item.get("arguments") or "{}"
            else:
                raw = json.dumps({"input": str(item.get("input", ""))}, ensure_ascii=False)
            assistant().tool_calls.append(ToolCall(name, arguments(raw), id=str(item.get("call_id", ""))))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            text, _ = _content(item.get("output"), f"{where}.output")  # images of an output left out
            turns.append(Turn("tool", text, call_id=str(item.get("call_id", ""))))
        else:  # reasoning, item_reference, web_search_call...: nothing a local model can replay
            logger.debug("/v1/responses: input item type %r skipped", str(kind)[:64])
    return turns


def native_inputs(instructions: str | None, items: list[dict[str, Any]]) -> list[InputData]:
    """Native input items of a conversation; one with no user turn gets an empty one (Codex
    probes with an empty ``input``)."""
    inputs = chat.native_inputs(chat_turns(instructions, items))
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
            schema = structured_output({"type": kind, "json_schema": {"schema": text_format.get("schema")}})
        else:
            schema = structured_output({"type": kind})
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
    instance, model = split_model(body.model)
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
    return native(
        GenerateRequest,
        input_data=inputs,
        binding_name=instance,
        model_name=model,
        parameters=found,
        stream=stream,
        **extra,
    )
