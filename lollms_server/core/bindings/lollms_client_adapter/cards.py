"""Cards of lollms_client binding folders, built from their ``description.yaml`` (no code import).

A folder copied verbatim from the ``lollms_client`` package into
``<bindings folder>/<modality>_bindings/<name>/`` becomes the binding type ``lc_<modality>_<name>``:
the parent folder tells the modality (description.yaml has no key for it), the settings come from
``global_input_parameters`` + ``model_input_parameters`` (or the legacy ``input_parameters``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import yaml

from lollms_server.core.bindings.cards import BindingCard, SettingSpec
from lollms_server.core.bindings.commands import normalize_commands
from lollms_server.core.types import CardGenerationType

logger = logging.getLogger(__name__)

DESCRIPTION_FILE = "description.yaml"
TYPE_PREFIX = "lc_"
MODALITY_TYPES: dict[str, list[CardGenerationType]] = {
    "llm": ["ttt", "embed"],
    "tti": ["tti", "i2i"],
    "tts": ["tts"],
    "stt": ["stt"],
    "ttm": ["ttm"],
    "ttv": ["ttv"],
}
"""lollms_client modality (the ``<modality>_bindings`` folder) -> the generation types it serves."""
EXTRA_KWARGS = "extra_kwargs"
"""The adapter's own setting: keyword arguments passed verbatim to the binding's constructor
(bindings read undeclared ones, e.g. piper's ``host`` and ``port``)."""
_PARAMETER_LISTS = {"global_input_parameters", "model_input_parameters", "input_parameters"}
_SECRET_NAME = re.compile(r"(^|_)(key|api_key|service_key|token|secret|password)$", re.IGNORECASE)
"""Names that are secrets even when description.yaml forgets ``is_secret`` (openai's service_key)."""
_SETTING_TYPES = {"str", "int", "float", "bool", "list", "dict"}
_METADATA_KEYS = ("title", "author", "version", "description")


CALL_PARAMETERS = {
    "generate_image": "generate_image_parameters",
    "edit_image": "edit_image_parameters",
    "generate_audio": "generate_audio_parameters",
    "generate_music": "generate_music_parameters",
    "generate_video": "generate_video_parameters",
    "transcribe_audio": "transcribe_audio_parameters",
}
"""The description.yaml list naming the keyword arguments of each lollms_client media method."""
COMMON_MEDIA_PARAMETERS = frozenset({
    "width", "height", "num_inference_steps", "guidance_scale", "negative_prompt", "seed", "strength",
    "num_frames", "fps", "duration", "language", "scheduler", "voice",
})  # fmt: skip
"""What a media call gets when its card declares no list: the media parameters the server checks."""


def declared_call_parameters(card: BindingCard, method: str) -> frozenset[str]:
    """The keyword arguments a lollms_client binding's media ``method`` may receive from a
    request: those its description.yaml declares for it, else :data:`COMMON_MEDIA_PARAMETERS`.
    Anything else a request carries never reaches the third-party code."""
    declared = getattr(card, CALL_PARAMETERS.get(method, ""), None) if method in CALL_PARAMETERS else None
    if not isinstance(declared, list):
        return COMMON_MEDIA_PARAMETERS
    names = {str(entry["name"]) for entry in declared if isinstance(entry, dict) and entry.get("name")}
    return frozenset(names - {"prompt", "text", "images", "mask", "audio_path", "model"})


def is_lollms_client_card(card: BindingCard) -> bool:
    """Whether the card was built from a lollms_client ``description.yaml``."""
    return isinstance(getattr(card, "lollms_client", None), dict)


def lollms_client_info(card: BindingCard) -> dict[str, Any]:
    """``{modality, folder_name, defaults}`` of a lollms_client card."""
    info: dict[str, Any] = getattr(card, "lollms_client", {})
    return info


def _parameters(description: dict[str, Any]) -> list[dict[str, Any]]:
    lists: list[Any] = []
    if "global_input_parameters" in description or "model_input_parameters" in description:
        lists = [description.get("global_input_parameters"), description.get("model_input_parameters")]
    else:
        lists = [description.get("input_parameters")]
    found: list[dict[str, Any]] = []
    for entries in lists:
        if isinstance(entries, list):
            found.extend(entry for entry in entries if isinstance(entry, dict) and entry.get("name"))
    return found


def _setting(name: str, entry: dict[str, Any]) -> tuple[SettingSpec, Any]:
    """One description.yaml parameter as a setting, and the binding's own default.

    The card default is None: only settings the instance sets reach the binding's constructor
    (it has its own defaults, which a card default would override). ``mandatory`` becomes
    ``required`` only when the description gives no usable default.
    """
    kind = str(entry.get("type") or "str")
    if kind not in _SETTING_TYPES:
        kind = "str"
    default = entry.get("default")
    options = entry.get("options")
    if not isinstance(options, list) or (default not in (None, "") and default not in options):
        options = None
    spec = SettingSpec(
        type=kind,  # type: ignore[arg-type]
        default=None,
        description=str(entry.get("description") or "").strip()
        + (f" (binding default: {default!r})" if default not in (None, "") else ""),
        options=options,
        secret=bool(entry.get("is_secret")) or bool(_SECRET_NAME.search(name)),
        required=bool(entry.get("mandatory")) and default in (None, ""),
    )
    return spec, default


def build_card(folder: Path, modality: str) -> BindingCard:
    """The card of one lollms_client binding folder (raises ValueError/OSError/YAMLError)."""
    path = folder / DESCRIPTION_FILE
    description: dict[str, Any] = {}
    if path.is_file():
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(loaded, dict):
            description = loaded
    schema: dict[str, SettingSpec] = {}
    defaults: dict[str, Any] = {}
    default_model: str | None = None
    for entry in _parameters(description):
        name = str(entry["name"])
        if name == "model_name":  # our instance's model_name; its default is the instance's
            default_model = default_model or (str(entry["default"]) if entry.get("default") else None)
            continue
        if name in schema:  # names repeat between the global and model lists: the first wins
            continue
        schema[name], defaults[name] = _setting(name, entry)
    schema[EXTRA_KWARGS] = SettingSpec(
        type="dict",
        default={},
        description="Keyword arguments passed verbatim to the lollms_client binding's constructor "
        "(masked in listings: they may hold keys).",
        secret=True,
    )
    metadata = {key: description.get(key) for key in _METADATA_KEYS}
    extras = {
        key: value
        for key, value in description.items()
        if key == "commands" or (key.endswith("_parameters") and key not in _PARAMETER_LISTS)
    }
    return BindingCard(
        type_name=f"{TYPE_PREFIX}{modality}_{folder.name}",
        display_name=str(metadata["title"] or folder.name),
        version=str(metadata["version"] or "0.0.0"),
        author=str(metadata["author"] or ""),
        description=str(metadata["description"] or "").strip(),
        requirements=[],
        generation_types=list(MODALITY_TYPES[modality]),
        supports_streaming=modality == "llm",
        models_subfolder=f"{TYPE_PREFIX}{modality}_{folder.name}",
        instance_schema=schema,
        folder=folder,
        lollms_client={
            "modality": modality,
            "folder_name": folder.name,
            "defaults": defaults,
            "default_model": default_model,
        },
        commands=normalize_commands(extras.pop("commands", None)),
        **extras,
    )


def discover_lollms_client_cards(roots: list[Path]) -> dict[str, BindingCard]:
    """Cards of every ``<root>/<modality>_bindings/<name>/`` folder holding an ``__init__.py``."""
    cards: dict[str, BindingCard] = {}
    for root in roots:
        for modality in MODALITY_TYPES:
            parent = root / f"{modality}_bindings"
            if not parent.is_dir():
                continue
            for folder in sorted(parent.iterdir()):
                if not (folder / "__init__.py").is_file() or not folder.name.isidentifier():
                    continue
                try:
                    card = build_card(folder, modality)
                except (OSError, ValueError, yaml.YAMLError) as exc:
                    logger.error("Skipping lollms_client binding %s: %s", folder, exc)
                    continue
                cards[card.type_name] = card
    return cards
