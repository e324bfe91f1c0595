"""Import a Python file from disk under a chosen module name (bindings, functions, scripts)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def import_file(module_name: str, path: Path, package_folder: Path | None = None) -> ModuleType:
    """Execute ``path`` as module ``module_name`` (a package when ``package_folder`` is given).

    The module is registered in ``sys.modules`` while it runs (so it can import itself and its
    sub-modules) and removed again if it raises; the exception propagates unchanged.
    """
    locations = [str(package_folder)] if package_folder is not None else None
    spec = importlib.util.spec_from_file_location(module_name, path, submodule_search_locations=locations)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module
