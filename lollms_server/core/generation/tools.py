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
from collections.abc import Callable, Iterator
from typing import Any

from lollms_server.core.bindings import CancelToken, TextRequest, TextResult
from lollms_server.core.functions import FunctionManager
from lollms_server.core.generation.admission import Admission, TextJob
from lollms_server.core.types import StreamChunk

MAX_TOOL_CALLS = 32  # calls read from one answer; later ones are ignored
MAX_SCAN_CHARS = 1 << 20  # characters of an answer searched for calls (and stripped of them)
MAX_RESULT_CHARS = 64 * 1024  # a function result longer than this is cut before the model reads it
# A call is ``<tool_call>`` + whitespace + a JSON object ``{...}`` + whitespace + ``</tool_call>``,
# the object ending at the first "}" that only whitespace separates from a closing tag (what the
# former regex ``<tool_call>\s*(\{.*?\})\s*</tool_call>`` matched, which took quadratic time on
# many unclosed ``<tool_call>{``). Both patterns are searched forward only, so a scan is linear.
_OPEN = re.compile(r"<tool_call>\s*\{")
_CLOSE = re.compile(r"\}\s*</tool_call>")


def tool_call_text(name: str, arguments: Any) -> str:
    """A call written in the text protocol (how a model, or a replayed history, calls)."""
    return (
        "<tool_call>"
        + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
        + "</tool_call>"
    )


def tool_result_text(name: str, value: Any, ok: bool = True, limit: int | None = None) -> str:
    """A function's result written in the text protocol (the next user turn).

    ``limit`` cuts a longer result text (the tool loop passes :data:`MAX_RESULT_CHARS`).
    """
    status = "" if ok else ' error="true"'
    return f'<tool_result name="{name}"{status}>{_result_text(value, limit)}</tool_result>'


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


def _call_spans(text: str, limit: int) -> Iterator[tuple[int, int, int, int]]:
    """(call start, call end, JSON start, JSON end) of the first ``limit`` calls, left to right.

    Linear in ``len(text)`` (at most :data:`MAX_SCAN_CHARS` of it): every search starts where the
    previous one of the same pattern stopped, and a failed search ends the scan.
    """
    end = min(len(text), MAX_SCAN_CHARS)
    position = found = 0
    while found < limit:
        opening = _OPEN.search(text, position, end)
        if opening is None:
            return
        brace = opening.end() - 1
        close = _CLOSE.search(text, brace + 1, end)
        if close is None:  # no call can end after this point: the scan is over
            return
        yield opening.start(), close.end(), brace, close.start() + 1
        found += 1
        position = close.end()


def parse_tool_calls(text: str) -> list[dict[str, Any]]:
    """The calls in a model's answer (malformed ones become calls with an ``error``).

    At most :data:`MAX_TOOL_CALLS` calls are read, from the first :data:`MAX_SCAN_CHARS` characters.
    """
    calls: list[dict[str, Any]] = []
    for _, _, start, stop in _call_spans(text, MAX_TOOL_CALLS):
        try:
            data = json.loads(text[start:stop])
        except (ValueError, RecursionError):  # JSONDecodeError, or an absurdly deep nesting
            calls.append({"name": "", "arguments": {}, "error": "the call is not valid JSON"})
            continue
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            calls.append({"name": "", "arguments": {}, "error": "a call needs a 'name'"})
            continue
        calls.append({"name": data["name"], "arguments": data.get("arguments", {})})
    return calls


def strip_tool_calls(text: str) -> str:
    """``text`` without its calls (all those in the first :data:`MAX_SCAN_CHARS` characters)."""
    pieces: list[str] = []
    kept = 0
    for start, stop, _, _ in _call_spans(text, len(text)):
        pieces.append(text[kept:start])
        kept = stop
    pieces.append(text[kept:])
    return "".join(pieces)


def _json_safe(value: Any) -> tuple[bool, Any]:
    """(True, value) for a result JSON can carry, with non-JSON objects (dates...) as their ``str``;
    (False, message) for one it cannot (a >4300-digit int, a cycle...). Never raises."""
    if isinstance(value, str):
        return True, value
    try:
        json.dumps(value, ensure_ascii=False)
        return True, value
    except Exception:  # noqa: BLE001 - not plain JSON: try the str() fallback below
        pass
    try:
        return True, json.loads(json.dumps(value, ensure_ascii=False, default=str))
    except Exception as exc:  # noqa: BLE001 - any failure becomes the message the model reads
        return False, f"the result ({type(value).__name__}) cannot be written as JSON ({type(exc).__name__})"


def _result_text(value: Any, limit: int | None = None) -> str:
    """A result as text for the model: JSON, or ``str`` for a string; never raises.

    A text longer than ``limit`` characters is cut, with a note saying so.
    """
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except Exception as exc:  # noqa: BLE001 - huge ints, cycles, bad keys, a failing __str__
            text = f"[the result ({type(value).__name__}) cannot be written as text: {type(exc).__name__}]"
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"\n[result cut: {len(text)} characters, only the first {limit} are shown]"
    return text


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
            if ok:  # the result goes into the response as JSON: one that cannot be is an error
                ok, value = _json_safe(value)
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
            content = _result_text(value, MAX_RESULT_CHARS)
            return {"role": "tool", "tool_call_id": call.get("id", name), "content": content}
        return {"role": "user", "content": tool_result_text(name, value, ok, MAX_RESULT_CHARS)}


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
    text = strip_tool_calls(result.text).strip() if calls else result.text
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
