"""The web playground and dashboard: static pages served at ``/`` and ``/ui/...``.

The files live in ``lollms_server/ui/static/`` (plain ES modules, no build step, no third-party
code) and ship in the wheel. The pages need no key to load (``UI_PUBLIC_PATHS`` and
``UI_PUBLIC_PREFIX`` are public in the key gate); every API call they make sends the key the user
signed in with. Every page answer carries a strict Content-Security-Policy: no inline script or
style, and the page may only talk to this server.
"""

from __future__ import annotations

from pathlib import Path

import anyio
from fastapi import APIRouter
from fastapi.responses import FileResponse

from lollms_server.errors import NotFoundError
from lollms_server.utils.paths import is_safe_name

STATIC_FOLDER = Path(__file__).resolve().parent.parent / "ui" / "static"
UI_PUBLIC_PATHS = frozenset({"/", "/favicon.ico"})
UI_PUBLIC_PREFIX = "/ui/"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' data: blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

router = APIRouter(include_in_schema=False)


async def _static_file(name: str) -> FileResponse:
    """One file of the static folder, with the security headers; 404 for anything else (no
    sub-folders, no hidden files, no other suffixes)."""
    suffix = Path(name).suffix
    if not is_safe_name(name) or suffix not in MEDIA_TYPES:  # one plain name: no folders, no dot files
        raise NotFoundError("No such page.")
    path = STATIC_FOLDER / name
    if not await anyio.to_thread.run_sync(path.is_file):
        raise NotFoundError("No such page.")
    return FileResponse(path, media_type=MEDIA_TYPES[suffix], headers=SECURITY_HEADERS)


@router.get("/")
async def index() -> FileResponse:
    """The single page: sign-in, chat, media and dashboard views."""
    return await _static_file("index.html")


@router.get("/favicon.ico")
async def favicon() -> FileResponse:
    return await _static_file("favicon.svg")


@router.get("/ui/{name}")
async def static_file(name: str) -> FileResponse:
    """The page's scripts, style sheet and icon."""
    return await _static_file(name)
