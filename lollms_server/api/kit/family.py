"""What an API family declares to the registry (``lollms_server.api.families``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter

ErrorShape = Callable[[int, Any], tuple[int, dict[str, Any]]]
"""(status, the server's error body) -> (status, the family's error body)."""


@dataclass(frozen=True)
class Family:
    """One API family.

    ``prefixes``: the URL paths it owns (a prefix owns itself and what is below it, segment by
    segment: ``/v1`` owns ``/v1/models``, not ``/v1x``); the longest prefix of any family wins,
    so ``/v1/messages`` (Anthropic) is carved out of ``/v1`` (OpenAI) and ``/api/v1`` (native)
    out of ``/api`` (Ollama). ``routers``: mounted once, in registry order. ``validation_status``:
    the status of a body that fails its schema (422 natively; 400 where the family's clients
    expect it). ``error_shape``: rewrites every JSON error answered on the family's paths, from
    the key gate, a route, a validation error, the body limit or the last-resort 500 (None: the
    server's own shape).
    """

    name: str
    prefixes: tuple[str, ...]
    routers: tuple[APIRouter, ...] = ()
    validation_status: int = 422
    error_shape: ErrorShape | None = None

    def owns(self, path: str) -> int:
        """The length of this family's longest prefix of ``path`` (0: none)."""
        best = 0
        for prefix in self.prefixes:
            bare = prefix.rstrip("/")
            if (path == bare or path.startswith(bare + "/")) and len(bare) + 1 > best:
                best = len(bare) + 1
        return best
