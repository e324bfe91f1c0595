"""Importing a lollms_client binding folder and constructing its object the way LollmsClient does."""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lollms_server.core.bindings.cards import BindingCard
from lollms_server.core.bindings.lollms_client_adapter.cards import EXTRA_KWARGS, lollms_client_info
from lollms_server.core.errors import BindingError
from lollms_server.utils.modules import import_file

logger = logging.getLogger(__name__)

BASE_CLASSES = {
    "llm": ("lollms_client.lollms_llm_binding", "LollmsLLMBinding"),
    "tti": ("lollms_client.lollms_tti_binding", "LollmsTTIBinding"),
    "tts": ("lollms_client.lollms_tts_binding", "LollmsTTSBinding"),
    "stt": ("lollms_client.lollms_stt_binding", "LollmsSTTBinding"),
    "ttm": ("lollms_client.lollms_ttm_binding", "LollmsTTMBinding"),
    "ttv": ("lollms_client.lollms_ttv_binding", "LollmsTTVBinding"),
}
"""Modality -> lollms_client's base class (module, name) its bindings derive from."""
INSTALL_HINT = "install lollms_server[lollms_client] (scripts/install.sh lollms_client)"


def base_class(modality: str) -> Any:
    """lollms_client's base class of ``modality`` (a clear BindingError without lollms_client)."""
    module_name, class_name = BASE_CLASSES[modality]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BindingError(
            f"lollms_client bindings need the lollms-client package ({exc.name or 'missing'}): "
            f"{INSTALL_HINT}."
        ) from exc
    return getattr(module, class_name)


_PIPMASTER_LOCK = threading.Lock()


@contextmanager
def installs_allowed(allowed: bool) -> Iterator[None]:
    """While a lollms_client binding imports and starts: with ``allowed`` false
    (``server.auto_install_requirements = false``), its ``pipmaster.ensure_packages`` calls only
    check (pipmaster's dry run), so a missing package is a clear import error, not a pip run in
    the server's interpreter."""
    if allowed:
        yield
        return
    import pipmaster

    with _PIPMASTER_LOCK:
        original = pipmaster.ensure_packages

        def check_only(requirements: Any, *args: Any, **kwargs: Any) -> bool:
            kwargs["dry_run"] = True
            return bool(original(requirements, *args, **kwargs))

        pipmaster.ensure_packages = check_only
        try:
            yield
        finally:
            pipmaster.ensure_packages = original


def binding_class(card: BindingCard) -> type:
    """The folder's ``BindingName`` class, checked to derive from its modality's base."""
    info = lollms_client_info(card)
    base = base_class(info["modality"])
    assert card.folder is not None
    module_name = f"lollms_client_bindings.{card.type_name}"
    module = sys.modules.get(module_name)
    if module is None:
        try:
            module = import_file(module_name, card.folder / "__init__.py", package_folder=card.folder)
        except ImportError as exc:
            logger.error("lollms_client binding %s cannot be imported: %s", card.type_name, exc)
            raise BindingError(
                f"Binding type '{card.type_name}' is missing a dependency ({exc.name or 'unknown'})."
            ) from exc
        except Exception as exc:
            logger.exception("lollms_client binding %s failed to import", card.type_name)
            raise BindingError(f"Binding type '{card.type_name}' failed to import.") from exc
    class_name = getattr(module, "BindingName", None)
    found = getattr(module, class_name, None) if isinstance(class_name, str) else None
    if not (isinstance(found, type) and issubclass(found, base)):
        raise BindingError(
            f"Binding type '{card.type_name}' does not define a BindingName class derived from "
            f"lollms_client's {base.__name__}."
        )
    return found


def constructor_kwargs(
    card: BindingCard, settings: dict[str, Any], model_name: str | None, system_dir: Path
) -> dict[str, Any]:
    """What LollmsClient passes (``_instantiate_binding_from_profile``): the settings the instance
    set (None = not set: the binding keeps its own default), ``extra_kwargs`` verbatim,
    ``model_name``, ``debug``; ``user_name``/``ai_name`` for text, ``wait_for_server`` for
    media; ``system_dir`` so nothing lands in the server's working folder."""
    modality = lollms_client_info(card)["modality"]
    kwargs: dict[str, Any] = {
        key: value for key, value in settings.items() if key != EXTRA_KWARGS and value is not None
    }
    kwargs.update(settings.get(EXTRA_KWARGS) or {})
    if model_name:
        kwargs.setdefault("model_name", model_name)
    kwargs.setdefault("debug", False)
    if modality == "llm":
        kwargs.setdefault("user_name", "user")
        kwargs.setdefault("ai_name", "assistant")
    else:
        kwargs.setdefault("wait_for_server", True)
    kwargs.setdefault("system_dir", str(system_dir))
    kwargs.setdefault("cwd", str(system_dir))
    return kwargs


def construct(card: BindingCard, kwargs: dict[str, Any], auto_install: bool = True) -> Any:
    """Import the class and build the object (blocking: run in a thread); without
    ``auto_install`` the binding's pipmaster calls only check (see ``installs_allowed``)."""
    with installs_allowed(auto_install):
        cls = binding_class(card)
        try:
            return cls(**kwargs)
        except ImportError as exc:
            raise BindingError(
                f"Binding type '{card.type_name}' is missing a dependency ({exc.name or 'unknown'})."
            ) from exc
        except Exception as exc:
            logger.exception("lollms_client binding %s failed to start", card.type_name)
            raise BindingError(
                f"Binding type '{card.type_name}' failed to start: {type(exc).__name__}."
            ) from exc
