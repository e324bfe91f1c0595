"""lollms personalities (DESIGN §7): ``<folder>/config.yaml`` plus an optional workflow script.

Personalities are read from ``zoos/personalities/`` and the user personalities folder (a user
folder overrides a zoo one of the same name). A broken personality is logged with the reason
and skipped. ``[personalities_config.<folder>]`` can disable one (``enabled = false``) or
override its fields. A scripted personality's module is loaded once, on first use; scripts are
code on the server's disk, never taken from a request.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lollms_server.core.config import AppConfig
from lollms_server.core.errors import BindingError, ConfigError, LollmsError, NotFoundError
from lollms_server.core.stops import AntiPrompts
from lollms_server.utils.modules import import_file
from lollms_server.utils.paths import is_safe_name, safe_join

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"


class PersonalityConfig(BaseModel):
    """The lollms ``config.yaml`` fields; unknown fields are kept."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(..., min_length=1, description="Display name.")
    author: str = Field("", description="Author.")
    version: str = Field("", description="Version.")
    personality_description: str = Field("", description="What the personality does.")
    personality_conditioning: str = Field("", description="System message given to the model.")
    welcome_message: str = Field("", description="Shown to users when they start.")
    user_message_prefix: str = Field("", description="Prefix of user turns in raw prompts.")
    ai_message_prefix: str = Field("", description="Prefix of assistant turns in raw prompts.")
    link_text: str = Field("\n", description="Text between turns in raw prompts.")
    anti_prompts: AntiPrompts = Field(default_factory=list, description="Stop sequences.")
    disclaimer: str = Field("", description="Shown with the welcome message.")
    model_temperature: float | None = Field(None, ge=0, le=10, description="Default temperature.")
    model_n_predicts: int | None = Field(None, ge=1, description="Default max tokens.")
    model_top_k: int | None = Field(None, ge=0, description="Default top_k.")
    model_top_p: float | None = Field(None, ge=0, le=1, description="Default top_p.")
    model_repeat_penalty: float | None = Field(None, gt=0, description="Default repeat penalty.")
    model_repeat_last_n: int | None = Field(None, ge=0, description="Default repeat window.")
    dependencies: list[str] = Field(default_factory=list, description="pip requirements of the script.")
    category: str = Field("", description="Category.")
    tags: list[str] = Field(default_factory=list, description="Tags.")
    icon: str | None = Field(None, description="Icon file in the folder.")
    script_path: str | None = Field(None, description="Workflow script, relative to the folder.")
    recommended_binding: str | None = Field(
        None, description="Binding instance used when a request names none."
    )
    recommended_model: str | None = Field(None, description="Model used with the recommended binding.")


@dataclass
class Personality:
    folder_name: str
    folder: Path
    config: PersonalityConfig
    _workflow: Callable[..., Any] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def name(self) -> str:
        return self.folder_name

    @property
    def scripted(self) -> bool:
        return bool(self.config.script_path)

    def parameter_defaults(self) -> dict[str, Any]:
        """model_* values as generation parameters (between server defaults and the request)."""
        config = self.config
        mapping = {
            "temperature": config.model_temperature,
            "max_tokens": config.model_n_predicts,
            "top_k": config.model_top_k,
            "top_p": config.model_top_p,
            "repeat_penalty": config.model_repeat_penalty,
            "repeat_last_n": config.model_repeat_last_n,
        }
        return {key: value for key, value in mapping.items() if value is not None}

    def public(self) -> dict[str, Any]:
        config = self.config
        return {
            "name": self.folder_name,
            "display_name": config.name,
            "author": config.author,
            "version": config.version,
            "description": config.personality_description,
            "category": config.category,
            "tags": config.tags,
            "welcome_message": config.welcome_message,
            "disclaimer": config.disclaimer,
            "scripted": self.scripted,
            "recommended_binding": config.recommended_binding,
            "recommended_model": config.recommended_model,
        }


def read_personality(folder: Path, overrides: dict[str, Any]) -> Personality:
    path = folder / CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of fields")
    try:
        config = PersonalityConfig.model_validate({**data, **overrides})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"{path}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    if config.script_path:
        try:
            script = safe_join(folder, config.script_path, param="script_path")
        except LollmsError as exc:
            raise ConfigError(f"{path}: {exc.message}") from None
        if not script.is_file():
            raise ConfigError(f"{path}: script_path '{config.script_path}' does not exist")
    return Personality(folder_name=folder.name, folder=folder, config=config)


class PersonalityManager:
    """Discovers personalities and loads their workflows on first use."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.personalities: dict[str, Personality] = {}
        folders: dict[str, Path] = {}
        for root in (config.paths.zoos_folder / "personalities", config.paths.personalities_folder):
            if root.is_dir():
                for folder in sorted(root.iterdir()):
                    if (folder / CONFIG_FILE).is_file() and is_safe_name(folder.name):
                        folders[folder.name] = folder  # the user's folder comes last and wins
        for name, folder in folders.items():
            settings = config.personalities_config.get(name)
            if settings is not None and not settings.enabled:
                logger.info("Personality %s is disabled by the configuration", name)
                continue
            overrides = dict(settings.model_extra or {}) if settings is not None else {}
            try:
                self.personalities[name] = read_personality(folder, overrides)
            except ConfigError as exc:
                logger.error("Skipping personality %s: %s", name, exc.message)

    def get(self, name: str) -> Personality:
        personality = self.personalities.get(name)
        if personality is None:
            raise NotFoundError(f"Personality '{name[:80]}' not found.", param="personality")
        return personality

    def public(self) -> dict[str, dict[str, Any]]:
        return {name: personality.public() for name, personality in self.personalities.items()}

    def workflow(self, personality: Personality) -> Callable[..., Any]:
        """The script's ``run_workflow`` (loaded once; blocking: call it in a worker thread)."""
        with personality._lock:
            if personality._workflow is None:
                personality._workflow = self._load_workflow(personality)
            return personality._workflow

    def _load_workflow(self, personality: Personality) -> Callable[..., Any]:
        config = personality.config
        assert config.script_path is not None
        if config.dependencies and self.config.server.install_personality_dependencies:
            import pipmaster

            if not pipmaster.ensure_packages(list(config.dependencies)):
                raise BindingError(f"Could not install the dependencies of personality '{personality.name}'.")
        script = safe_join(personality.folder, config.script_path, param="script_path")
        try:
            module = import_file(f"lollms_personalities.{personality.name}", script)
        except Exception as exc:
            logger.exception("Script of personality %s failed to load", personality.name)
            raise BindingError(
                f"The script of personality '{personality.name}' failed to load ({type(exc).__name__})."
            ) from exc
        workflow = getattr(module, "run_workflow", None)
        if workflow is None or not inspect.iscoroutinefunction(workflow):
            raise BindingError(f"The script of personality '{personality.name}' has no async run_workflow.")
        return workflow  # type: ignore[no-any-return]
