"""Anthropic <-> native translation: a Messages body becomes the kit's chat turns, the native
parameters and the client's tools; native answers and events become Anthropic's message and
its stream events; errors take Anthropic's shape and statuses.

System text. ``system`` (a string or text blocks) and ``role: "system"`` messages before the
first user or assistant message are the system message. A system message later in the list
(Claude Code sends one after the user's turn) is read in place as a user turn wrapped in
``<system-reminder>`` (the form Claude Code gives its own reminders), not moved to the front:
moving it would change the start of the prompt on every turn and defeat the prefix cache.
Claude Code's ``x-anthropic-billing-header: ...`` system block, which changes on every
request, is dropped for the same reason (it carries no instruction).

Usage. Anthropic counts ``input_tokens`` *besides* ``cache_read_input_tokens`` (the total prompt
is their sum): ``input_tokens`` = prompt tokens not read from the binding's prefix cache,
``cache_read_input_tokens`` = ``cached_tokens``, ``cache_creation_input_tokens`` = 0.
"""

from __future__ import annotations

import json
from typing import Any

from lollms_server.api.anthropic.protocol import CountTokensRequest, Message, MessagesRequest, Tool
from lollms_server.api.kit.chat import Image, ToolCall, Turn
from lollms_server.api.kit.native import given
from lollms_server.core.errors import BadRequestError
from lollms_server.utils.nesting import MAX_TOOL_ARGUMENT_DEPTH, nests_deeper

BILLING_HEADER = "x-anthropic-billing-header:"
IGNORED_BLOCKS = {"thinking", "redacted_thinking", "server_tool_use", "web_search_tool_result"}
"""Blocks read and dropped: earlier thinking (local models do not check signatures) and the
results of Anthropic's own server tools."""
STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use"}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
OVERLOADED = 529
"""Anthropic's status for a busy service. Our 503 (a full pool queue, a queue wait that timed
out, a model still downloading: each with ``Retry-After``) is answered as 529
``overloaded_error``, which Claude Code retries with backoff (up to 10 attempts)."""


# ---------------------------------------------------------------- requests


def _text_of(blocks: str | list[dict[str, Any]], param: str) -> str:
    """The text of a string or of text blocks (other blocks are a 400)."""
    if isinstance(blocks, str):
        return blocks
    texts = []
    for index, block in enumerate(blocks):
        if block.get("type") != "text":
            raise BadRequestError(f"{param}[{index}] must be a text block.", param=f"{param}[{index}]")
        texts.append(str(block.get("text", "")))
    return "\n".join(texts)


def system_text(system: str | list[dict[str, Any]] | None) -> str:
    """The top-level ``system``, without Claude Code's per-request billing header block."""
    if system is None:
        return ""
    if isinstance(system, str):
        return "" if system.startswith(BILLING_HEADER) else system
    kept = [block for block in system if not str(block.get("text", "")).startswith(BILLING_HEADER)]
    return _text_of(kept, "system")


def _image(block: dict[str, Any], param: str) -> Image:
    source = block.get("source")
    if not isinstance(source, dict) or source.get("type") != "base64" or not source.get("data"):
        raise BadRequestError("Images must be sent inline (source.type 'base64').", param=param)
    return Image(str(source["data"]), str(source.get("media_type") or "image/png"))


def _tool_result(block: dict[str, Any], param: str) -> tuple[Turn, list[Image]]:
    """A ``tool_result`` block as a tool turn, and the images its content carries."""
    content = block.get("content")
    texts: list[str] = []
    images: list[Image] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for index, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(str(part.get("text", "")))
            elif kind == "image":
                images.append(_image(part, f"{param}.content[{index}]"))
            else:
                raise BadRequestError(f"Unsupported tool_result content '{str(kind)[:32]}'.", param=param)
    elif content is not None:
        raise BadRequestError("tool_result content must be a string or blocks.", param=param)
    call_id = block.get("tool_use_id")
    turn = Turn(
        "tool",
        "\n".join(texts),
        call_id=str(call_id) if call_id is not None else None,
        ok=not block.get("is_error"),
    )
    return turn, images


def _message_turns(message: Message, index: int) -> list[Turn]:
    """One user or assistant message as turns: a user's tool results become tool turns, in order,
    around the user's own text and images."""
    param = f"messages[{index}].content"
    if isinstance(message.content, str):
        return [Turn(message.role, message.content)]  # type: ignore[arg-type]
    turns: list[Turn] = []
    texts: list[str] = []
    images: list[Image] = []
    calls: list[ToolCall] = []

    def flush() -> None:
        if texts or images:
            turns.append(Turn("user", "\n".join(texts), images=list(images)))
            texts.clear()
            images.clear()

    for number, block in enumerate(message.content):
        kind = block.get("type")
        where = f"{param}[{number}]"
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "image" and message.role == "user":
            images.append(_image(block, where))
        elif kind == "tool_use" and message.role == "assistant":
            if not isinstance(block.get("name"), str) or not block["name"]:
                raise BadRequestError("A tool_use block needs a 'name'.", param=where)
            if nests_deeper(block.get("input"), MAX_TOOL_ARGUMENT_DEPTH):
                raise BadRequestError(
                    f"A tool_use input nests more than {MAX_TOOL_ARGUMENT_DEPTH} levels deep.", param=where
                )
            call_id = block.get("id")
            calls.append(
                ToolCall(
                    block["name"], block.get("input") or {}, str(call_id) if call_id is not None else None
                )
            )
        elif kind == "tool_result" and message.role == "user":
            flush()
            turn, carried = _tool_result(block, where)
            turns.append(turn)
            images.extend(carried)  # a result's images join the user's next turn
        elif kind in IGNORED_BLOCKS:
            continue
        else:
            raise BadRequestError(
                f"Unsupported content block '{str(kind)[:32]}' in a {message.role} message.", param=where
            )
    if message.role == "assistant":
        return [Turn("assistant", "\n".join(texts), tool_calls=calls)]
    flush()
    return turns


def chat_turns(body: CountTokensRequest) -> list[Turn]:
    """The request's system text and messages as the kit's chat turns."""
    turns: list[Turn] = []
    system = system_text(body.system)
    if system:
        turns.append(Turn("system", system))
    leading = True
    for index, message in enumerate(body.messages):
        if message.role == "system":
            text = _text_of(message.content, f"messages[{index}].content")
            if leading:
                turns.append(Turn("system", text))
            else:  # in place, as the user's: see the module docstring
                turns.append(Turn("user", f"<system-reminder>\n{text}\n</system-reminder>"))
            continue
        leading = False
        turns.extend(_message_turns(message, index))
    if not any(turn.role == "user" for turn in turns):
        raise BadRequestError("messages must hold a user message.", param="messages")
    return turns


def offered_tools(tools: list[Tool] | None) -> list[dict[str, Any]]:
    """The client's tools in the function shape the core offers a model (server tools such as
    ``web_search_...`` are ignored: this server does not run them)."""
    offered = []
    for tool in tools or []:
        if tool.type not in (None, "custom"):
            continue
        schema = tool.input_schema if tool.input_schema is not None else {"type": "object"}
        function = {"name": tool.name, "description": tool.description or "", "parameters": schema}
        offered.append({"type": "function", "function": function})
    return offered


def tool_choice(body: CountTokensRequest, tools: list[dict[str, Any]]) -> tuple[str | None, bool]:
    """(the native ``tool_choice``: "auto", "none" or the one tool's name; whether one call at
    most). ``any`` forces the only tool when there is one (with several it stays "auto": the
    engines force one named tool, not one of many)."""
    choice = body.tool_choice or {"type": "auto"}
    kind = choice.get("type")
    single = bool(choice.get("disable_parallel_tool_use"))
    names = [tool["function"]["name"] for tool in tools]
    if kind in ("auto", "none"):
        return str(kind), single
    if kind == "any":
        return (names[0] if len(names) == 1 else "auto"), single
    if kind == "tool":
        name = choice.get("name")
        if name not in names:
            raise BadRequestError(
                f"tool_choice names '{str(name)[:64]}', which is not in tools.", param="tool_choice"
            )
        return str(name), single
    raise BadRequestError("tool_choice.type must be auto, any, tool or none.", param="tool_choice.type")


def parameters(body: MessagesRequest) -> dict[str, Any]:
    sampling = given(
        temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, stop=body.stop_sequences
    )
    return {"max_tokens": body.max_tokens, **sampling}


def estimate_tokens(turns: list[Turn], tools: list[dict[str, Any]]) -> int:
    """A stream's ``message_start`` count, before the model has read the prompt (4 characters a
    token; ``message_delta`` then carries the exact counts)."""
    chars = sum(len(turn.text) for turn in turns) + (len(json.dumps(tools)) if tools else 0)
    return max(1, chars // 4)


# ---------------------------------------------------------------- answers


def usage(found: dict[str, Any]) -> dict[str, int]:
    """Anthropic's usage from native usage (see the module docstring)."""
    prompt = int(found.get("prompt_tokens", 0))
    cached = min(int(found.get("cached_tokens", 0)), prompt)
    return {
        "input_tokens": prompt - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": int(found.get("completion_tokens", 0)),
    }


def stop_reason(finish_reason: str | None) -> str:
    return STOP_REASONS.get(finish_reason or "stop", "end_turn")


def tool_use_blocks(calls: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
    """Native calls ``[{id, name, arguments}]`` as ``tool_use`` blocks (``input`` an object). Ids
    are ``toolu_<request id>_<n>``, unique across turns as Anthropic's are (the engines' own ids,
    such as ``call_0_<name>``, repeat from one turn to the next)."""
    blocks = []
    for index, call in enumerate(calls):
        arguments = call.get("arguments")
        found = arguments if isinstance(arguments, dict) else {"value": arguments}
        call_id = f"toolu_{request_id}_{index}"
        blocks.append({"type": "tool_use", "id": call_id, "name": call["name"], "input": found})
    return blocks


def message(
    message_id: str, model: str, content: list[dict[str, Any]], stop: str | None, counts: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": counts,
    }


# ---------------------------------------------------------------- errors


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message_text: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message_text}}


def answer_status(status: int) -> int:
    return OVERLOADED if status == 503 else status


def error_shape(status: int, body: Any) -> tuple[int, dict[str, Any]]:
    """The family's error shape: ``{"type": "error", "error": {"type", "message"}}``, 503 as 529."""
    text = "Request failed."
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            text = error["message"]
        elif isinstance(body.get("detail"), str):
            text = body["detail"]
    status = answer_status(status)
    return status, error_body(status, text)


def json_text(value: Any) -> str:
    """A tool input as JSON text, its key order kept (a reordering would change the prompt of
    the next turn and defeat the prefix cache)."""
    return json.dumps(value, ensure_ascii=False)


# ---------------------------------------------------------------- thinking

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class ThinkingSplitter:
    """Splits a model's text, piece by piece, into ``("thinking", piece)`` and ``("text", piece)``:
    a reasoning model's answer that starts with ``<think>...</think>`` (Qwen3, DeepSeek-R1...)
    becomes a ``thinking`` block, then the text (its leading whitespace dropped); any other answer
    is text as it is. A whole answer goes through the same splitter (:func:`split_thinking`), so
    whole and streamed answers have the same blocks."""

    def __init__(self) -> None:
        self.state = "start"  # start -> thinking -> after -> text, or start -> text
        self.held = ""
        self.thought = False

    def push(self, piece: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        self.held += piece
        while True:
            if self.state == "start":
                head = self.held.lstrip()
                if not head or (THINK_OPEN.startswith(head) and head != THINK_OPEN):
                    return out  # whitespace, or maybe the start of "<think>": wait for more
                if head.startswith(THINK_OPEN):
                    self.state, self.thought, self.held = "thinking", True, head[len(THINK_OPEN) :]
                    continue
                self.state = "text"
            elif self.state == "thinking":
                end = self.held.find(THINK_CLOSE)
                if end >= 0:
                    if end:
                        out.append(("thinking", self.held[:end]))
                    self.state, self.held = "after", self.held[end + len(THINK_CLOSE) :]
                    continue
                keep = next(
                    (
                        size
                        for size in range(len(THINK_CLOSE) - 1, 0, -1)
                        if self.held.endswith(THINK_CLOSE[:size])
                    ),
                    0,
                )
                if len(self.held) > keep:
                    out.append(("thinking", self.held[: len(self.held) - keep]))
                    self.held = self.held[len(self.held) - keep :]
                return out
            elif self.state == "after":
                self.held = self.held.lstrip()
                if not self.held:
                    return out
                self.state = "text"
            else:
                if self.held:
                    out.append(("text", self.held))
                    self.held = ""
                return out

    def flush(self) -> list[tuple[str, str]]:
        """What is held at the end (an unfinished ``<think>`` is thinking; a lone prefix text)."""
        held, self.held = self.held, ""
        if not held or self.state == "after":
            return []
        return [("thinking" if self.state == "thinking" else "text", held)]


def split_thinking(text: str) -> tuple[str | None, str]:
    """(the thinking, or None when the model emitted none; the text) of a whole answer."""
    splitter = ThinkingSplitter()
    pieces = splitter.push(text) + splitter.flush()
    thinking = "".join(piece for kind, piece in pieces if kind == "thinking")
    return (thinking if splitter.thought else None), "".join(
        piece for kind, piece in pieces if kind == "text"
    )


def answer_blocks(text: str) -> list[dict[str, Any]]:
    """A whole text answer's blocks: the thinking (when emitted), then the text."""
    thinking, rest = split_thinking(text)
    blocks: list[dict[str, Any]] = []
    if thinking is not None:
        blocks.append(thinking_block(thinking))
    blocks.append({"type": "text", "text": rest})
    return blocks


def thinking_block(thinking: str) -> dict[str, Any]:
    """A thinking block; its ``signature`` empty (local models sign nothing) but present, as the
    SDK expects it."""
    return {"type": "thinking", "thinking": thinking, "signature": ""}


TOOL_CALL_OPEN = "<tool_call>"


class TextBeforeCalls:
    """A streamed tool turn's text as it may be shown before the turn ends: what comes before
    the model's first ``<tool_call>``, its leading whitespace dropped and its trailing whitespace
    (or a piece that may start a ``<tool_call>``) held back until more text follows. What is shown
    is thus always the start of the finished turn's text (calls stripped, whitespace trimmed);
    the rest is sent from that text once the turn ends."""

    def __init__(self) -> None:
        self.held = ""
        self.started = False
        self.stopped = False

    def push(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.held += piece
        if not self.started:
            self.held = self.held.lstrip()
            if not self.held:
                return ""
            self.started = True
        call = self.held.find(TOOL_CALL_OPEN)
        if call >= 0:
            shown, self.held, self.stopped = self.held[:call].rstrip(), "", True
            return shown
        cut = len(self.held)
        for size in range(len(TOOL_CALL_OPEN) - 1, 0, -1):
            if self.held.endswith(TOOL_CALL_OPEN[:size]):
                cut -= size
                break
        while cut > 0 and self.held[cut - 1].isspace():
            cut -= 1
        shown, self.held = self.held[:cut], self.held[cut:]
        return shown


def turn_text(text: str) -> tuple[str | None, str]:
    """A finished tool turn's (thinking, text): its text trimmed (whole or streamed alike)."""
    thinking, rest = split_thinking(text)
    return thinking, rest.strip()
