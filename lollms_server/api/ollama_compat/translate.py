"""Ollama <-> native translation: Ollama bodies become GenerateRequest inputs and parameters;
native answers and stream events become Ollama's JSON objects and NDJSON lines."""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime, timezone
from typing import Any

from lollms_server.api.kit.chat import Image, ToolCall, Turn, native_inputs
from lollms_server.api.kit.names import split_model
from lollms_server.api.kit.native import native
from lollms_server.api.ollama_compat.protocol import (
    ChatBody,
    Format,
    GenerateBody,
    KeepAlive,
    Message,
    Options,
)
from lollms_server.core.errors import BadRequestError
from lollms_server.core.types import GenerateRequest, InputData
from lollms_server.utils.nesting import MAX_TOOL_ARGUMENT_DEPTH, nests_deeper

TAG = ":latest"
"""Ollama names are ``name:tag``; listings show ``:latest`` and requests may send it or not
(Open WebUI adds it to every name without a colon)."""
OPTION_PARAMETERS = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "num_predict": "max_tokens",
    "stop": "stop",
    "seed": "seed",
    "repeat_penalty": "repeat_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
"""Ollama option -> native text parameter (the names ``TextParameters`` checks and the text
bindings read). ``num_ctx`` is not a per-request setting here: a binding instance's context
size is its configuration (llama.cpp ``n_ctx``, Ollama ``num_ctx``)."""
NANOSECONDS = 1_000_000_000
IMAGE_MAGIC = (
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
)


def model_target(name: str) -> tuple[str | None, str | None]:
    """``instance`` or ``instance/model``, with an optional ``:latest`` tag."""
    if name.endswith(TAG):
        name = name[: -len(TAG)]
    return split_model(name)


def public_name(instance: str, model: str | None = None) -> str:
    return (f"{instance}/{model}" if model else instance) + TAG


def unloads(keep_alive: KeepAlive) -> bool:
    """``keep_alive`` 0 (``0``, ``"0"``, ``"0s"``, ``"0m"``...): unload once answered. Other
    values keep the pool's own idle-unload rule."""
    if keep_alive is None or isinstance(keep_alive, bool):
        return False
    if isinstance(keep_alive, int | float):
        return keep_alive == 0
    return re.fullmatch(r"\s*0+(\.0*)?\s*(ns|us|ms|s|m|h)?\s*", keep_alive) is not None


# ---------------------------------------------------------------- requests


def parameters(options: Options | None, format: Format = None) -> dict[str, Any]:
    """Native text parameters from Ollama ``options`` and ``format``."""
    found: dict[str, Any] = {}
    if options is not None:
        for option, parameter in OPTION_PARAMETERS.items():
            value = getattr(options, option)
            if value is not None:
                found[parameter] = value
        if isinstance(found.get("max_tokens"), int) and found["max_tokens"] < 0:
            del found["max_tokens"]  # -1: no limit, -2: fill the context (both: the model's room)
        elif found.get("max_tokens") == 0:
            raise BadRequestError("num_predict must not be 0.", param="options.num_predict")
        if isinstance(found.get("seed"), int) and found["seed"] < 0:
            del found["seed"]  # -1: a random seed (the server draws one and reports it)
    if format == "json":
        found["json_schema"] = {"type": "object"}
    elif isinstance(format, dict):
        found["json_schema"] = format
    elif format not in (None, ""):
        raise BadRequestError('format must be "json" or a JSON schema object.', param="format")
    return found


def image_of(data: str, param: str) -> Image:
    """A base64 image and its mime type, read from its first bytes (400 for other data)."""
    head = "".join(data[:64].split())
    try:
        first = base64.b64decode(head[: len(head) // 4 * 4] or "", validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError(f"{param} is not valid base64.", param=param) from None
    mime = next((kind for magic, kind in IMAGE_MAGIC if first.startswith(magic)), None)
    if mime is None and first[:4] == b"RIFF" and first[8:12] == b"WEBP":
        mime = "image/webp"
    if mime is None:
        raise BadRequestError(f"{param} is not a PNG, JPEG, GIF, WebP or BMP image.", param=param)
    return Image(data, mime)


def image_input(data: str, param: str) -> InputData:
    """A base64 image as a native input item."""
    image = image_of(data, param)
    return native(InputData, type="image", role="input_image", data=image.data, mime_type=image.mime_type)


def chat_inputs(messages: list[Message]) -> list[InputData]:
    """Ollama messages as native input items (through the kit's one chat mapping); tool turns
    use the server's text tool protocol."""
    turns: list[Turn] = []
    for index, message in enumerate(messages):
        text = message.content or ""
        if message.images and message.role != "user":
            raise BadRequestError("Only user messages can carry images.", param=f"messages[{index}].images")
        if message.role == "assistant":
            calls = []
            for call in message.tool_calls or []:
                function = call.get("function")
                if not isinstance(function, dict) or not function.get("name"):
                    raise BadRequestError(
                        "A tool call needs a 'function' with a 'name'.", param=f"messages[{index}].tool_calls"
                    )
                calls.append(ToolCall(str(function["name"]), _arguments(function.get("arguments"))))
            turns.append(Turn("assistant", text, tool_calls=calls))
        elif message.role == "tool":
            turns.append(Turn("tool", text, tool_name=message.tool_name))
        else:
            images = [
                image_of(image, f"messages[{index}].images[{number}]")
                for number, image in enumerate(message.images or [])
            ]
            turns.append(Turn(message.role, text, images=images))
    return native_inputs(turns)


def _arguments(raw: Any) -> Any:
    """Ollama sends arguments as an object; a JSON string is accepted too (either nested at
    most ``MAX_TOOL_ARGUMENT_DEPTH`` levels: 400 otherwise)."""
    if nests_deeper(raw, MAX_TOOL_ARGUMENT_DEPTH):
        raise BadRequestError(
            f"Tool call arguments nest more than {MAX_TOOL_ARGUMENT_DEPTH} levels deep.", param="messages"
        )
    if isinstance(raw, str):
        try:
            return json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            raise BadRequestError("Tool call arguments must be a JSON object.", param="messages") from None
    return raw if raw is not None else {}


def native_request(
    body: ChatBody | GenerateBody, inputs: list[InputData], parameters: dict[str, Any]
) -> GenerateRequest:
    """The native request of a ``/api/chat`` or ``/api/generate`` body."""
    instance, model = model_target(body.model)
    return native(
        GenerateRequest,
        input_data=inputs,
        binding_name=instance,
        model_name=model,
        parameters=parameters,
        stream=body.stream,
    )


def generate_inputs(body: GenerateBody) -> tuple[list[InputData], dict[str, Any]]:
    """``/api/generate``: the prompt (``raw``: as written, no chat template), the system text
    and images; returns the inputs and the extra parameters."""
    extra: dict[str, Any] = {}
    inputs: list[InputData] = []
    if body.raw:
        if body.images:
            raise BadRequestError("A raw prompt cannot carry images.", param="images")
        extra["raw_prompt"] = True
    elif body.system:
        inputs.append(InputData(type="text", role="system_context", data=body.system))
    inputs.append(InputData(type="text", role="user_prompt", data=body.prompt))
    inputs.extend(image_input(image, f"images[{i}]") for i, image in enumerate(body.images or []))
    return inputs, extra


def tools_offered(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The client's function tools (Ollama's shape is OpenAI's); 400 for one without a name."""
    offered = []
    for index, tool in enumerate(tools or []):
        if tool.get("type", "function") != "function":
            continue
        function = tool.get("function")
        if (
            not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not function["name"]
        ):
            raise BadRequestError("A tool needs a 'function' with a 'name'.", param=f"tools[{index}]")
        offered.append({"type": "function", "function": function})
    return offered


# ---------------------------------------------------------------- responses


def now() -> str:
    """Ollama's ``created_at``: RFC 3339 UTC (``datetime.fromisoformat`` reads it)."""
    return datetime.now(timezone.utc).isoformat()


def line(data: dict[str, Any]) -> bytes:
    """One NDJSON line."""
    return json.dumps(data, ensure_ascii=False).encode("utf-8") + b"\n"


def done_reason(metadata: dict[str, Any]) -> str:
    return "length" if metadata.get("finish_reason") == "length" else "stop"


def durations(metadata: dict[str, Any], prompt_seconds: float | None = None) -> dict[str, int]:
    """The final object's counts and durations (ns) from a native output's metadata.

    ``prompt_seconds``: time to the first token, when a stream measured it; otherwise the whole
    compute time counts as ``eval_duration`` (bindings report no prompt-evaluation time).
    """
    timings = metadata.get("timings") or {}
    usage = metadata.get("usage") or {}
    compute = float(timings.get("compute", 0.0))
    prompt = min(max(prompt_seconds or 0.0, 0.0), compute)
    return {
        "total_duration": int(float(timings.get("total", 0.0)) * NANOSECONDS),
        "load_duration": int(float(timings.get("load", 0.0)) * NANOSECONDS),
        "prompt_eval_count": int(usage.get("prompt_tokens", 0)),
        "prompt_eval_duration": int(prompt * NANOSECONDS),
        "eval_count": int(usage.get("completion_tokens", 0)),
        "eval_duration": int((compute - prompt) * NANOSECONDS),
    }


def tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Native calls ``[{id, name, arguments}]`` in Ollama's shape (arguments as an object)."""
    return [
        {"function": {"index": i, "name": call["name"], "arguments": call.get("arguments") or {}}}
        for i, call in enumerate(calls)
    ]
