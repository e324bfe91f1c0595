"""The one generation-type table agrees with the Literal, the Binding contract and MEDIA_METHODS."""

from __future__ import annotations

import inspect
import typing

import pytest

from lollms_server.core.bindings import MEDIA_METHODS, Binding
from lollms_server.core.types import (
    CHAT_ROLES,
    GENERATION_KINDS,
    GENERATION_TYPES,
    PROMPT_ROLES,
    CardGenerationType,
    GenerateRequest,
    GenerationTypeName,
)


def test_generation_kinds_match_the_generation_type_literal() -> None:
    assert tuple(GENERATION_KINDS) == typing.get_args(GenerationTypeName)
    assert GENERATION_TYPES == tuple(GENERATION_KINDS)


def test_each_kind_is_keyed_by_its_name() -> None:
    assert all(name == kind.name for name, kind in GENERATION_KINDS.items())


def test_cards_may_declare_the_generation_types_and_embed() -> None:
    assert set(typing.get_args(CardGenerationType)) == {*GENERATION_TYPES, "embed"}


@pytest.mark.parametrize("name", list(GENERATION_KINDS))
def test_every_kind_method_is_an_async_method_of_binding(name: str) -> None:
    method = getattr(Binding, GENERATION_KINDS[name].method, None)
    assert method is not None, f"Binding has no {GENERATION_KINDS[name].method} for {name}"
    assert inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method)


def test_text_is_streamed_and_media_methods_cover_every_other_kind() -> None:
    assert GENERATION_KINDS["ttt"].method == "stream_text"
    assert set(MEDIA_METHODS) == set(GENERATION_KINDS) - {"ttt"}
    assert MEDIA_METHODS == {name: kind.method for name, kind in GENERATION_KINDS.items() if name != "ttt"}


def test_media_kinds_that_need_a_prompt() -> None:
    needs = {name for name, kind in GENERATION_KINDS.items() if kind.needs_prompt}
    assert needs == {"tti", "i2i", "ttv", "ttm", "tts"}, "text reads chat turns, stt reads audio"


def test_prompt_roles_are_the_roles_of_user_turns() -> None:
    assert PROMPT_ROLES == {"user_prompt", "user", "prompt"}
    assert all(CHAT_ROLES[role] == "user" for role in PROMPT_ROLES)


def test_generate_request_accepts_every_generation_type() -> None:
    for name in GENERATION_TYPES:
        assert GenerateRequest(prompt="x", generation_type=name).generation_type == name
