"""Installed models of a binding instance: what kind of files it loads (its card's
``model_files``), where a model lives, listing with sizes, and deleting (blocking helpers:
call them from a worker thread).

``model_files: gguf`` — a model is one ``.gguf`` file (split files: their first part) anywhere
below the models folder; ``model_files: snapshot`` — a model is a folder holding
``config.json`` or ``model_index.json``. Cards without the key keep no pullable files.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lollms_server.core.bindings import BindingInstance
from lollms_server.core.errors import BadRequestError, NotFoundError
from lollms_server.core.models.hub import MARKERS
from lollms_server.utils.paths import printable, safe_join

MODEL_FILES = ("gguf", "snapshot")


def model_files_of(instance: BindingInstance) -> str:
    """``gguf`` or ``snapshot`` (400 for a binding whose models are not files, e.g. a remote API)."""
    kind = (instance.card.model_extra or {}).get("model_files")
    if kind not in MODEL_FILES:
        raise BadRequestError(
            f"Binding '{instance.name}' ({instance.card.type_name}) keeps no model files to pull.",
            param="binding",
        )
    return str(kind)


def model_path(instance: BindingInstance, model: str) -> Path:
    """The file or folder of an installed ``model`` (400 if the name escapes, 404 if absent)."""
    kind = model_files_of(instance)
    path = safe_join(instance.models_folder, model)
    if path.resolve() == instance.models_folder.resolve():  # "." names the whole models folder
        raise NotFoundError(f"Model '{printable(model)}' is not installed for binding '{instance.name}'.")
    if kind == "gguf" and path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if kind == "snapshot" and path.is_dir() and any((path / marker).is_file() for marker in MARKERS):
        return path
    raise NotFoundError(f"Model '{printable(model)}' is not installed for binding '{instance.name}'.")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def installed_models(instance: BindingInstance) -> list[dict[str, Any]]:
    """``[{name, size}]`` of the instance's models (size in bytes), by name."""
    kind = model_files_of(instance)
    root = instance.models_folder
    if not root.is_dir():
        return []
    if kind == "gguf":
        found = [path for path in root.rglob("*.gguf") if path.is_file()]
    else:
        folders = sorted({marker.parent for name in MARKERS for marker in root.rglob(name)})
        found = []
        for folder in folders:  # a pipeline's components (unet/config.json) are not models
            if not any(folder.is_relative_to(outer) for outer in found):
                found.append(folder)
    return sorted(
        ({"name": path.relative_to(root).as_posix(), "size": _size(path)} for path in found),
        key=lambda item: item["name"],
    )


def delete_installed(instance: BindingInstance, path: Path) -> None:
    """Remove a model's file or folder (and a ``.part`` beside it), then empty parent folders."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".part").unlink(missing_ok=True)
    root = instance.models_folder.resolve()
    parent = path.parent
    while parent.resolve() != root and parent.resolve().is_relative_to(root):
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break
        parent = parent.parent
