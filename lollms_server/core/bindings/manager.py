"""The binding registry: binding types from their cards, instances from ``[bindings.*]``,
validated at start-up, imported and created in this process on first use.

It knows nothing of where a pool runs (in process, in a worker process, in a Ray actor): that
is the pool hosts' job (``core.pools``), which create instances through this manager.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from lollms_server.core.bindings.base import Binding, BindingContext
from lollms_server.core.bindings.cards import BindingCard, discover_cards, validate_settings
from lollms_server.core.bindings.lollms_client_adapter import (
    discover_lollms_client_cards,
    is_lollms_client_card,
    lollms_client_info,
)
from lollms_server.core.config import AppConfig, BindingInstanceConfig, DownloadsConfig
from lollms_server.core.errors import BindingError, ConfigError, NotFoundError
from lollms_server.core.types import GENERATION_KINDS
from lollms_server.utils.modules import import_file
from lollms_server.utils.paths import is_safe_name, printable, without_userinfo

logger = logging.getLogger(__name__)

SECRET_MASK = "********"
MODEL_SUFFIXES = {".gguf", ".bin", ".safetensors", ".pt", ".pth", ".onnx", ".ckpt"}


@dataclass
class BindingInstance:
    """A configured instance: its card, validated settings and (once used) its object."""

    name: str
    card: BindingCard
    config: BindingInstanceConfig
    settings: dict[str, Any]
    pool: str
    models_folder: Path
    binding: Binding | None = None
    downloads: DownloadsConfig = field(default_factory=DownloadsConfig)

    def context(self) -> BindingContext:
        """What the binding object of this instance (or its stand-in) is built with."""
        return BindingContext(
            instance_name=self.name,
            card=self.card,
            settings=dict(self.settings),
            models_folder=self.models_folder,
            pool=self.pool,
            default_model=self.config.model_name,
            allowed_downloads=tuple(self.downloads.allowed_sources),
            max_download_mb=self.downloads.max_download_mb,
        )

    def public(self) -> dict[str, Any]:
        """Description for list endpoints, with secret settings masked."""
        settings = {
            key: (
                SECRET_MASK
                if self.card.instance_schema[key].secret and value not in (None, "")
                else without_userinfo(value)
                if isinstance(value, str)
                else value
            )
            for key, value in self.settings.items()
        }
        return {
            "name": self.name,
            "type": self.card.type_name,
            "pool": self.pool,
            "model_name": self.config.model_name,
            "generation_types": list(self.card.generation_types),
            "supports_streaming": self.card.supports_streaming,
            "loaded": self.binding is not None,
            "settings": settings,
        }


class BindingManager:
    """Discovers binding types, validates instances, and instantiates them on first use."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        roots = [config.paths.zoos_folder / "bindings", config.paths.bindings_folder]
        self.cards = discover_cards(roots)
        self.cards.update(discover_lollms_client_cards(roots))  # lc_<modality>_<folder> types
        self.instances: dict[str, BindingInstance] = {}
        for name, instance_config in config.bindings.items():
            self.instances[name] = self._configure(name, instance_config)
        self._locks: dict[str, asyncio.Lock] = {}
        self._warn_of_narrow_pools()

    def _warn_of_narrow_pools(self) -> None:
        """A batching instance (a ``parallel`` setting) runs at most its pool's ``limit``
        sequences together: say so when the pool is narrower."""
        for instance in self.instances.values():
            parallel = instance.settings.get("parallel")
            pool = self.config.resource_manager.pools.get(instance.pool)
            if isinstance(parallel, int) and pool is not None and parallel > pool.limit:
                logger.warning(
                    "bindings.%s: parallel = %d, but pool '%s' runs %d generation(s) at once: at most "
                    "%d sequence(s) decode together (set resource_manager.pools.%s.limit = %d)",
                    instance.name,
                    parallel,
                    instance.pool,
                    pool.limit,
                    pool.limit,
                    instance.pool,
                    parallel,
                )

    @staticmethod
    def discover_cards(folders: list[Path]) -> dict[str, BindingCard]:
        """Read every card; a later folder (the user's) wins on a name clash."""
        return discover_cards(folders)

    def _configure(self, name: str, instance_config: BindingInstanceConfig) -> BindingInstance:
        if not is_safe_name(name):
            raise ConfigError(f"bindings.{name}: instance names use letters, digits, '-', '_' and '.'")
        card = self.cards.get(instance_config.type)
        if card is None:
            known = ", ".join(sorted(self.cards)) or "none"
            raise ConfigError(
                f"bindings.{name}.type: unknown binding type '{instance_config.type}' (known: {known})"
            )
        if is_lollms_client_card(card) and instance_config.model_name is None:
            default_model = lollms_client_info(card).get("default_model")  # description.yaml's
            instance_config = instance_config.model_copy(update={"model_name": default_model})
        settings = validate_settings(name, card, instance_config.settings())
        models_folder = instance_config.models_folder or (
            self.config.paths.models_folder / (card.models_subfolder or card.type_name)
        )
        return BindingInstance(
            name=name,
            card=card,
            config=instance_config,
            settings=settings,
            pool=instance_config.pool or self.config.resource_manager.default_pool,
            models_folder=Path(models_folder),
            downloads=self.config.downloads,
        )

    def instance(self, name: str) -> BindingInstance:
        instance = self.instances.get(name)
        if instance is None:
            raise NotFoundError(f"Binding '{printable(name)}' not found.", param="binding_name")
        return instance

    async def get(self, name: str) -> Binding:
        """The binding object of an instance, importing and creating it on first use."""
        instance = self.instance(name)
        if instance.binding is not None:
            return instance.binding
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if instance.binding is None:
                instance.binding = await asyncio.to_thread(self._create, instance)
        return instance.binding

    def of_pool(self, pool: str) -> list[BindingInstance]:
        """The instances that run in ``pool``."""
        return [instance for instance in self.instances.values() if instance.pool == pool]

    def requirements_of_pool(self, pool: str) -> list[str]:
        """The pip requirements of every binding type used in ``pool`` (for a pool's own venv)."""
        return sorted(
            {requirement for instance in self.of_pool(pool) for requirement in instance.card.requirements}
        )

    def _create(self, instance: BindingInstance) -> Binding:
        card = instance.card
        if is_lollms_client_card(card):
            from lollms_server.core.bindings.lollms_client_adapter.adapter import LollmsClientBinding

            return LollmsClientBinding(instance.context(), self.config.server.auto_install_requirements)
        if card.requirements and self.config.server.auto_install_requirements:
            self._install_requirements(card)
        module = self._import(card)
        class_name = getattr(module, "BindingName", None)
        binding_class = getattr(module, class_name, None) if isinstance(class_name, str) else None
        if not (isinstance(binding_class, type) and issubclass(binding_class, Binding)):
            raise BindingError(f"Binding type '{card.type_name}' does not define a valid BindingName class.")
        missing = [
            kind.name
            for kind in (GENERATION_KINDS[name] for name in card.generation_types if name in GENERATION_KINDS)
            if getattr(binding_class, kind.method) is getattr(Binding, kind.method)
            and not (kind.name == "ttt" and binding_class.generate_text is not Binding.generate_text)
        ]
        if card.generation_types.count("embed") and binding_class.embed is Binding.embed:
            missing.append("embed")
        if missing:  # requests of those types will answer the base class's clear 500
            logger.warning(
                "Binding type %s declares %s in its card but does not implement it",
                card.type_name,
                ", ".join(missing),
            )
        try:
            return binding_class(instance.context())
        except Exception as exc:
            logger.exception("Binding instance %s failed to start", instance.name)
            raise BindingError(f"Binding '{instance.name}' failed to start: {type(exc).__name__}.") from exc

    @staticmethod
    def _install_requirements(card: BindingCard) -> None:
        import pipmaster

        logger.info("Checking requirements of binding %s", card.type_name)
        if not pipmaster.ensure_packages(list(card.requirements)):
            raise BindingError(f"Could not install the requirements of binding '{card.type_name}'.")

    @staticmethod
    def _import(card: BindingCard) -> ModuleType:
        assert card.folder is not None
        module_name = f"lollms_bindings.{card.type_name}"
        if module_name in sys.modules:
            return sys.modules[module_name]
        init = card.folder / "__init__.py"
        if not init.is_file():
            raise BindingError(f"Binding type '{card.type_name}' has no __init__.py.")
        try:
            module = import_file(module_name, init, package_folder=card.folder)
        except ImportError as exc:
            logger.error("Binding %s cannot be imported: %s", card.type_name, exc)
            raise BindingError(
                f"Binding type '{card.type_name}' is missing a dependency ({exc.name or 'unknown'}); "
                f"install it with: pip install {' '.join(card.requirements)}"
            ) from exc
        except Exception as exc:
            logger.exception("Binding %s failed to import", card.type_name)
            raise BindingError(f"Binding type '{card.type_name}' failed to import.") from exc
        return module

    def active(self) -> list[BindingInstance]:
        return [instance for instance in self.instances.values() if instance.binding is not None]

    async def close(self) -> None:
        for instance in self.instances.values():
            binding = instance.binding
            if binding is None:
                continue
            for model in list(binding.loaded_models()):
                try:
                    await binding.unload_model(model)
                except Exception:  # noqa: BLE001 - shutting down anyway
                    logger.warning("Unloading %s/%s failed at shutdown", instance.name, model)
            try:
                await binding.close()
            except Exception:  # noqa: BLE001
                logger.warning("Closing binding %s failed at shutdown", instance.name)

    def model_files(self, instances: list[str] | None = None) -> dict[str, list[str]]:
        """Model files and folders under ``paths.models_folder``, per sub-folder (blocking: scans
        the disk); with ``instances``, only the sub-folders those instances use."""
        root = self.config.paths.models_folder
        found: dict[str, list[str]] = {}
        if not root.is_dir():
            return found
        folders = sorted(path for path in root.iterdir() if path.is_dir())
        if instances is not None:
            used = {
                self.instances[name].models_folder.resolve() for name in instances if name in self.instances
            }
            folders = [folder for folder in folders if folder.resolve() in used]
        for folder in folders:
            found[folder.name] = sorted(
                str(path.relative_to(folder))
                for path in folder.rglob("*")
                if (path.is_file() and path.suffix.lower() in MODEL_SUFFIXES)
                or (path.is_dir() and (path / "config.json").is_file())
            )
        return found
