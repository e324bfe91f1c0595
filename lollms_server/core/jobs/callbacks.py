"""Completion callbacks: a job's ``callback_url`` gets one ``POST`` of the job's status when it
ends. Only hosts listed in ``jobs.allowed_callback_hosts`` may be named (checked at submission,
400 otherwise); the call is asynchronous (never on the loop's critical path), bounded by
``jobs.callback_timeout``, and never follows a redirect, so it cannot be bounced elsewhere."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import httpx

from lollms_server.core.errors import BadRequestError

logger = logging.getLogger(__name__)


def check_callback_url(url: str, allowed_hosts: list[str]) -> str:
    """``url`` when it is http(s) and names an allowed host (``host`` or ``host:port``), else 400."""
    if any(ord(character) < 33 or ord(character) == 127 for character in url):
        raise BadRequestError("callback_url may not hold spaces or control characters.", param="callback_url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BadRequestError("callback_url is not a valid URL.", param="callback_url") from None
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host or parts.username or parts.password:
        raise BadRequestError(
            "callback_url must be an http(s) URL without credentials.", param="callback_url"
        )
    allowed = {entry.lower() for entry in allowed_hosts}
    if host not in allowed and (port is None or f"{host}:{port}" not in allowed):
        raise BadRequestError(
            "callback_url names a host that is not in jobs.allowed_callback_hosts.", param="callback_url"
        )
    return url


async def notify(url: str, payload: dict[str, Any], timeout: float) -> bool:
    """POST ``payload`` to ``url``; True on a 2xx answer. Failures are logged, never raised."""
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            response = await client.post(url, json=payload)
    except httpx.HTTPError as exc:
        logger.warning("Job callback for %s failed: %s", payload.get("id"), type(exc).__name__)
        return False
    if not response.is_success:
        logger.warning("Job callback for %s answered %d", payload.get("id"), response.status_code)
        return False
    return True
