"""Bounds of the ``stop`` parameter, the same on every route (native, ``/v1``, Ollama, jobs).

Each stop string is matched against every generated token (see
:class:`~lollms_server.core.bindings.text.StopTextBuffer`), so the list a request may send is
bounded: at most :data:`MAX_STOPS` strings of at most :data:`MAX_STOP_CHARS` characters,
:data:`MAX_STOP_TOTAL_CHARS` in all. A personality's anti-prompts, added to the request's stops,
have the same bounds (checked when the personality loads).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

MAX_STOPS = 16
MAX_STOP_CHARS = 256
MAX_STOP_TOTAL_CHARS = 2048


def checked_stops(stop: str | list[str] | None) -> str | list[str] | None:
    """``stop`` unchanged, or ValueError naming the bound it breaks (pydantic makes it a 400)."""
    if stop is None:
        return None
    stops = [stop] if isinstance(stop, str) else stop
    if len(stops) > MAX_STOPS:
        raise ValueError(f"at most {MAX_STOPS} stop sequences are allowed, got {len(stops)}")
    longest = max((len(item) for item in stops), default=0)
    if longest > MAX_STOP_CHARS:
        raise ValueError(f"a stop sequence may have at most {MAX_STOP_CHARS} characters, got {longest}")
    total = sum(len(item) for item in stops)
    if total > MAX_STOP_TOTAL_CHARS:
        raise ValueError(f"the stop sequences may have at most {MAX_STOP_TOTAL_CHARS} characters in all")
    return stop


Stop = Annotated[str | list[str] | None, AfterValidator(checked_stops)]
"""The type of a request's ``stop`` field."""


def checked_anti_prompts(anti_prompts: list[str]) -> list[str]:
    checked = checked_stops(anti_prompts)
    assert isinstance(checked, list)
    return checked


AntiPrompts = Annotated[list[str], AfterValidator(checked_anti_prompts)]
"""The type of a personality's ``anti_prompts``."""
