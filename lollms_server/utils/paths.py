"""Path helpers that keep user-supplied names inside their folder."""

from __future__ import annotations

import re
from pathlib import Path

from lollms_server.errors import BadRequestError

_FORBIDDEN_CHARS = set('\x00\r\n\t:*?"<>|')
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def shipped(name: str) -> Path:
    """A file or folder shipped with the server (``zoos``, ``config.toml.example``): the copy
    inside an installed wheel (``lollms_server/data/``), else the source tree's."""
    installed = PACKAGE_ROOT / "data" / name
    return installed if installed.exists() else PACKAGE_ROOT.parent / name


def safe_join(root: Path, name: str, *, param: str = "model_name") -> Path:
    """Join ``name`` under ``root``; reject names that are absolute or escape ``root`` (400).

    Sub-folders are allowed (``family/model.gguf``); ``..``, absolute paths, drive letters,
    control characters and symlinks pointing outside the folder are not.
    """
    validate_model_name(name, param=param)
    relative = Path(name)
    if relative.is_absolute():
        raise BadRequestError(f"Invalid {param}: it must stay inside its folder.", param=param)
    root_resolved = root.resolve()
    candidate = (root_resolved / relative).resolve()
    if candidate != root_resolved and root_resolved not in candidate.parents:
        raise BadRequestError(f"Invalid {param}: it must stay inside its folder.", param=param)
    return candidate


def printable(name: str) -> str:
    """``name`` safe to echo in a message: control characters replaced, at most 80 characters."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in name)
    return cleaned[:80]


def is_safe_name(name: str) -> bool:
    """A single folder/instance name: letters, digits, '-', '_' and '.' (not leading)."""
    return (
        bool(name)
        and len(name) <= 128
        and not name.startswith(".")
        and all(ch.isalnum() or ch in "-_." for ch in name)
    )


def validate_model_name(name: str, *, param: str = "model_name") -> None:
    """Reject model names that could escape a folder, before any binding sees them (400)."""
    if not name or len(name) > 512 or any(ch in _FORBIDDEN_CHARS for ch in name) or "\\" in name:
        raise BadRequestError(f"Invalid {param}: '{printable(name)}'.", param=param)
    if name.startswith("/") or any(part == ".." for part in name.split("/")):
        raise BadRequestError(f"Invalid {param}: it must stay inside its folder.", param=param)


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")


def without_userinfo(text: str) -> str:
    """``text`` with the credentials of any URL in it masked (``http://user:pw@host`` becomes
    ``http://***@host``), for listings and messages."""
    return _USERINFO.sub(lambda match: match.group("scheme") + "***@", text)
