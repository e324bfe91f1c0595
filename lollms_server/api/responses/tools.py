"""The tools of a Responses request, and the plan of the model turn they make.

``tools`` of type ``function``, ``custom`` (Codex's freeform ``apply_patch``) and ``namespace``
(one per MCP server) are offered to the model as chat functions (a namespace's member as
``namespace.name``); built-in tool types this server cannot run (``web_search``, ``local_shell``,
...) are ignored with a warning, never a 400. :func:`plan` reads ``tool_choice``.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from lollms_server.api.responses.protocol import ResponsesInput
from lollms_server.core.errors import BadRequestError

logger = logging.getLogger(__name__)

MAX_GRAMMAR_NOTE = 4000
"""Characters of a custom tool's grammar shown to the model in its description."""


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class ToolName:
    """What a name the model calls stands for: a ``function`` or ``custom`` tool, maybe in a namespace."""

    kind: str
    name: str
    namespace: str | None = None


@dataclass
class Tools:
    """The request's tools as chat functions for the model, with the way back to Responses items."""

    specs: list[dict[str, Any]] = field(default_factory=list)
    names: dict[str, ToolName] = field(default_factory=dict)

    def add(self, tool: dict[str, Any], namespace: str | None, index: int) -> None:
        kind = tool.get("type")
        name = tool.get("name")
        if kind not in ("function", "custom"):
            logger.warning("/v1/responses: tool type %r is not supported here; ignored", str(kind)[:64])
            return
        if not isinstance(name, str) or not name or len(name) > 256:
            raise BadRequestError(
                "A tool needs a 'name' of 1 to 256 characters.", param=f"tools[{index}].name"
            )
        description = str(tool.get("description") or "")
        if kind == "function":
            parameters = tool.get("parameters")
            if not isinstance(parameters, dict):
                parameters = {"type": "object", "properties": {}}
        else:  # freeform: the model passes its raw text as one string argument
            description += "\nThis tool takes free text: pass the whole text as the string argument 'input'."
            grammar = tool.get("format")
            if isinstance(grammar, dict) and isinstance(grammar.get("definition"), str):
                syntax = str(grammar.get("syntax") or "grammar")
                description += (
                    f"\nThe text follows this {syntax} grammar:\n{grammar['definition'][:MAX_GRAMMAR_NOTE]}"
                )
            parameters = {
                "type": "object",
                "properties": {"input": {"type": "string"}},
                "required": ["input"],
            }
        internal = internal_name(name, namespace)
        self.names[internal] = ToolName(kind, name, namespace)
        self.specs.append(
            {
                "type": "function",
                "function": {"name": internal, "description": description.strip(), "parameters": parameters},
            }
        )

    def spec(self, internal: str) -> dict[str, Any]:
        return next(spec for spec in self.specs if spec["function"]["name"] == internal)

    def lookup(self, internal: str) -> ToolName:
        return self.names.get(internal) or ToolName("function", internal)


def internal_name(name: str, namespace: str | None) -> str:
    """The name the model sees: a namespace's member is ``namespace.name``."""
    return f"{namespace}.{name}" if namespace else name


def read_tools(tools: list[dict[str, Any]] | None) -> Tools:
    found = Tools()
    for index, tool in enumerate(tools or []):
        if not isinstance(tool, dict):
            raise BadRequestError("Each tool must be an object.", param=f"tools[{index}]")
        if tool.get("type") == "namespace":
            namespace = tool.get("name")
            if not isinstance(namespace, str) or not namespace or len(namespace) > 256:
                raise BadRequestError("A namespace needs a 'name'.", param=f"tools[{index}].name")
            members = tool.get("tools")
            for member in members if isinstance(members, list) else []:
                if isinstance(member, dict):
                    found.add(member, namespace, index)
        else:
            found.add(tool, None, index)
    return found


@dataclass(frozen=True)
class Plan:
    """How the model turn runs: ``text`` (no tools offered), ``forced`` (one named tool must be
    called: its arguments are the answer, grammar-constrained by its schema where the binding
    can), ``required`` (one of several tools must be called) or ``auto`` (the model may call)."""

    mode: str
    tools: Tools
    forced: str | None = None


def plan(body: ResponsesInput) -> Plan:
    """The mode of the request from its ``tools`` and ``tool_choice``."""
    tools = read_tools(body.tools)
    choice = body.tool_choice
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = {
            internal_name(str(item.get("name")), item.get("namespace"))
            for item in choice.get("tools") or []
            if isinstance(item, dict)
        }
        tools = Tools(
            [spec for spec in tools.specs if spec["function"]["name"] in allowed],
            {name: value for name, value in tools.names.items() if name in allowed},
        )
        choice = "required" if choice.get("mode") == "required" else "auto"
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind in ("function", "custom"):
            name = internal_name(str(choice.get("name")), choice.get("namespace"))
            if name not in tools.names:
                raise BadRequestError(
                    f"tool_choice names '{name[:256]}', which is not in tools.", param="tool_choice"
                )
            return Plan("forced", tools, name)
        logger.warning("/v1/responses: tool_choice %r is not supported here; auto", str(kind)[:64])
        choice = "auto"
    if choice not in (None, "auto", "none", "required"):
        raise BadRequestError("tool_choice must be auto, none, required or a tool.", param="tool_choice")
    if not tools.specs or choice == "none":
        return Plan("text", tools)
    if choice == "required":
        if len(tools.specs) == 1:
            return Plan("forced", tools, tools.specs[0]["function"]["name"])
        return Plan("required", tools)
    return Plan("auto", tools)
