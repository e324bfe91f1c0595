"""OpenAI-compatible remote binding over async httpx (no thread, no local model).

Retries 429/5xx answers with exponential backoff (honouring Retry-After) before any output has
been produced; a remote's error message is passed on with the remote's status class (4xx stays
a client error, 5xx becomes a binding error). Streams stop when the client leaves: closing the
generator closes the remote response.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from lollms_server.core.bindings import (
    BadRequestError,
    Binding,
    BindingContext,
    BindingError,
    CancelToken,
    MediaOutput,
    MediaRequest,
    NotFoundError,
    Progress,
    TextChunk,
    TextRequest,
    error_for_status,
    without_userinfo,
)

logger = logging.getLogger("lollms_bindings.openai_binding")

BindingName = "OpenAIBinding"
RETRY_STATUSES = {429, 500, 502, 503, 504}
CHAT_KEYS = ("max_tokens", "temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")


class RemoteError(Exception):
    pass


class OpenAIBinding(Binding):
    resident_models = False  # the models live in the remote server

    def __init__(self, context: BindingContext) -> None:
        super().__init__(context)
        settings = self.settings
        key = settings["api_key"] or (
            os.environ.get(settings["api_key_env"]) if settings["api_key_env"] else None
        )
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.base_url = str(settings["base_url"]).rstrip("/")
        self.client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(settings["timeout"], connect=10.0)
        )
        self._models: set[str] = set()

    # ---- plumbing ------------------------------------------------------------------
    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call with retries on 429/5xx; remote errors become clear server errors."""
        delay = 0.5
        for attempt in range(self.settings["max_retries"] + 1):
            try:
                response = await self.client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.settings["max_retries"]:
                    raise BindingError(
                        f"The remote server of '{self.instance_name}' is unreachable ({type(exc).__name__})."
                    ) from None
            else:
                if response.status_code not in RETRY_STATUSES or attempt == self.settings["max_retries"]:
                    self._raise_for_status(response)
                    return response
                delay = _retry_after(response, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_for_status(self, response: httpx.Response) -> None:
        if response.is_success:
            return
        message = _remote_message(response)
        text = f"Remote server of '{self.instance_name}' answered {response.status_code}: {message}"
        raise error_for_status(response.status_code, text, third_party=True)

    # ---- models ------------------------------------------------------------------
    async def list_available_models(self) -> list[dict[str, Any]]:
        response = await self._request("GET", "/models")
        return [
            {"name": item["id"], "owned_by": item.get("owned_by")} for item in response.json().get("data", [])
        ]

    async def load_model(self, model_name: str) -> None:
        self._models.add(model_name)  # remote: nothing to load; the remote reports unknown models

    async def unload_model(self, model_name: str) -> None:
        self._models.discard(model_name)

    def loaded_models(self) -> list[str]:
        return sorted(self._models)

    async def get_model_info(self, model_name: str | None) -> dict[str, Any]:
        return {
            "binding": self.instance_name,
            "model_name": model_name,
            "remote": without_userinfo(self.base_url),
        }

    async def health_check(self) -> dict[str, Any]:
        try:
            await self._request("GET", "/models")
        except (BindingError, BadRequestError, NotFoundError) as exc:
            return {"status": "error", "message": exc.message}
        return {"status": "ok"}

    # ---- text --------------------------------------------------------------------
    def _chat_body(self, model_name: str, request: TextRequest) -> dict[str, Any]:
        parameters = request.parameters
        body: dict[str, Any] = {"model": model_name, "messages": request.messages}
        body.update({key: parameters[key] for key in CHAT_KEYS if key in parameters})
        if request.stop:
            body["stop"] = request.stop
        return body

    async def stream_text(
        self, model_name: str, request: TextRequest, cancel: CancelToken
    ) -> AsyncGenerator[TextChunk, None]:
        if request.prompt is not None:
            body = {
                "model": model_name,
                "prompt": request.prompt,
                "stream": True,
                **{key: request.parameters[key] for key in CHAT_KEYS if key in request.parameters},
            }
            if request.stop:
                body["stop"] = request.stop
            path = "/completions"
        else:
            body = {
                **self._chat_body(model_name, request),
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            path = "/chat/completions"
        finish: str | None = None
        usage: dict[str, int] = {}
        async with self.client.stream("POST", path, json=body) as response:
            if not response.is_success:
                await response.aread()
                self._raise_for_status(response)
            async for line in response.aiter_lines():
                if cancel.is_set():
                    return
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    raise BindingError(
                        f"Remote server of '{self.instance_name}' failed: "
                        f"{str(event['error'].get('message', 'unknown error'))[:300]}"
                    )
                if event.get("usage"):
                    usage = {
                        key: int(value) for key, value in event["usage"].items() if isinstance(value, int)
                    }
                for choice in event.get("choices") or []:
                    text = (
                        choice.get("text")
                        if path == "/completions"
                        else (choice.get("delta") or {}).get("content")
                    )
                    if text:
                        yield TextChunk(text)
                    finish = choice.get("finish_reason") or finish
        yield TextChunk("", finish or "stop", usage)

    def supports_native_tools(self, model_name: str) -> bool:
        return True

    async def chat_with_tools(
        self, model_name: str, request: TextRequest, tools: list[dict[str, Any]], cancel: CancelToken
    ) -> tuple[str, list[dict[str, Any]], dict[str, int]]:
        body = {**self._chat_body(model_name, request), "tools": tools}
        choice = request.parameters.get("tool_choice")
        if isinstance(choice, str) and choice not in ("auto", "none"):
            body["tool_choice"] = {"type": "function", "function": {"name": choice}}
        elif choice:
            body["tool_choice"] = choice
        data = (await self._request("POST", "/chat/completions", json=body)).json()
        message = data["choices"][0]["message"]
        calls = []
        for call in message.get("tool_calls") or []:
            try:
                arguments = json.loads(call["function"].get("arguments") or "{}")
            except json.JSONDecodeError:
                arguments = {}
            calls.append({"id": call.get("id"), "name": call["function"]["name"], "arguments": arguments})
        return message.get("content") or "", calls, dict(data.get("usage") or {})

    async def embed(self, model_name: str, texts: list[str]) -> list[list[float]]:
        data = (
            await self._request(
                "POST", "/embeddings", json={"model": model_name, "input": texts, "encoding_format": "float"}
            )
        ).json()
        return [item["embedding"] for item in sorted(data["data"], key=lambda item: item["index"])]

    # ---- media ----------------------------------------------------------------------
    def _size(self, parameters: dict[str, Any]) -> dict[str, Any]:
        if "width" in parameters and "height" in parameters:
            return {"size": f"{parameters['width']}x{parameters['height']}"}
        return {}

    async def generate_image(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        body = {
            "model": model_name,
            "prompt": request.prompt,
            "n": int(request.parameters.get("num_images", 1)),
            "response_format": "b64_json",
            **self._size(request.parameters),
        }
        data = (await self._request("POST", "/images/generations", json=body)).json()
        return self._images(data, request)

    async def edit_image(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        files: dict[str, Any] = {"image": ("image.png", request.images[0], "image/png")}
        if request.mask is not None:
            files["mask"] = ("mask.png", request.mask, "image/png")
        fields = {
            "model": model_name,
            "prompt": request.prompt,
            "response_format": "b64_json",
            "n": str(request.parameters.get("num_images", 1)),
            **self._size(request.parameters),
        }
        data = (await self._request("POST", "/images/edits", data=fields, files=files)).json()
        return self._images(data, request)

    @staticmethod
    def _images(data: dict[str, Any], request: MediaRequest) -> list[MediaOutput]:
        outputs = []
        for item in data.get("data", []):
            if item.get("b64_json"):
                raw = base64.b64decode(item["b64_json"])
            elif str(item.get("url", "")).startswith("data:"):
                raw = base64.b64decode(item["url"].split(",", 1)[1])
            else:
                continue
            mime = "image/jpeg" if raw[:3] == b"\xff\xd8\xff" else "image/png"
            outputs.append(
                MediaOutput(
                    "image",
                    raw,
                    mime,
                    {"prompt": request.prompt, "revised_prompt": item.get("revised_prompt")},
                )
            )
        return outputs

    async def synthesize_speech(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        body = {
            "model": model_name,
            "input": request.prompt,
            "response_format": "wav",
            "voice": str(request.parameters.get("voice", "alloy")),
        }
        response = await self._request("POST", "/audio/speech", json=body)
        return [MediaOutput("audio", response.content, "audio/wav", {"text": request.prompt})]

    async def transcribe(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        assert request.audio is not None
        extension = request.audio_format or "wav"
        files = {"file": (f"audio.{extension}", request.audio, f"audio/{extension}")}
        fields = {"model": model_name, "response_format": "json"}
        if request.parameters.get("language"):
            fields["language"] = str(request.parameters["language"])
        data = (await self._request("POST", "/audio/transcriptions", data=fields, files=files)).json()
        return [
            MediaOutput(
                "text", str(data.get("text", "")), "text/plain", {"input_format": request.audio_format}
            )
        ]

    async def close(self) -> None:
        await self.client.aclose()


def _retry_after(response: httpx.Response, fallback: float) -> float:
    try:
        return min(float(response.headers.get("retry-after", fallback)), 30.0)
    except ValueError:
        return fallback


def _remote_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", ""))[:300]
    if isinstance(error, str):
        return error[:300]
    detail = body.get("detail") if isinstance(body, dict) else None
    return str(detail)[:300] if detail else response.reason_phrase
