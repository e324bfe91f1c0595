"""OpenAI <-> native translation: OpenAI requests become native GenerateRequest inputs and
parameters; native answers and stream events become OpenAI responses and chunks. The chat
turns go through the API kit's one mapping (``kit.chat``); what is OpenAI's own (content parts,
tool-call arguments as a JSON string, ``tool_choice``) is read here."""

from __future__ import annotations

import io
import time
import wave
from typing import Any

from lollms_server.api.kit.chat import Image, ToolCall, Turn, arguments, data_url_image, native_inputs
from lollms_server.api.kit.events import Failed
from lollms_server.api.kit.names import split_model
from lollms_server.api.kit.native import given, native, structured_output
from lollms_server.api.kit.sse import DONE, data_frame
from lollms_server.api.openai_compat.protocol import ChatCompletionRequest, ChatMessage
from lollms_server.core.errors import BadRequestError
from lollms_server.core.types import InputData, OutputData
from lollms_server.utils.audio_encoding import encode_audio
from lollms_server.utils.media import AUDIO_FORMATS, audio_format

__all__ = ["DONE", "native", "split_model"]  # re-exported: routes and videos use them from here

FINISH_REASONS = {"length": "length", "stop": "stop", "tool_calls": "tool_calls"}


# ---------------------------------------------------------------- requests


def _content(message: ChatMessage, index: int) -> tuple[str, list[Image]]:
    content = message.content
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    images: list[Image] = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            image_url = part.get("image_url")
            url = str(image_url.get("url", "") if isinstance(image_url, dict) else image_url or "")
            if not url.startswith("data:"):
                raise BadRequestError(
                    "Images must be sent inline as data: URLs.", param=f"messages[{index}].content"
                )
            images.append(data_url_image(url))
        else:
            raise BadRequestError(
                f"Unsupported content part '{str(kind)[:32]}'.", param=f"messages[{index}].content"
            )
    return "".join(texts), images


def chat_turns(messages: list[ChatMessage]) -> list[Turn]:
    """OpenAI messages as the kit's chat turns (``developer`` is a system turn)."""
    turns: list[Turn] = []
    for index, message in enumerate(messages):
        text, images = _content(message, index)
        if message.role in ("system", "developer"):
            turns.append(Turn("system", text))
        elif message.role == "user":
            turns.append(Turn("user", text, images=images))
        elif message.role == "assistant":
            calls = []
            for call in message.tool_calls or []:
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict):
                    raise BadRequestError(
                        "A tool call needs a 'function' object.", param=f"messages[{index}].tool_calls"
                    )
                name, given_arguments = str(function.get("name", "")), arguments(function.get("arguments"))
                call_id = call.get("id")
                calls.append(
                    ToolCall(name, given_arguments, id=str(call_id) if call_id is not None else None)
                )
            turns.append(Turn("assistant", text, tool_calls=calls))
        else:  # tool result
            turns.append(Turn("tool", text, call_id=message.tool_call_id, tool_name=message.name))
    return turns


def chat_inputs(messages: list[ChatMessage]) -> list[InputData]:
    """OpenAI messages as native input items; tool turns use the server's text tool protocol."""
    return native_inputs(chat_turns(messages))


def chat_parameters(body: ChatCompletionRequest) -> dict[str, Any]:
    parameters = given(
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stop,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
    )
    if body.logit_bias:
        parameters["logit_bias"] = body.logit_bias
    schema = structured_output(body.response_format)
    if schema is not None:
        parameters["json_schema"] = schema  # grammar-constrained where the binding can (llama.cpp)
        parameters["system_message"] = "Answer with one valid JSON object and nothing else."
    if isinstance(body.tool_choice, dict):
        function = body.tool_choice.get("function") or {}
        if not isinstance(function, dict) or not isinstance(function.get("name", ""), str):
            raise BadRequestError(
                'tool_choice must be "auto", "none", "required" or {"type": "function", "function": '
                '{"name": ...}}.',
                param="tool_choice",
            )
        parameters["tool_choice"] = function.get("name")
    elif body.tool_choice in ("auto", "none"):
        parameters["tool_choice"] = body.tool_choice
    return parameters


def size_parameters(size: str | None) -> dict[str, int]:
    if size in (None, "", "auto"):
        return {}
    width, _, height = str(size).partition("x")
    if not (width.isascii() and width.isdigit() and height.isascii() and height.isdigit()):
        raise BadRequestError("size must look like 512x512.", param="size")
    return {"width": int(width), "height": int(height)}


# ---------------------------------------------------------------- responses


def usage(metadata: dict[str, Any]) -> dict[str, Any]:
    found = metadata.get("usage") or {}
    prompt, completion = int(found.get("prompt_tokens", 0)), int(found.get("completion_tokens", 0))
    counts: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if "cached_tokens" in found:  # prompt tokens read from the binding's prompt cache
        counts["prompt_tokens_details"] = {"cached_tokens": int(found["cached_tokens"])}
    return counts


def finish_reason(metadata: dict[str, Any]) -> str:
    return FINISH_REASONS.get(metadata.get("finish_reason") or "stop", "stop")


sse = data_frame


def stream_error(event: Failed) -> bytes:
    """A failed generation as the one OpenAI stream error shape (chat and completions)."""
    return sse(
        {"error": {"message": event.message, "type": event.error_type, "param": None, "code": event.status}}
    )


def chat_completion(
    head: dict[str, Any], message: dict[str, Any], finish: str, counts: dict[str, Any]
) -> dict[str, Any]:
    return {
        **head,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": counts,
    }


def chat_chunk(head: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> bytes:
    return sse(
        {
            **head,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


def usage_chunk(head: dict[str, Any], obj: str, counts: dict[str, Any]) -> bytes:
    return sse({**head, "object": obj, "choices": [], "usage": counts})


def completion_choice(text: str, finish: str | None) -> dict[str, Any]:
    return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}


def image_data(outputs: list[OutputData], response_format: str | None, prompt: str) -> dict[str, Any]:
    data = []
    for output in outputs:
        if output.type != "image":
            continue
        if response_format == "url":
            data.append({"url": f"data:{output.mime_type};base64,{output.data}", "revised_prompt": prompt})
        else:
            data.append({"b64_json": output.data, "revised_prompt": prompt})
    return {"created": int(time.time()), "data": data}


async def speech_bytes(data: bytes, mime_type: str, response_format: str) -> tuple[bytes, str]:
    """A binding's speech in the asked ``response_format``: WAV as is or as raw ``pcm``, other
    formats encoded by the bundled ffmpeg (off the loop); audio already in that format as is;
    output that is not audio (a binding's manifest) as it is, with its own mime type."""
    found = audio_format(data)
    if found is None:
        return data, mime_type
    if response_format == found:
        return data, AUDIO_FORMATS.get(found, mime_type)
    if response_format == "pcm":
        wav = data if found == "wav" else (await encode_audio(data, "wav"))[0]
        return wav_to_pcm(wav), "audio/pcm"
    return await encode_audio(data, response_format)


def wav_to_pcm(data: bytes) -> bytes:
    """The raw frames of a WAV file (OpenAI's ``pcm`` speech format)."""
    with wave.open(io.BytesIO(data)) as reader:
        return reader.readframes(reader.getnframes())
