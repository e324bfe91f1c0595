"""The one mapping of chat turns to native input items, for every API family.

A family reads its own message shape (OpenAI content parts, Ollama ``images``, Anthropic
blocks) into :class:`Turn` objects; :func:`native_inputs` walks the turns once: system turns
become ``system_context`` items, the last user turn the ``user_prompt``, images join their user
turn, an assistant's tool calls and a tool's result are written in the server's text tool
protocol (``core.generation.tools``), a result finding the name of the call it answers by the
call's id, else by its own name, else by the order of the calls not answered yet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from lollms_server.api.kit.native import native
from lollms_server.core.errors import BadRequestError
from lollms_server.core.generation.tools import tool_call_text, tool_result_text
from lollms_server.core.types import InputData
from lollms_server.utils.nesting import MAX_TOOL_ARGUMENT_DEPTH, nests_deeper

Role = Literal["system", "user", "assistant", "tool"]


@dataclass
class Image:
    """An inline image: base64 data and its mime type."""

    data: str
    mime_type: str = "image/png"


def data_url_image(url: str) -> Image:
    """The image of a ``data:<mime>;base64,<data>`` URL (checked to be one by the family)."""
    return Image(data=url.split(",", 1)[-1], mime_type=url[5:].split(";", 1)[0] or "image/png")


def arguments(raw: Any) -> Any:
    """A replayed tool call's arguments as OpenAI's families send them: a JSON string (or
    already an object), nested at most ``MAX_TOOL_ARGUMENT_DEPTH`` levels (400 otherwise); a
    string that is no JSON is no arguments."""
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, str | dict | list):
        raise BadRequestError("Tool call arguments must be a JSON string.", param="messages")
    if nests_deeper(raw, MAX_TOOL_ARGUMENT_DEPTH):
        raise BadRequestError(
            f"Tool call arguments nest more than {MAX_TOOL_ARGUMENT_DEPTH} levels deep.", param="messages"
        )
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return {}


@dataclass
class ToolCall:
    """A call the assistant made: its id (when the family has ids), name and arguments."""

    name: str
    arguments: Any
    id: str | None = None


@dataclass
class Turn:
    """One chat turn, family-neutral. ``tool`` turns answer a call: ``call_id`` (or
    ``tool_name``) names it; ``ok`` False marks a failed call's result."""

    role: Role
    text: str = ""
    images: list[Image] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    call_id: str | None = None
    tool_name: str | None = None
    ok: bool = True


def native_inputs(turns: list[Turn]) -> list[InputData]:
    """Native input items of ``turns`` (images of other than user turns are dropped: families
    that refuse them say so before)."""
    last_user = max((i for i, turn in enumerate(turns) if turn.role == "user"), default=-1)
    names: dict[str, str] = {}  # call id -> tool name
    pending: list[str] = []  # names of the calls not answered yet, in order
    inputs: list[InputData] = []
    for index, turn in enumerate(turns):
        if turn.role == "system":
            inputs.append(InputData(type="text", role="system_context", data=turn.text))
        elif turn.role == "user":
            role = "user_prompt" if index == last_user else "user"
            inputs.append(native(InputData, type="text", role=role, data=turn.text))
            inputs.extend(
                native(
                    InputData, type="image", role="input_image", data=image.data, mime_type=image.mime_type
                )
                for image in turn.images
            )
        elif turn.role == "assistant":
            calls = []
            for call in turn.tool_calls:
                if call.id is not None:
                    names[call.id] = call.name
                pending.append(call.name)
                calls.append(tool_call_text(call.name, call.arguments))
            text = "\n".join([turn.text, *calls]).strip()
            inputs.append(InputData(type="text", role="assistant", data=text))
        else:  # a tool's result
            name = _answered(turn, names, pending)
            inputs.append(
                InputData(type="text", role="user", data=tool_result_text(name, turn.text, turn.ok))
            )
    return inputs


def _answered(turn: Turn, names: dict[str, str], pending: list[str]) -> str:
    """The name of the call a tool turn answers (and that call no longer pending)."""
    name = names.get(turn.call_id) if turn.call_id is not None else None
    name = name or turn.tool_name or (pending[0] if pending else "")
    if name in pending:
        pending.remove(name)
    return name
