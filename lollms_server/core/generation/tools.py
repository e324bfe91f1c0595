"""The tool-calling loop: a text model calls the request's functions until it answers.

Bindings with native tool support (``supports_native_tools`` / ``chat_with_tools``, e.g.
llama.cpp's function-calling chat formats) get OpenAI-style tool definitions. Other text
bindings get the JSON protocol below in their system message: to call a function the model
answers with ``<tool_call>{"name": "module.function", "arguments": {...}}</tool_call>`` and
receives ``<tool_result name="module.function">...</tool_result>`` as the next user turn.
This module is the one place that writes and reads that protocol (the OpenAI API replays a
client's tool turns through :func:`tool_call_text` and :func:`tool_result_text`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from lollms_server.core.bindings import CancelToken, TextRequest, TextResult
from lollms_server.core.functions import FunctionManager
from lollms_server.core.generation.admission import Admission, TextJob
from lollms_server.core.types import StreamChunk

TOOL_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)


def tool_call_text(name: str, arguments: Any) -> str:
    """A call written in the text protocol (how a model, or a replayed history, calls)."""
    return (
        "<tool_call>"
        + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
        + "</tool_call>"
    )


def tool_result_text(name: str, value: Any, ok: bool = True) -> str:
    """A function's result written in the text protocol (the next user turn)."""
    status = "" if ok else ' error="true"'
    return f'<tool_result name="{name}"{status}>{_result_text(value)}</tool_result>'


def protocol_prompt(tools: list[dict[str, Any]]) -> str:
    """The system-message section that teaches a model the JSON tool protocol."""
    listing = "\n".join(json.dumps(tool["function"], ensure_ascii=False) for tool in tools)
    return (
        "You can call these functions:\n"
        f"{listing}\n"
        "To call one, answer with only: "
        '<tool_call>{"name": "<function name>", "arguments": {<arguments as JSON>}}</tool_call>\n'
        'The result comes back as <tool_result name="<function name>">...</tool_result>. '
        "When you have what you need, answer the user normally."
    )


def parse_tool_calls(text: str) -> list[dict[str, Any]]:
    """The calls in a model's answer (malformed ones become calls with an ``error``)."""
    calls: list[dict[str, Any]] = []
    for match in TOOL_CALL.finditer(text):
        try:
            data = json.loads(match.group(1))
        except json.JSONDecodeError:
            calls.append({"name": "", "arguments": {}, "error": "the call is not valid JSON"})
            continue
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            calls.append({"name": "", "arguments": {}, "error": "a call needs a 'name'"})
            continue
        calls.append({"name": data["name"], "arguments": data.get("arguments", {})})
    return calls


def _result_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


class ToolLoop:
    """Runs rounds of (model answer -> function calls -> results) within one admitted request."""

    def __init__(
        self,
        admission: Admission,
        job: TextJob,
        functions: FunctionManager,
        max_rounds: int,
        cancel: CancelToken,
        on_call: Callable[[StreamChunk], None] | None = None,
    ) -> None:
        self.admission = admission
        self.job = job
        self.functions = functions
        self.max_rounds = max_rounds
        self.cancel = cancel
        self.on_call = on_call or (lambda event: None)
        self.allowed = {spec.name for spec in job.tools}

    async def run(self) -> TextResult:
        admission = self.admission
        binding, model = admission.binding, admission.target.model
        base = self.job.request
        tools = [spec.tool() for spec in self.job.tools]
        native = binding.supports_native_tools(model)
        messages = [dict(message) for message in base.messages]
        if not native:
            messages = _with_system(messages, protocol_prompt(tools))
        made: list[dict[str, Any]] = []
        usage: dict[str, int] = {}
        max_rounds = self.max_rounds
        parameters = dict(base.parameters)
        for round_index in range(max_rounds + 1):
            request = TextRequest(messages=messages, parameters=parameters, prompt_format=base.prompt_format)
            if native:
                text, calls, round_usage = await binding.chat_with_tools(model, request, tools, self.cancel)
                finish = "stop"
            else:
                result = await binding.generate_text(model, request, self.cancel)
                text, calls, round_usage, finish = (
                    result.text,
                    parse_tool_calls(result.text),
                    result.usage,
                    result.finish_reason or "stop",
                )
            for key, value in (round_usage or {}).items():
                usage[key] = usage.get(key, 0) + int(value)
            parameters.pop("tool_choice", None)  # a forced first call is not forced again
            if not calls:
                return TextResult(
                    text=text,
                    finish_reason=finish,
                    usage=usage,
                    metadata={"function_calls": made, "tool_rounds": round_index},
                )
            if round_index == max_rounds:
                return TextResult(
                    text=text,
                    finish_reason="tool_calls_limit",
                    usage=usage,
                    metadata={"function_calls": made, "tool_rounds": round_index},
                )
            messages.append(_assistant_turn(text, calls, native))
            for call in calls:
                messages.append(await self._execute(call, round_index + 1, made, native))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _execute(
        self, call: dict[str, Any], round_number: int, made: list[dict[str, Any]], native: bool
    ) -> dict[str, Any]:
        name = call["name"]
        if call.get("error"):
            ok, value = False, call["error"]
        elif name not in self.allowed:
            ok, value = False, f"function '{name}' is not available in this request"
        else:
            ok, value = await self.functions.safe_call(name, call.get("arguments", {}))
        record = {
            "round": round_number,
            "name": name,
            "arguments": call.get("arguments", {}),
            "ok": ok,
            "result": value,
        }
        made.append(record)
        self.on_call(StreamChunk(type="function_call", content=record))
        if native:
            return {"role": "tool", "tool_call_id": call.get("id", name), "content": _result_text(value)}
        return {"role": "user", "content": tool_result_text(name, value, ok)}


async def single_turn(
    admission: Admission, base: TextRequest, tools: list[dict[str, Any]], cancel: CancelToken
) -> tuple[str, list[dict[str, Any]], dict[str, int]]:
    """One model turn offering ``tools``; the calls are returned, not executed (the caller runs them)."""
    binding, model = admission.binding, admission.target.model
    if binding.supports_native_tools(model):
        return await binding.chat_with_tools(model, base, tools, cancel)
    request = TextRequest(
        messages=_with_system(base.messages, protocol_prompt(tools)),
        parameters=base.parameters,
        prompt_format=base.prompt_format,
    )
    result = await binding.generate_text(model, request, cancel)
    calls = [call for call in parse_tool_calls(result.text) if not call.get("error")]
    for index, call in enumerate(calls):
        call["id"] = f"call_{index}_{call['name'].replace('.', '_')}"
    text = TOOL_CALL.sub("", result.text).strip() if calls else result.text
    return text, calls, result.usage


def _with_system(messages: list[dict[str, Any]], addition: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] == "system" and isinstance(messages[0]["content"], str):
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + addition}, *messages[1:]]
    return [{"role": "system", "content": addition}, *messages]


def _assistant_turn(text: str, calls: list[dict[str, Any]], native: bool) -> dict[str, Any]:
    if not native:
        return {"role": "assistant", "content": text}
    return {
        "role": "assistant",
        "content": text or None,
        "tool_calls": [
            {
                "id": call.get("id", call["name"]),
                "type": "function",
                "function": {"name": call["name"], "arguments": json.dumps(call.get("arguments", {}))},
            }
            for call in calls
        ],
    }
