"""transformers_binding without a server: embeddings and model kinds."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lollms_server.core.bindings import BindingManager
from lollms_server.core.config import config_from_dict
from lollms_server.core.errors import BadRequestError, NotFoundError


async def test_embeddings_are_normalized_and_models_are_checked(media_models_folder: Path) -> None:
    config = config_from_dict(
        {
            "server": {"auto_install_requirements": False},
            "bindings": {
                "hf": {
                    "type": "transformers_binding",
                    "device": "cpu",
                    "models_folder": str(media_models_folder / "transformers_binding"),
                }
            },
        },
        environ={},
    )
    binding = await BindingManager(config).get("hf")
    names = {model["name"] for model in await binding.list_available_models()}
    assert names == {"tiny-llama", "tiny-embedder"}
    await binding.load_model("tiny-embedder")
    vectors = await binding.embed("tiny-embedder", ["hello world", "a much longer sentence about foxes"])
    assert len(vectors) == 2 and len(vectors[0]) == 32
    assert all(math.isclose(sum(value * value for value in vector), 1.0, rel_tol=1e-4) for vector in vectors)
    assert binding.footprint_mb("tiny-embedder") > 0
    with pytest.raises(BadRequestError):  # an encoder cannot generate text
        await binding.tokenize("tiny-embedder", "x")
    with pytest.raises(NotFoundError):
        await binding.load_model("absent")
    with pytest.raises(BadRequestError):
        await binding.load_model("../escape")
    await binding.unload_model("tiny-embedder")
    assert binding.loaded_models() == []
