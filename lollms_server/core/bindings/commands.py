"""Binding commands: what a card declares under ``commands`` (name, title, description,
parameters, output), and the check of a call's parameters against that declaration.

Our cards and lollms_client's description.yaml share the shape: ``parameters`` is a list of
``{name, type, description, mandatory, default}`` (``params`` is read too, a typo variant that
ships in lollms_client).
"""

from __future__ import annotations

from typing import Any

from lollms_server.core.bindings.cards import _TYPE_CHECKS, BindingCard
from lollms_server.core.errors import BadRequestError, NotFoundError
from lollms_server.utils.paths import printable


def normalize_commands(raw: Any) -> list[dict[str, Any]]:
    """Declared commands in one shape (entries without a string name are dropped)."""
    commands: list[dict[str, Any]] = []
    for entry in raw if isinstance(raw, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        parameters = entry.get("parameters", entry.get("params")) or []
        commands.append(
            {
                "name": entry["name"],
                "title": str(entry.get("title") or entry["name"]),
                "description": str(entry.get("description") or "").strip(),
                "parameters": [p for p in parameters if isinstance(p, dict) and p.get("name")],
                "output": [o for o in entry.get("output") or [] if isinstance(o, dict)],
            }
        )
    return commands


def card_commands(card: BindingCard) -> list[dict[str, Any]]:
    """The commands ``card`` declares."""
    return normalize_commands(getattr(card, "commands", None))


def declared_command(card: BindingCard, name: str) -> dict[str, Any]:
    """The declaration of command ``name`` (404 when the card does not declare it)."""
    for command in card_commands(card):
        if command["name"] == name:
            return command
    raise NotFoundError(f"Binding type '{card.type_name}' declares no command '{printable(name)}'.")


def checked_arguments(command: dict[str, Any], arguments: dict[str, Any]) -> dict[str, Any]:
    """``arguments`` checked against the declared parameters (400 naming the parameter):
    no unknown names, mandatory ones present, declared types; declared defaults filled in."""
    declared = {str(parameter["name"]): parameter for parameter in command["parameters"]}
    for name in arguments:
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise BadRequestError(
                f"Command '{command['name']}' takes no parameter '{printable(name)}' (known: {known}).",
                param=f"parameters.{printable(name)}",
            )
    result: dict[str, Any] = {}
    for name, parameter in declared.items():
        if name not in arguments:
            if parameter.get("mandatory") and parameter.get("default") is None:
                raise BadRequestError(
                    f"Command '{command['name']}' needs the parameter '{name}'.", param=f"parameters.{name}"
                )
            if parameter.get("default") is not None:
                result[name] = parameter["default"]
            continue
        value = arguments[name]
        kind = str(parameter.get("type") or "str")
        check = _TYPE_CHECKS.get(kind)
        if value is not None and check is not None and not check(value):
            raise BadRequestError(
                f"Parameter '{name}' of command '{command['name']}' must be {kind}.",
                param=f"parameters.{name}",
            )
        result[name] = value
    return result
