"""The one model listing of every family (``api.kit.catalog``), on the suite's echo and tiny
llama.cpp instances."""

from __future__ import annotations

from typing import Any

import pytest

from lollms_server.api.kit.catalog import kind, known_model, listings
from lollms_server.core.errors import NotFoundError, PermissionDeniedError
from tests.conftest import AUTH, LIMITED_KEY


def principal_of(client: Any, key: str) -> Any:
    return client.app.state.keys.authenticate(key)


async def test_listings_are_the_key_s_instances_and_their_models(app_client: Any) -> None:
    async with app_client() as client:
        generation = client.app.state.generation
        admin = principal_of(client, AUTH["X-API-Key"])
        found = {listing.instance.name: listing.models for listing in await listings(generation, admin)}
        assert list(found) == list(generation.bindings.instances)  # config order
        assert [model["name"] for model in found["echo"] or []] == ["echo", "other"]
        limited = await listings(generation, principal_of(client, LIMITED_KEY))
        assert [listing.instance.name for listing in limited] == ["echo"]
        texts = await listings(generation, admin, lambda instance: kind(instance) == "embed")
        assert all("embed" in listing.instance.card.generation_types for listing in texts)


async def test_every_family_lists_the_same_models(app_client: Any) -> None:
    async with app_client() as client:
        openai = (await client.get("/v1/models", headers=AUTH)).json()["data"]
        lollms = (await client.get("/lollms/v1/llm/models", headers=AUTH)).json()["data"]
        tags = (await client.get("/api/tags", headers=AUTH)).json()["models"]
    named = {model["id"] for model in openai if "/" in model["id"]}
    assert named == {model["id"] for model in lollms}
    assert named == {tag["name"].removesuffix(":latest") for tag in tags if "/" in tag["name"]}


async def test_known_model_refuses_before_it_looks(app_client: Any) -> None:
    async with app_client() as client:
        generation = client.app.state.generation
        admin = principal_of(client, AUTH["X-API-Key"])
        target, _ = await known_model(generation, admin, "echo", "other")
        assert (target.instance.name, target.model) == ("echo", "other")
        with pytest.raises(NotFoundError, match="model 'echo/nope:latest' not found"):
            await known_model(generation, admin, "echo", "nope", "echo/nope:latest")
        with pytest.raises(PermissionDeniedError):
            await known_model(generation, principal_of(client, LIMITED_KEY), "llm", None)
