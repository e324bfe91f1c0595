"""How deeply JSON nests, found without recursion: request values nested deeper than Python's
recursion limit would otherwise end in a RecursionError (a 500) wherever they are read or
written again."""

from __future__ import annotations

from typing import Any

MAX_TOOL_ARGUMENT_DEPTH = 64
"""Nesting of a replayed tool call's arguments (deeper: 400), far below Python's ~1000."""


def nests_deeper(value: Any, limit: int) -> bool:
    """Whether ``value`` (JSON text, or dicts and lists) nests deeper than ``limit``."""
    return json_depth_over(value, limit) if isinstance(value, str) else value_depth_over(value, limit)


def json_depth_over(text: str, limit: int) -> bool:
    """Whether the JSON text nests objects or arrays deeper than ``limit`` (one linear scan, no
    recursion; brackets inside strings are skipped)."""
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def value_depth_over(value: Any, limit: int) -> bool:
    """Whether dicts and lists nest deeper than ``limit`` in ``value`` (iterative)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False
