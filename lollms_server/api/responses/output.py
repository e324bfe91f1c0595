"""The Responses dialect, answers: the response object and its numbered SSE events.

:class:`ResponseBuilder` keeps the output items and numbers the events; :class:`Writer` turns the
model's text into items as it comes (a message, a forced call's arguments, or a message until a
call of the server's tool protocol starts). Whole answers are built by the same calls as
streams, so both carry the same object.
"""

from __future__ import annotations

import json
import time
from typing import Any

from lollms_server.api.responses.protocol import ResponsesRequest
from lollms_server.api.responses.tools import Plan, ToolName, new_id
from lollms_server.core.generation.tools import parse_tool_calls


def usage(found: dict[str, Any]) -> dict[str, Any]:
    """Native usage counts in Responses' shape (``cached_tokens``: prompt tokens read from the
    binding's prompt cache)."""
    prompt, completion = int(found.get("prompt_tokens", 0)), int(found.get("completion_tokens", 0))
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": min(int(found.get("cached_tokens", 0)), prompt),
            "cache_write_tokens": 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def sse(event: dict[str, Any]) -> bytes:
    """One event as OpenAI sends it: an ``event:`` line naming its type, then its data."""
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


class ResponseBuilder:
    """The response object of one request and its stream events, numbered from 0."""

    def __init__(self, body: ResponsesRequest, response_id: str, stored: bool) -> None:
        self.body = body
        self.id = response_id
        self.stored = stored
        self.created_at = int(time.time())
        self.status = "in_progress"
        self.output: list[dict[str, Any]] = []
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.incomplete: dict[str, Any] | None = None
        self.completed_at: int | None = None
        self.background = False
        self.sequence = 0

    def response(self) -> dict[str, Any]:
        body = self.body
        text_format = (body.text.format if body.text else None) or {"type": "text"}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "completed_at": self.completed_at,
            "background": self.background,
            "error": self.error,
            "incomplete_details": self.incomplete,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "model": body.model or "",
            "output": [dict(item) for item in self.output],
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": body.previous_response_id,
            "prompt_cache_key": body.prompt_cache_key,
            "reasoning": {
                "effort": body.reasoning.effort if body.reasoning else None,
                "summary": body.reasoning.summary if body.reasoning else None,
            },
            "store": self.stored,
            "temperature": body.temperature,
            "text": {"format": text_format},
            "tool_choice": body.tool_choice or "auto",
            "tools": body.tools or [],
            "top_p": body.top_p,
            "truncation": "disabled",
            "usage": self.usage,
            "user": body.user,
            "metadata": body.metadata or {},
        }

    def event(self, kind: str, **fields: Any) -> bytes:
        frame = sse({"type": kind, "sequence_number": self.sequence, **fields})
        self.sequence += 1
        return frame

    def start(self) -> list[bytes]:
        return [
            self.event("response.created", response=self.response()),
            self.event("response.in_progress", response=self.response()),
        ]

    # ---- an assistant message ----
    def open_message(self) -> list[bytes]:
        item = {
            "id": new_id("msg"),
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        self.output.append(item)
        index = len(self.output) - 1
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            self.event("response.output_item.added", output_index=index, item=dict(item, content=[])),
            self.event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=part,
            ),
        ]

    def text_delta(self, delta: str) -> list[bytes]:
        item = self.output[-1]
        item["_text"] = item.get("_text", "") + delta
        return [
            self.event(
                "response.output_text.delta",
                item_id=item["id"],
                output_index=len(self.output) - 1,
                content_index=0,
                delta=delta,
                logprobs=[],
            )
        ]

    def close_message(self) -> list[bytes]:
        item = self.output[-1]
        index = len(self.output) - 1
        text = item.pop("_text", "")
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        item["content"] = [part]
        item["status"] = "completed"
        return [
            self.event(
                "response.output_text.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                text=text,
                logprobs=[],
            ),
            self.event(
                "response.content_part.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=part,
            ),
            self.event("response.output_item.done", output_index=index, item=dict(item)),
        ]

    def message(self, text: str) -> list[bytes]:
        """A whole assistant message (a replayed or whole answer)."""
        frames = self.open_message()
        if text:
            frames += self.text_delta(text)
        return frames + self.close_message()

    # ---- a tool call ----
    def open_call(self, tool: ToolName) -> list[bytes]:
        call_id = new_id("call")
        if tool.kind == "custom":
            item: dict[str, Any] = {
                "id": new_id("ctc"),
                "type": "custom_tool_call",
                "status": "in_progress",
                "call_id": call_id,
                "name": tool.name,
                "input": "",
            }
        else:
            item = {
                "id": new_id("fc"),
                "type": "function_call",
                "status": "in_progress",
                "call_id": call_id,
                "name": tool.name,
                "arguments": "",
            }
        if tool.namespace:
            item["namespace"] = tool.namespace
        self.output.append(item)
        return [self.event("response.output_item.added", output_index=len(self.output) - 1, item=dict(item))]

    def call_delta(self, delta: str) -> list[bytes]:
        item = self.output[-1]
        index = len(self.output) - 1
        if item["type"] == "custom_tool_call":
            item["input"] += delta
            return [
                self.event(
                    "response.custom_tool_call_input.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=delta,
                )
            ]
        item["arguments"] += delta
        return [
            self.event(
                "response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=delta
            )
        ]

    def close_call(self, value: str | None = None) -> list[bytes]:
        """End the open call (``value``: its whole arguments or input, replacing the deltas)."""
        item = self.output[-1]
        index = len(self.output) - 1
        item["status"] = "completed"
        if item["type"] == "custom_tool_call":
            if value is not None:
                item["input"] = value
            done = self.event(
                "response.custom_tool_call_input.done",
                item_id=item["id"],
                output_index=index,
                input=item["input"],
            )
        else:
            if value is not None:
                item["arguments"] = value
            done = self.event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                name=item["name"],
                arguments=item["arguments"],
            )
        return [done, self.event("response.output_item.done", output_index=index, item=dict(item))]

    def call(self, tool: ToolName, arguments: Any) -> list[bytes]:
        """A whole tool call: a function's JSON arguments, a custom tool's raw ``input`` text."""
        if tool.kind == "custom":
            value = arguments.get("input", "") if isinstance(arguments, dict) else arguments
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        else:
            text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        return self.open_call(tool) + self.call_delta(text) + self.close_call()

    # ---- the end ----
    def finish(self, native_usage: dict[str, Any], finish_reason: str | None) -> list[bytes]:
        self.usage = usage(native_usage)
        self.completed_at = int(time.time())
        if finish_reason == "length":
            self.status = "incomplete"
            self.incomplete = {"reason": "max_output_tokens"}
            return [self.event("response.incomplete", response=self.response())]
        self.status = "completed"
        return [self.event("response.completed", response=self.response())]

    def fail(self, code: str, message: str, status: str = "failed") -> list[bytes]:
        self.status = status
        self.error = {"code": code, "message": message}
        for item in self.output:
            item.pop("_text", None)
            if item.get("status") == "in_progress":
                item["status"] = "incomplete"
        return [self.event("response.failed", response=self.response())]


def whole_answer(
    builder: ResponseBuilder, the_plan: Plan, text: str, metadata: dict[str, Any]
) -> list[bytes]:
    """The items and the end of a whole text answer (a generation's ``output[0]``): a message, a
    forced call, the call a ``required`` answer names (cut short: what it wrote, as a message),
    or an ``auto`` answer's text and protocol calls."""
    frames: list[bytes] = []
    if the_plan.mode == "required":
        try:
            chosen = json.loads(text)
            frames += builder.call(the_plan.tools.lookup(str(chosen["name"])), chosen.get("arguments", {}))
        except (ValueError, KeyError, TypeError, AttributeError):
            frames += builder.message(text)
    else:
        writer = Writer(builder, the_plan)
        frames += writer.push(text) + writer.end()
    return frames + builder.finish(metadata.get("usage") or {}, metadata.get("finish_reason"))


# ---------------------------------------------------------------- streamed output


class Writer:
    """Turns the model's text, as it comes, into output items of ``builder``: an assistant
    message (``text`` plans), one call whose arguments are the text (``forced``), or a message
    until a call of the tool protocol starts, then the calls it makes (``auto``)."""

    def __init__(self, builder: ResponseBuilder, the_plan: Plan) -> None:
        self.builder = builder
        self.plan = the_plan
        self.tool = the_plan.tools.lookup(the_plan.forced) if the_plan.forced else None
        self.opened = False
        self.watch = CallWatch() if the_plan.mode == "auto" else None

    def _open(self) -> list[bytes]:
        if self.opened:
            return []
        self.opened = True
        return self.builder.open_call(self.tool) if self.tool else self.builder.open_message()

    def _delta(self, text: str) -> list[bytes]:
        if not text:
            return []
        frames = self._open()
        return frames + (self.builder.call_delta(text) if self.tool else self.builder.text_delta(text))

    def push(self, text: str) -> list[bytes]:
        return self._delta(self.watch.push(text) if self.watch else text)

    def end(self) -> list[bytes]:
        calls: list[dict[str, Any]] = []
        frames: list[bytes] = []
        if self.watch is not None:
            rest, calls = self.watch.end()
            frames += self._delta(rest)
        if not calls or self.opened:
            frames += self._open()
            frames += self.builder.close_call() if self.tool else self.builder.close_message()
        for call in calls:
            frames += self.builder.call(self.plan.tools.lookup(call["name"]), call.get("arguments", {}))
        return frames


class CallWatch:
    """Holds back text that may be the start of a ``<tool_call>`` (the server's tool protocol);
    what cannot be is shown at once, and the calls are read from the whole answer at its end."""

    OPEN = "<tool_call>"

    def __init__(self) -> None:
        self.text = ""
        self.shown = 0
        self.calling = False

    def push(self, chunk: str) -> str:
        """The text that can be shown now."""
        self.text += chunk
        if self.calling:
            return ""
        start = max(self.shown, len(self.text) - len(chunk) - len(self.OPEN))
        found = self.text.find(self.OPEN, start)
        if found >= 0:
            self.calling = True
            end = found
        else:
            end = len(self.text)
            for size in range(min(len(self.OPEN) - 1, end - self.shown), 0, -1):
                if self.OPEN.startswith(self.text[end - size :]):
                    end -= size
                    break
        shown, self.shown = self.text[self.shown : end], end
        return shown

    def end(self) -> tuple[str, list[dict[str, Any]]]:
        """(the text still held back, the calls of the answer); with calls, nothing more is shown."""
        calls = [call for call in parse_tool_calls(self.text) if not call.get("error")]
        if calls:
            return "", calls
        rest, self.shown = self.text[self.shown :], len(self.text)
        return rest, []
