"""Binding cards: ``binding_card.yaml``, the on-disk schema of a binding type, read without
importing the binding's code; instance settings are validated against it at start-up."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lollms_server.core.errors import ConfigError
from lollms_server.core.types import CardGenerationType

logger = logging.getLogger(__name__)

CARD_FILE = "binding_card.yaml"


class SettingSpec(BaseModel):
    """One setting of a binding type, as its card declares it."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["str", "int", "float", "bool", "list", "dict", "int_or_auto"] = Field(
        "str", description='Value type (int_or_auto: a whole number or the string "auto").'
    )
    default: Any = Field(None, description="Value when the instance does not set it.")
    description: str = Field("", description="What the setting does.")
    options: list[Any] | None = Field(None, description="Allowed values, when restricted.")
    secret: bool = Field(False, description="Never shown in responses or logs.")
    required: bool = Field(False, description="The instance must set it.")


class BindingCard(BaseModel):
    """``binding_card.yaml``: what a binding type is and which settings it takes."""

    model_config = ConfigDict(extra="allow")

    type_name: str = Field(..., description="Type name; equals the folder name.")
    display_name: str = Field("", description="Human-readable name.")
    version: str = Field("0.0.0", description="Version of the binding.")
    author: str = Field("", description="Author.")
    description: str = Field("", description="What it serves.")
    requirements: list[str] = Field(default_factory=list, description="pip requirements.")
    generation_types: list[CardGenerationType] = Field(default_factory=list, description="Supported types.")
    supports_streaming: bool = Field(False, description="Whether text can be streamed.")
    models_subfolder: str | None = Field(None, description="Sub-folder of paths.models_folder.")
    instance_schema: dict[str, SettingSpec] = Field(default_factory=dict, description="Settings.")
    folder: Path | None = Field(None, exclude=True, description="Where the card was found.")

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"folder"})


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict),
    "int_or_auto": lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool)),
}


def validate_settings(instance: str, card: BindingCard, values: dict[str, Any]) -> dict[str, Any]:
    """Check an instance's settings against its card; return them with defaults filled in."""
    schema = card.instance_schema
    for key in values:
        if key not in schema:
            known = ", ".join(sorted(schema)) or "none"
            raise ConfigError(
                f"bindings.{instance}.{key}: unknown setting for type '{card.type_name}' (known: {known})"
            )
    result: dict[str, Any] = {}
    for key, spec in schema.items():
        if key not in values:
            if spec.required:
                raise ConfigError(f"bindings.{instance}.{key}: required setting is missing")
            result[key] = spec.default
            continue
        value = values[key]
        if value is not None and not _TYPE_CHECKS[spec.type](value):
            expected = 'an int or "auto"' if spec.type == "int_or_auto" else spec.type
            raise ConfigError(f"bindings.{instance}.{key}: expected {expected}, got {type(value).__name__}")
        if spec.type == "float" and isinstance(value, int):
            value = float(value)
        if spec.options is not None and value is not None and value not in spec.options:
            raise ConfigError(f"bindings.{instance}.{key}: must be one of {spec.options}")
        result[key] = value
    return result


def read_card(folder: Path) -> BindingCard:
    path = folder / CARD_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        card = BindingCard.model_validate(data)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"{path}: invalid binding card: {exc}") from None
    if card.type_name != folder.name:
        raise ConfigError(f"{path}: type_name '{card.type_name}' must equal the folder name '{folder.name}'")
    card.folder = folder
    return card


def discover_cards(folders: list[Path]) -> dict[str, BindingCard]:
    """Read every card; a later folder (the user's) wins on a name clash."""
    cards: dict[str, BindingCard] = {}
    for root in folders:
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            if not (folder / CARD_FILE).is_file():
                continue
            try:
                cards[folder.name] = read_card(folder)
            except ConfigError as exc:
                logger.error("Skipping binding %s: %s", folder.name, exc.message)
    return cards
