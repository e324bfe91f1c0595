"""The family registry (``api.families``): which family owns a path, one mount for all."""

from __future__ import annotations

import pytest

from lollms_server.api import families
from lollms_server.api.kit.family import Family


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v1/chat/completions", "openai"),
        ("/v1/models", "openai"),
        ("/v1/messages", "anthropic"),
        ("/v1/messages/count_tokens", "anthropic"),
        ("/v1/messagesx", "openai"),
        ("/api/chat", "ollama"),
        ("/api/v1x", "ollama"),
        ("/api/v1", "native"),
        ("/api/v1/generate", "native"),
        ("/lollms/v1/tokenize", "native"),
        ("/health", None),
    ],
)
def test_the_longest_prefix_owns_a_path(path: str, name: str | None) -> None:
    family = families.claiming(path)
    assert (family.name if family else None) == name


def test_every_registered_family_is_a_family_with_its_routes() -> None:
    found = families.registered()
    assert [family.name for family in found] == list(families.FAMILIES)
    assert all(isinstance(family, Family) for family in found)
    for family in found:
        for router in family.routers:
            for route in router.routes:
                owner = families.claiming(getattr(route, "path", ""))
                assert owner is family, (family.name, getattr(route, "path", ""))
