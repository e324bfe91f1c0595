"""The API families, registered in one place: each is a package under ``lollms_server.api``
whose ``FAMILY`` (a :class:`lollms_server.api.kit.family.Family`) names its URL prefixes, its
routers, its validation status and its error shape.

Adding a family is one package plus one line in :data:`FAMILIES`:

1. Write ``lollms_server/api/<family>/`` with ``protocol.py`` (request bodies), ``translate.py``
   (request -> native ``GenerateRequest`` through ``kit.chat`` / ``kit.names`` / ``kit.native``;
   native answers and ``kit.events`` -> the family's answer and frames), ``routes.py`` (an
   ``APIRouter`` delivering through ``kit.deliver``) and, in ``__init__.py``,
   ``FAMILY = Family(name, prefixes, routers, validation_status, error_shape)``.
2. Add ``"<family>": "lollms_server.api.<family>:FAMILY"`` to :data:`FAMILIES`.

``main.create_app`` calls :func:`mount` (routers, in registry order) and installs
``kit.errors.FamilyErrorShape``; ``api/errors.py`` asks :func:`claiming` which family owns a
path for its validation status. Families import the kit, never each other.
"""

from __future__ import annotations

import importlib
from functools import cache

from fastapi import FastAPI

from lollms_server.api.kit.family import Family

FAMILIES: dict[str, str] = {
    "native": "lollms_server.api.native_family:FAMILY",
    "openai": "lollms_server.api.openai_compat:FAMILY",
    "ollama": "lollms_server.api.ollama_compat:FAMILY",
    "anthropic": "lollms_server.api.anthropic:FAMILY",
    "responses": "lollms_server.api.responses:FAMILY",
}
"""Family name -> ``module:attribute`` of its :class:`Family` (imported on first use)."""


@cache
def registered() -> tuple[Family, ...]:
    """Every registered family, in registry order."""
    found = []
    for name, where in FAMILIES.items():
        module, _, attribute = where.partition(":")
        family = getattr(importlib.import_module(module), attribute)
        assert isinstance(family, Family) and family.name == name, where
        found.append(family)
    return tuple(found)


def claiming(path: str) -> Family | None:
    """The family owning ``path`` (the longest matching prefix), or None."""
    best: Family | None = None
    length = 0
    for family in registered():
        owned = family.owns(path)
        if owned > length:
            best, length = family, owned
    return best


def mount(app: FastAPI) -> None:
    """Include every family's routers."""
    for family in registered():
        for router in family.routers:
            app.include_router(router)
