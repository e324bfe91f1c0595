"""GenerationService.preload and .unload: what Ollama's empty prompt and keep_alive 0 call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from lollms_server.core.errors import PermissionDeniedError
from lollms_server.core.security import Principal


async def test_preload_makes_resident_and_unload_frees(app_client: Callable[..., Any]) -> None:
    async with app_client() as client:
        generation = client.app.state.generation
        user = Principal("user")
        target = await generation.preload(user, "ttt", "echo", "other")
        assert (target.name, target.model) == ("echo", "other")
        entry = generation.resources.models[("echo", "other")]
        assert entry.in_use == 0  # resident, used by nobody
        assert generation.pools.snapshot()["pools"][0]["active"] == 0  # the slot was given back
        assert await generation.unload(user, target) is False  # a generate key never unloads
        assert ("echo", "other") in generation.resources.models
        admin = Principal("admin", scopes=frozenset({"generate", "admin"}))
        assert await generation.unload(admin, target) is True
        assert ("echo", "other") not in generation.resources.models
        assert await generation.unload(admin, target) is False  # nothing left to unload

        limited = Principal("limited", allowed_bindings=frozenset({"echo"}))
        with pytest.raises(PermissionDeniedError):
            await generation.preload(limited, "ttt", "llm", "tiny.gguf")
        with pytest.raises(PermissionDeniedError):
            await generation.unload(limited, generation.resolve(user, "ttt", "llm", "tiny.gguf"))
