"""Ollama binding: Ollama's native HTTP API over async httpx.

``/api/chat`` streams NDJSON (one JSON object per line, the last with ``done: true`` and the
token counts), ``/api/generate`` serves raw prompts, ``/api/tags`` lists models, ``/api/show``
gives details such as the context size, ``/api/embed`` computes embeddings. Unloading a model
sends ``keep_alive: 0``. Ollama's ``{"error": ...}`` answers become clear server errors.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from lollms_server.core.bindings import (
    BadRequestError,
    Binding,
    BindingContext,
    BindingError,
    CancelToken,
    NotFoundError,
    TextChunk,
    TextRequest,
    error_for_status,
    without_userinfo,
)

logger = logging.getLogger("lollms_bindings.ollama_binding")

BindingName = "OllamaBinding"
OPTION_NAMES = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "max_tokens": "num_predict",
    "seed": "seed",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "min_p": "min_p",
}


class OllamaBinding(Binding):
    def __init__(self, context: BindingContext) -> None:
        super().__init__(context)
        self.client = httpx.AsyncClient(
            base_url=str(self.settings["base_url"]).rstrip("/"),
            timeout=httpx.Timeout(self.settings["timeout"], connect=10.0),
        )
        self._models: dict[str, dict[str, Any]] = {}

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self.client.post(path, json=body)
        except httpx.TransportError as exc:
            where = without_userinfo(self.settings["base_url"])
            raise BindingError(f"Ollama at '{where}' is unreachable ({type(exc).__name__}).") from None
        self._check(response)
        data: dict[str, Any] = response.json()
        return data

    def _check(self, response: httpx.Response) -> None:
        if response.is_success:
            return
        try:
            message = str(response.json().get("error", response.reason_phrase))[:300]
        except ValueError:
            message = response.text[:300]
        text = f"Ollama answered {response.status_code}: {message}"
        raise error_for_status(response.status_code, text, third_party=True)

    # ---- models ------------------------------------------------------------------
    async def list_available_models(self) -> list[dict[str, Any]]:
        try:
            response = await self.client.get("/api/tags")
        except httpx.TransportError as exc:
            raise BindingError(f"Ollama is unreachable ({type(exc).__name__}).") from None
        self._check(response)
        return [
            {"name": item["name"], "size": item.get("size"), "details": item.get("details", {})}
            for item in response.json().get("models", [])
        ]

    async def load_model(self, model_name: str) -> None:
        if model_name not in self._models:  # Ollama loads on demand; check it exists, keep its details
            self._models[model_name] = await self._post("/api/show", {"model": model_name})

    async def unload_model(self, model_name: str) -> None:
        if self._models.pop(model_name, None) is not None:
            try:
                await self._post("/api/generate", {"model": model_name, "keep_alive": 0})
            except (BindingError, NotFoundError, BadRequestError):
                logger.info("Ollama did not unload %s", model_name)

    def loaded_models(self) -> list[str]:
        return list(self._models)

    async def get_model_info(self, model_name: str | None) -> dict[str, Any]:
        info: dict[str, Any] = {"binding": self.instance_name, "model_name": model_name}
        if model_name:
            details = self._models.get(model_name) or await self._post("/api/show", {"model": model_name})
            model_info = details.get("model_info", {})
            context = next(
                (value for key, value in model_info.items() if key.endswith(".context_length")), None
            )
            info.update(context_size=context, details=details.get("details", {}))
        return info

    async def health_check(self) -> dict[str, Any]:
        try:
            await self.list_available_models()
        except BindingError as exc:
            return {"status": "error", "message": exc.message}
        return {"status": "ok"}

    # ---- text --------------------------------------------------------------------
    def _options(self, request: TextRequest) -> dict[str, Any]:
        options = {
            OPTION_NAMES[key]: value for key, value in request.parameters.items() if key in OPTION_NAMES
        }
        if request.stop:
            options["stop"] = request.stop
        if self.settings["num_ctx"]:
            options["num_ctx"] = self.settings["num_ctx"]
        return options

    async def stream_text(
        self, model_name: str, request: TextRequest, cancel: CancelToken
    ) -> AsyncGenerator[TextChunk, None]:
        common = {
            "model": model_name,
            "stream": True,
            "options": self._options(request),
            "keep_alive": self.settings["keep_alive"],
        }
        if request.prompt is not None:
            path, body, field = "/api/generate", {**common, "prompt": request.prompt, "raw": True}, "response"
        else:
            path, body, field = "/api/chat", {**common, "messages": _messages(request.messages)}, "message"
        try:
            async with self.client.stream("POST", path, json=body) as response:
                if not response.is_success:
                    await response.aread()
                    self._check(response)
                async for line in response.aiter_lines():
                    if cancel.is_set():
                        return
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if "error" in event:
                        raise BindingError(f"Ollama failed: {str(event['error'])[:300]}")
                    text = (
                        event.get("response")
                        if field == "response"
                        else (event.get("message") or {}).get("content")
                    )
                    if event.get("done"):
                        usage = {
                            "prompt_tokens": int(event.get("prompt_eval_count", 0)),
                            "completion_tokens": int(event.get("eval_count", 0)),
                        }
                        yield TextChunk(text or "", event.get("done_reason") or "stop", usage)
                        return
                    if text:
                        yield TextChunk(text)
        except httpx.TransportError as exc:
            raise BindingError(f"Ollama connection failed ({type(exc).__name__}).") from None
        raise BindingError("Ollama ended the stream without a final message.")

    def supports_native_tools(self, model_name: str) -> bool:
        return True

    async def chat_with_tools(
        self, model_name: str, request: TextRequest, tools: list[dict[str, Any]], cancel: CancelToken
    ) -> tuple[str, list[dict[str, Any]], dict[str, int]]:
        data = await self._post(
            "/api/chat",
            {
                "model": model_name,
                "messages": _messages(request.messages),
                "tools": tools,
                "stream": False,
                "options": self._options(request),
                "keep_alive": self.settings["keep_alive"],
            },
        )
        message = data.get("message") or {}
        calls = [
            {
                "id": f"call_{index}",
                "name": call["function"]["name"],
                "arguments": call["function"].get("arguments") or {},
            }
            for index, call in enumerate(message.get("tool_calls") or [])
        ]
        usage = {
            "prompt_tokens": int(data.get("prompt_eval_count", 0)),
            "completion_tokens": int(data.get("eval_count", 0)),
        }
        return message.get("content") or "", calls, usage

    async def embed(self, model_name: str, texts: list[str]) -> list[list[float]]:
        data = await self._post(
            "/api/embed", {"model": model_name, "input": texts, "keep_alive": self.settings["keep_alive"]}
        )
        embeddings: list[list[float]] = data["embeddings"]
        return embeddings

    async def close(self) -> None:
        await self.client.aclose()


def _messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-style messages to Ollama's: text content plus base64 ``images``; tool calls as objects."""
    converted = []
    for message in messages:
        content = message.get("content")
        item: dict[str, Any] = {"role": message["role"]}
        if isinstance(content, list):
            item["content"] = "".join(part.get("text", "") for part in content if part.get("type") == "text")
            images = [
                str(part["image_url"]["url"]).split(",", 1)[-1]
                for part in content
                if part.get("type") == "image_url"
            ]
            if images:
                item["images"] = images
        else:
            item["content"] = content or ""
        if message.get("tool_calls"):
            item["tool_calls"] = [
                {
                    "function": {
                        "name": call["function"]["name"],
                        "arguments": json.loads(call["function"].get("arguments") or "{}"),
                    }
                }
                for call in message["tool_calls"]
            ]
        converted.append(item)
    return converted
