"""The ``/v1`` routes: each parses its OpenAI request, translates it (``translate``), runs it
through the native GenerationService (same keys, personalities, pools and bindings as
``/api/v1/generate``) and shapes the answer. Every route cancels its work when the client
leaves (``api.cancellation``)."""

from __future__ import annotations

import array
import base64
import json
import time
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import PlainTextResponse, Response

from lollms_server.api.deps import GenerateUser, GenerationDep, RequestIdDep
from lollms_server.api.kit import catalog, deliver
from lollms_server.api.kit.events import Event, Failed, Finished, TextDelta
from lollms_server.api.kit.native import given
from lollms_server.api.models import ERROR_RESPONSES
from lollms_server.api.openai_compat import translate
from lollms_server.api.openai_compat.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ImageGenerationRequest,
    SpeechRequest,
    image_extension_parameters,
)
from lollms_server.core.errors import BadRequestError
from lollms_server.core.generation import GenerationService
from lollms_server.core.security import Principal
from lollms_server.core.types import GenerateRequest, InputData

router = APIRouter(prefix="/v1", tags=["openai"], responses=ERROR_RESPONSES)
STREAMS: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {}, "text/event-stream": {}}}
}
"""Responses of the routes that stream with ``stream: true``."""


# ---------------------------------------------------------------- models


@router.get("/models")
async def list_models(principal: GenerateUser, generation: GenerationDep) -> dict[str, Any]:
    """Each instance the key may use (listed by name even when it cannot start), then its models."""
    data: list[dict[str, Any]] = []
    for listing in await catalog.listings(generation, principal):
        name, owner = listing.instance.name, listing.instance.card.type_name
        data.append({"id": name, "object": "model", "created": 0, "owned_by": owner})
        for model in listing.models or []:
            data.append({"id": f"{name}/{model['name']}", "object": "model", "created": 0, "owned_by": owner})
    return {"object": "list", "data": data}


# ---------------------------------------------------------------- chat


@router.post("/chat/completions", responses=STREAMS)
async def chat_completions(
    request: Request,
    body: ChatCompletionRequest,
    principal: GenerateUser,
    generation: GenerationDep,
    request_id: RequestIdDep,
) -> Any:
    instance, model = translate.split_model(body.model)
    native = translate.native(
        GenerateRequest,
        input_data=translate.chat_inputs(body.messages),
        binding_name=instance,
        model_name=model,
        personality=body.personality,
        parameters=translate.chat_parameters(body),
        stream=body.stream,
        priority=body.priority,
    )
    head = {"id": f"chatcmpl-{request_id}", "created": int(time.time()), "model": body.model or "default"}
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    if body.tools and body.tool_choice != "none":
        return await _chat_with_tools(request, body, native, principal, generation, head, include_usage)
    if not body.stream:
        answer = await deliver.answer(request, generation, native, principal, request_id)
        message = {"role": "assistant", "content": answer.text}
        return translate.chat_completion(
            head, message, translate.finish_reason(answer.metadata), translate.usage(answer.metadata)
        )

    def frames(events: AsyncGenerator[Event, None]) -> AsyncGenerator[bytes, None]:
        return _chat_stream(events, head, include_usage)

    return await deliver.stream(request, generation, native, principal, request_id, frames)


async def _chat_stream(
    events: AsyncGenerator[Event, None], head: dict[str, Any], include_usage: bool
) -> AsyncGenerator[bytes, None]:
    yield translate.chat_chunk(head, {"role": "assistant", "content": ""})
    async for event in events:
        if isinstance(event, TextDelta):
            yield translate.chat_chunk(head, {"content": event.text})
        elif isinstance(event, Finished):
            yield translate.chat_chunk(head, {}, translate.finish_reason(event.metadata))
            if include_usage:
                counts = translate.usage(event.metadata)
                yield translate.usage_chunk(head, "chat.completion.chunk", counts)
        elif isinstance(event, Failed):
            yield translate.stream_error(event)
    yield translate.DONE


async def _chat_with_tools(
    request: Request,
    body: ChatCompletionRequest,
    native: GenerateRequest,
    principal: Principal,
    generation: GenerationService,
    head: dict[str, Any],
    include_usage: bool,
) -> Any:
    """One model turn offering the client's tools; tool calls go back to the client."""
    tools = [tool for tool in body.tools or [] if tool.get("type") == "function" and tool.get("function")]
    turn = await deliver.tool_turn(request, generation, native, principal, tools)
    tool_calls = [
        {
            "id": call["id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call.get("arguments", {}))},
        }
        for call in turn.tool_calls
    ]
    message: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    counts = translate.usage(turn.metadata)
    finish = "tool_calls" if tool_calls else "stop"
    if not body.stream:
        return translate.chat_completion(head, message, finish, counts)

    delta: dict[str, Any] = {"role": "assistant", "content": message["content"]}
    if tool_calls:
        delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(tool_calls)]
    frames = [translate.chat_chunk(head, delta), translate.chat_chunk(head, {}, finish)]
    if include_usage:
        frames.append(translate.usage_chunk(head, "chat.completion.chunk", counts))
    return deliver.replay([*frames, translate.DONE])


# ---------------------------------------------------------------- completions


@router.post("/completions", responses=STREAMS)
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
    instance, model = translate.split_model(body.model)
    sampling = given(
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stop,
    )
    parameters = {"raw_prompt": True, **sampling}
    native = translate.native(
        GenerateRequest,
        input_data=[InputData(type="text", role="user_prompt", data=prompts[0])],
        binding_name=instance,
        model_name=model,
        parameters=parameters,
        stream=body.stream,
        priority=body.priority,
    )
    head = {
        "id": f"cmpl-{request_id}",
        "created": int(time.time()),
        "model": body.model,
        "object": "text_completion",
    }
    if not body.stream:
        answer = await deliver.answer(request, generation, native, principal, request_id)
        finish = translate.finish_reason(answer.metadata)
        return {
            **head,
            "choices": [translate.completion_choice(answer.text, finish)],
            "usage": translate.usage(answer.metadata),
        }
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def frames(source: AsyncGenerator[Event, None]) -> AsyncGenerator[bytes, None]:
        async for event in source:
            if isinstance(event, TextDelta):
                yield translate.sse({**head, "choices": [translate.completion_choice(event.text, None)]})
            elif isinstance(event, Finished):
                choice = translate.completion_choice("", translate.finish_reason(event.metadata))
                yield translate.sse({**head, "choices": [choice]})
                if include_usage:
                    yield translate.usage_chunk(head, "text_completion", translate.usage(event.metadata))
            elif isinstance(event, Failed):
                yield translate.stream_error(event)
        yield translate.DONE

    return await deliver.stream(request, generation, native, principal, request_id, frames)


# ---------------------------------------------------------------- embeddings


@router.post("/embeddings")
async def embeddings(
    request: Request, body: EmbeddingRequest, principal: GenerateUser, generation: GenerationDep
) -> Any:
    texts = [body.input] if isinstance(body.input, str) else body.input
    instance, model = translate.split_model(body.model)
    _, vectors = await deliver.embed(request, generation, principal, instance, model, texts)
    data = []
    for index, vector in enumerate(vectors):
        embedding: Any = vector
        if body.encoding_format == "base64":
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


@router.post("/images/generations")
async def images_generations(
    request: Request,
    body: ImageGenerationRequest,
    principal: GenerateUser,
    generation: GenerationDep,
    request_id: RequestIdDep,
) -> Any:
    instance, model = translate.split_model(body.model)
    native = translate.native(
        GenerateRequest,
        input_data=[InputData(type="text", role="user_prompt", data=body.prompt)],
        generation_type="tti",
        binding_name=instance,
        model_name=model,
        parameters={
            "num_images": body.n,
            **translate.size_parameters(body.size),
            **body.extension_parameters(),
        },
    )
    response = await deliver.whole(request, generation, native, principal, request_id)
    return translate.image_data(response.output, body.response_format, body.prompt)


@router.post("/images/edits")
async def images_edits(
    request: Request,
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
    seed: Annotated[int | None, Form(description="Extension.")] = None,
    negative_prompt: Annotated[str | None, Form(max_length=32_000, description="Extension.")] = None,
    num_inference_steps: Annotated[int | None, Form(ge=1, le=1000, description="Extension.")] = None,
    guidance_scale: Annotated[float | None, Form(ge=0, le=100, description="Extension.")] = None,
) -> Any:
    instance, model_name = translate.split_model(model)
    extension = image_extension_parameters(seed, negative_prompt, num_inference_steps, guidance_scale)
    inputs = [
        InputData(type="text", role="user_prompt", data=prompt),
        InputData(type="image", role="input_image", data=base64.b64encode(await image.read()).decode()),
    ]
    if mask is not None:
        inputs.append(
            InputData(type="image", role="mask_image", data=base64.b64encode(await mask.read()).decode())
        )
    native = translate.native(
        GenerateRequest,
        input_data=inputs,
        generation_type="i2i",
        binding_name=instance,
        model_name=model_name,
        parameters={"num_images": n, **translate.size_parameters(size), **extension},
    )
    response = await deliver.whole(request, generation, native, principal, request_id)
    return translate.image_data(response.output, response_format, prompt)


# ---------------------------------------------------------------- audio


@router.post("/audio/speech")
async def audio_speech(
    request: Request,
    body: SpeechRequest,
    principal: GenerateUser,
    generation: GenerationDep,
    request_id: RequestIdDep,
) -> Response:
    instance, model = translate.split_model(body.model)
    parameters: dict[str, Any] = {}
    if body.voice:
        parameters["voice"] = body.voice
    native = translate.native(
        GenerateRequest,
        input_data=[InputData(type="text", role="user_prompt", data=body.input)],
        generation_type="tts",
        binding_name=instance,
        model_name=model,
        parameters=parameters,
    )
    response = await deliver.whole(request, generation, native, principal, request_id)
    audio = next(output for output in response.output if output.type == "audio")
    data, media_type = await translate.speech_bytes(
        base64.b64decode(audio.data), audio.mime_type or "application/octet-stream", body.response_format
    )
    return Response(data, media_type=media_type)


@router.post("/audio/transcriptions")
async def audio_transcriptions(
    request: Request,
    principal: GenerateUser,
    generation: GenerationDep,
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
    instance, model_name = translate.split_model(model)
    parameters: dict[str, Any] = {"timestamps": response_format == "verbose_json"}
    if language:
        parameters["language"] = language
    data = await file.read()
    if not data:
        raise BadRequestError("file is empty.", param="file")
    native = translate.native(
        GenerateRequest,
        input_data=[InputData(type="audio", role="input_audio", data=base64.b64encode(data).decode())],
        generation_type="stt",
        binding_name=instance,
        model_name=model_name,
        parameters=parameters,
    )
    response = await deliver.whole(request, generation, native, principal, request_id)
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
