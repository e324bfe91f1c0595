"""OpenAI-compatible API under ``/v1`` (DESIGN §4): the official ``openai`` SDK works unchanged.

``model`` selects ``<binding instance>`` or ``<binding instance>/<model>``. Requests are
translated into the native GenerateRequest and go through the same keys, personalities,
resource manager and bindings as ``/api/v1/generate``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import PlainTextResponse, Response

from lollms_server.api.deps import BindingsDep, ConfigDep, GenerateUser, GenerationDep, RequestIdDep
from lollms_server.api.models import ERROR_RESPONSES
from lollms_server.api.openai_models import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
    ImageGenerationRequest,
    SpeechRequest,
)
from lollms_server.api.sse import ClientDisconnected, EventStreamResponse, until_disconnected
from lollms_server.core.bindings import CancelToken
from lollms_server.core.errors import BadRequestError, LollmsError
from lollms_server.core.types import GenerateRequest, InputData, OutputData, StreamChunk

router = APIRouter(prefix="/v1", tags=["openai"], responses=ERROR_RESPONSES)
FINISH_REASONS = {"length": "length", "stop": "stop", "tool_calls": "tool_calls"}


def split_model(model: str | None) -> tuple[str | None, str | None]:
    """``instance`` or ``instance/model`` (the model part may itself contain slashes)."""
    if not model:
        return None, None
    instance, _, rest = model.partition("/")
    return instance, rest or None


async def _generate(
    request: Request, generation: Any, native: GenerateRequest, principal: Any, request_id: str
) -> Any:
    """The native answer, or None when the client left first (its generation is cancelled)."""
    cancel = CancelToken()
    try:
        return await until_disconnected(request, generation.generate(native, principal, request_id, cancel))
    except ClientDisconnected:
        return None
    finally:
        cancel.set()


# ---------------------------------------------------------------- models


@router.get("/models")
async def list_models(principal: GenerateUser, bindings: BindingsDep) -> dict[str, Any]:
    data: list[dict[str, Any]] = []
    for instance in bindings.instances.values():
        if not principal.can_use_binding(instance.name):
            continue
        data.append(
            {"id": instance.name, "object": "model", "created": 0, "owned_by": instance.card.type_name}
        )
        try:
            binding = await bindings.get(instance.name)
            models = await binding.list_available_models()
        except LollmsError:
            continue  # an instance that cannot start is still listed by name
        for model in models:
            data.append(
                {
                    "id": f"{instance.name}/{model['name']}",
                    "object": "model",
                    "created": 0,
                    "owned_by": instance.card.type_name,
                }
            )
    return {"object": "list", "data": data}


# ---------------------------------------------------------------- chat


def _content(message: ChatMessage, index: int) -> tuple[str, list[InputData]]:
    content = message.content
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    images: list[InputData] = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            url = str((part.get("image_url") or {}).get("url", ""))
            if not url.startswith("data:"):
                raise BadRequestError(
                    "Images must be sent inline as data: URLs.", param=f"messages[{index}].content"
                )
            mime = url[5:].split(";", 1)[0] or "image/png"
            images.append(
                InputData(type="image", role="input_image", data=url.split(",", 1)[-1], mime_type=mime)
            )
        else:
            raise BadRequestError(
                f"Unsupported content part '{str(kind)[:32]}'.", param=f"messages[{index}].content"
            )
    return "".join(texts), images


def chat_inputs(messages: list[ChatMessage]) -> list[InputData]:
    """OpenAI messages as native input items; tool turns use the server's text tool protocol."""
    last_user = max((i for i, message in enumerate(messages) if message.role == "user"), default=-1)
    tool_names: dict[str, str] = {}
    inputs: list[InputData] = []
    for index, message in enumerate(messages):
        text, images = _content(message, index)
        if message.role in ("system", "developer"):
            inputs.append(InputData(type="text", role="system_context", data=text))
        elif message.role == "user":
            inputs.append(
                InputData(type="text", role="user_prompt" if index == last_user else "user", data=text)
            )
            inputs.extend(images)
        elif message.role == "assistant":
            calls = []
            for call in message.tool_calls or []:
                function = call.get("function") or {}
                tool_names[str(call.get("id"))] = str(function.get("name", ""))
                try:
                    arguments = json.loads(function.get("arguments") or "{}")
                except json.JSONDecodeError:
                    arguments = {}
                calls.append(
                    "<tool_call>"
                    + json.dumps({"name": function.get("name"), "arguments": arguments})
                    + "</tool_call>"
                )
            inputs.append(InputData(type="text", role="assistant", data="\n".join([text, *calls]).strip()))
        else:  # tool result
            name = tool_names.get(str(message.tool_call_id), message.name or "")
            inputs.append(
                InputData(type="text", role="user", data=f'<tool_result name="{name}">{text}</tool_result>')
            )
    return inputs


def chat_parameters(body: ChatCompletionRequest) -> dict[str, Any]:
    parameters: dict[str, Any] = {}
    max_tokens = body.max_completion_tokens or body.max_tokens
    for key, value in (
        ("max_tokens", max_tokens),
        ("temperature", body.temperature),
        ("top_p", body.top_p),
        ("seed", body.seed),
        ("stop", body.stop),
        ("presence_penalty", body.presence_penalty),
        ("frequency_penalty", body.frequency_penalty),
    ):
        if value is not None:
            parameters[key] = value
    if body.response_format and body.response_format.get("type") in ("json_object", "json_schema"):
        parameters["system_message"] = "Answer with one valid JSON object and nothing else."
    if isinstance(body.tool_choice, dict):
        parameters["tool_choice"] = (body.tool_choice.get("function") or {}).get("name")
    elif body.tool_choice in ("auto", "none"):
        parameters["tool_choice"] = body.tool_choice
    return parameters


def _usage(metadata: dict[str, Any]) -> dict[str, int]:
    usage = metadata.get("usage") or {}
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data).encode("utf-8") + b"\n\n"


@router.post("/chat/completions")
async def chat_completions(
    request: Request,
    body: ChatCompletionRequest,
    principal: GenerateUser,
    generation: GenerationDep,
    request_id: RequestIdDep,
) -> Any:
    instance, model = split_model(body.model)
    native = GenerateRequest(
        input_data=chat_inputs(body.messages),
        binding_name=instance,
        model_name=model,
        personality=body.personality,
        parameters=chat_parameters(body),
        stream=body.stream,
    )
    completion_id = f"chatcmpl-{request_id}"
    created = int(time.time())
    head = {"id": completion_id, "created": created, "model": body.model}
    if body.tools and body.tool_choice != "none":
        return await _chat_with_tools(request, body, native, principal, generation, head)
    if not body.stream:
        response = await _generate(request, generation, native, principal, request_id)
        if response is None:
            return Response(status_code=499)
        output = response.output[0]
        return {
            **head,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": output.data},
                    "finish_reason": FINISH_REASONS.get(
                        output.metadata.get("finish_reason") or "stop", "stop"
                    ),
                }
            ],
            "usage": _usage(output.metadata),
        }
    stream = await generation.open_stream(native, principal, request_id)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return EventStreamResponse(_chat_stream(stream.events(), head, include_usage), on_close=stream.aclose)


async def _chat_stream(
    events: AsyncGenerator[StreamChunk, None], head: dict[str, Any], include_usage: bool
) -> AsyncGenerator[bytes, None]:
    chunk = {**head, "object": "chat.completion.chunk"}
    yield _sse(
        {
            **chunk,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        }
    )
    try:
        async for event in events:
            if event.type == "chunk":
                yield _sse(
                    {
                        **chunk,
                        "choices": [{"index": 0, "delta": {"content": event.content}, "finish_reason": None}],
                    }
                )
            elif event.type == "final":
                metadata = event.content[0]["metadata"]
                finish = FINISH_REASONS.get(metadata.get("finish_reason") or "stop", "stop")
                yield _sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
                if include_usage:
                    yield _sse({**chunk, "choices": [], "usage": _usage(metadata)})
            elif event.type == "error":
                yield _sse(
                    {
                        "error": {
                            "message": event.content,
                            "type": event.metadata.get("type"),
                            "param": None,
                            "code": event.metadata.get("status"),
                        }
                    }
                )
        yield b"data: [DONE]\n\n"
    finally:
        await events.aclose()


async def _chat_with_tools(
    request: Request,
    body: ChatCompletionRequest,
    native: GenerateRequest,
    principal: Any,
    generation: Any,
    head: dict[str, Any],
) -> Any:
    """One model turn offering the client's tools; tool calls go back to the client."""
    tools = [tool for tool in body.tools or [] if tool.get("type") == "function" and tool.get("function")]
    cancel = CancelToken()
    try:
        _, result, calls = await until_disconnected(
            request, generation.chat_turn(native, principal, tools, cancel)
        )
    except ClientDisconnected:
        return Response(status_code=499)
    finally:
        cancel.set()
    tool_calls = [
        {
            "id": call["id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call.get("arguments", {}))},
        }
        for call in calls
    ]
    message: dict[str, Any] = {"role": "assistant", "content": result.text or None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    usage = _usage({"usage": result.usage})
    finish = "tool_calls" if tool_calls else "stop"
    if not body.stream:
        return {
            **head,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage,
        }

    async def replay() -> AsyncGenerator[bytes, None]:
        chunk = {**head, "object": "chat.completion.chunk"}
        delta: dict[str, Any] = {"role": "assistant", "content": message["content"]}
        if tool_calls:
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(tool_calls)]
        yield _sse({**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        yield _sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if body.stream_options and body.stream_options.include_usage:
            yield _sse({**chunk, "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"

    async def nothing() -> None:
        return None

    return EventStreamResponse(replay(), on_close=nothing)


# ---------------------------------------------------------------- completions


@router.post("/completions")
async def completions(
    request: Request,
    body: CompletionRequest,
    principal: GenerateUser,
    generation: GenerationDep,
    request_id: RequestIdDep,
) -> Any:
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise BadRequestError("Send one prompt per request.", param="prompt")
    instance, model = split_model(body.model)
    parameters: dict[str, Any] = {"raw_prompt": True}
    for key, value in (
        ("max_tokens", body.max_tokens),
        ("temperature", body.temperature),
        ("top_p", body.top_p),
        ("seed", body.seed),
        ("stop", body.stop),
    ):
        if value is not None:
            parameters[key] = value
    native = GenerateRequest(
        input_data=[InputData(type="text", role="user_prompt", data=prompts[0])],
        binding_name=instance,
        model_name=model,
        parameters=parameters,
        stream=body.stream,
    )
    head = {
        "id": f"cmpl-{request_id}",
        "created": int(time.time()),
        "model": body.model,
        "object": "text_completion",
    }
    if not body.stream:
        response = await _generate(request, generation, native, principal, request_id)
        if response is None:
            return Response(status_code=499)
        output = response.output[0]
        finish = FINISH_REASONS.get(output.metadata.get("finish_reason") or "stop", "stop")
        return {
            **head,
            "choices": [{"text": output.data, "index": 0, "logprobs": None, "finish_reason": finish}],
            "usage": _usage(output.metadata),
        }
    stream = await generation.open_stream(native, principal, request_id)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def events() -> AsyncGenerator[bytes, None]:
        source = stream.events()
        try:
            async for event in source:
                if event.type == "chunk":
                    yield _sse(
                        {
                            **head,
                            "choices": [
                                {"text": event.content, "index": 0, "logprobs": None, "finish_reason": None}
                            ],
                        }
                    )
                elif event.type == "final":
                    metadata = event.content[0]["metadata"]
                    finish = FINISH_REASONS.get(metadata.get("finish_reason") or "stop", "stop")
                    yield _sse(
                        {
                            **head,
                            "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": finish}],
                        }
                    )
                    if include_usage:
                        yield _sse({**head, "choices": [], "usage": _usage(metadata)})
                elif event.type == "error":
                    yield _sse({"error": {"message": event.content, "type": event.metadata.get("type")}})
            yield b"data: [DONE]\n\n"
        finally:
            await source.aclose()

    return EventStreamResponse(events(), on_close=stream.aclose)


# ---------------------------------------------------------------- embeddings


@router.post("/embeddings")
async def embeddings(
    body: EmbeddingRequest, principal: GenerateUser, generation: GenerationDep
) -> dict[str, Any]:
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or len(texts) > 2048:
        raise BadRequestError("input must hold 1 to 2048 texts.", param="input")
    instance, model = split_model(body.model)
    _, vectors = await generation.embed(principal, instance, model, texts)
    data = []
    for index, vector in enumerate(vectors):
        embedding: Any = vector
        if body.encoding_format == "base64":
            import array

            embedding = base64.b64encode(array.array("f", vector).tobytes()).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(len(text.split()) for text in texts)
    return {
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# ---------------------------------------------------------------- images


def _size(size: str | None) -> dict[str, int]:
    if size in (None, "", "auto"):
        return {}
    width, _, height = str(size).partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise BadRequestError("size must look like 512x512.", param="size")
    return {"width": int(width), "height": int(height)}


def _image_data(outputs: list[OutputData], response_format: str | None, prompt: str) -> dict[str, Any]:
    data = []
    for output in outputs:
        if output.type != "image":
            continue
        if response_format == "url":
            data.append({"url": f"data:{output.mime_type};base64,{output.data}", "revised_prompt": prompt})
        else:
            data.append({"b64_json": output.data, "revised_prompt": prompt})
    return {"created": int(time.time()), "data": data}


@router.post("/images/generations")
async def images_generations(
    body: ImageGenerationRequest, principal: GenerateUser, generation: GenerationDep, request_id: RequestIdDep
) -> dict[str, Any]:
    instance, model = split_model(body.model)
    native = GenerateRequest(
        input_data=[InputData(type="text", role="user_prompt", data=body.prompt)],
        generation_type="tti",
        binding_name=instance,
        model_name=model,
        parameters={"num_images": body.n, **_size(body.size)},
    )
    response = await generation.generate(native, principal, request_id, CancelToken())
    return _image_data(response.output, body.response_format, body.prompt)


@router.post("/images/edits")
async def images_edits(
    principal: GenerateUser,
    generation: GenerationDep,
    request_id: RequestIdDep,
    image: Annotated[UploadFile, File(description="Image to edit (PNG, JPEG, WebP).")],
    prompt: Annotated[str, Form(min_length=1, max_length=32_000)],
    mask: Annotated[UploadFile | None, File(description="White where the image changes.")] = None,
    model: Annotated[str | None, Form(max_length=512)] = None,
    n: Annotated[int, Form(ge=1, le=10)] = 1,
    size: Annotated[str | None, Form(max_length=16)] = None,
    response_format: Annotated[str | None, Form(max_length=16)] = None,
) -> dict[str, Any]:
    instance, model_name = split_model(model)
    inputs = [
        InputData(type="text", role="user_prompt", data=prompt),
        InputData(type="image", role="input_image", data=base64.b64encode(await image.read()).decode()),
    ]
    if mask is not None:
        inputs.append(
            InputData(type="image", role="mask_image", data=base64.b64encode(await mask.read()).decode())
        )
    native = GenerateRequest(
        input_data=inputs,
        generation_type="i2i",
        binding_name=instance,
        model_name=model_name,
        parameters={"num_images": n, **_size(size)},
    )
    response = await generation.generate(native, principal, request_id, CancelToken())
    return _image_data(response.output, response_format, prompt)


# ---------------------------------------------------------------- audio


@router.post("/audio/speech")
async def audio_speech(
    body: SpeechRequest, principal: GenerateUser, generation: GenerationDep, request_id: RequestIdDep
) -> Response:
    if body.response_format not in ("wav", "pcm"):
        raise BadRequestError("response_format must be 'wav' or 'pcm'.", param="response_format")
    instance, model = split_model(body.model)
    parameters: dict[str, Any] = {}
    if body.voice:
        parameters["voice"] = body.voice
    native = GenerateRequest(
        input_data=[InputData(type="text", role="user_prompt", data=body.input)],
        generation_type="tts",
        binding_name=instance,
        model_name=model,
        parameters=parameters,
    )
    response = await generation.generate(native, principal, request_id, CancelToken())
    audio = next(output for output in response.output if output.type == "audio")
    data = base64.b64decode(audio.data)
    if body.response_format == "pcm":
        import io
        import wave

        with wave.open(io.BytesIO(data)) as reader:
            data = reader.readframes(reader.getnframes())
        return Response(data, media_type="audio/pcm")
    return Response(data, media_type="audio/wav")


@router.post("/audio/transcriptions")
async def audio_transcriptions(
    principal: GenerateUser,
    generation: GenerationDep,
    config: ConfigDep,
    request_id: RequestIdDep,
    file: Annotated[UploadFile, File(description="Audio: wav, mp3, ogg, webm or flac.")],
    model: Annotated[str, Form(max_length=512)],
    language: Annotated[str | None, Form(max_length=32)] = None,
    prompt: Annotated[str | None, Form(max_length=4096)] = None,
    response_format: Annotated[str, Form(max_length=16)] = "json",
    temperature: Annotated[float | None, Form(ge=0, le=1)] = None,
) -> Any:
    if response_format not in ("json", "text", "verbose_json"):
        raise BadRequestError("response_format must be json, text or verbose_json.", param="response_format")
    instance, model_name = split_model(model)
    parameters: dict[str, Any] = {"timestamps": response_format == "verbose_json"}
    if language:
        parameters["language"] = language
    data = await file.read()
    if not data:
        raise BadRequestError("file is empty.", param="file")
    audio = base64.b64encode(data).decode()
    native = GenerateRequest(
        input_data=[InputData(type="audio", role="input_audio", data=audio)],
        generation_type="stt",
        binding_name=instance,
        model_name=model_name,
        parameters=parameters,
    )
    response = await generation.generate(native, principal, request_id, CancelToken())
    output = response.output[0]
    text = str(output.data)
    if response_format == "text":
        return PlainTextResponse(text)
    if response_format == "verbose_json":
        metadata = output.metadata
        return {
            "task": "transcribe",
            "language": language or "",
            "duration": metadata.get("duration", 0.0),
            "text": text,
            "segments": [{"id": i, **segment} for i, segment in enumerate(metadata.get("segments", []))],
        }
    return {"text": text}
