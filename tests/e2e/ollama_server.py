"""The server the Ollama API tests talk to (``test_ollama_api``, ``test_ollama_client_replays``):
the scripted echo binding (plus a slow one), the tiny GGUF models, the vision test binding and
the tiny embedding model, in one pool with idle unload."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import ADMIN_KEY, ServerProcess, running_server

BEARER = {"Authorization": f"Bearer {ADMIN_KEY}"}
IDLE_UNLOAD_SECONDS = 900


def embedder_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only the tiny embedding model (the other media models are not needed here)."""
    pytest.importorskip("torch")
    from tests.tiny_media_models import build_tiny_embedding_model

    root = tmp_path_factory.mktemp("embedder")
    build_tiny_embedding_model(root / "tiny-embedder")
    return root


@contextmanager
def ollama_test_server(
    tmp_path_factory: pytest.TempPathFactory, models_folder: Path
) -> Iterator[ServerProcess]:
    pools = {
        "default": {
            "limit": 1,
            "queue_size": 16,
            "queue_timeout": 60,
            "idle_unload_seconds": IDLE_UNLOAD_SECONDS,
        }
    }
    embedders = embedder_folder(tmp_path_factory)
    with running_server(
        tmp_path_factory.mktemp("ollama-api"),
        models_folder,
        resource_manager={"pools": pools},
        bindings={
            "echo": {"type": "scripted_binding", "model_name": "echo"},
            "slow_echo": {"type": "scripted_binding", "model_name": "echo", "delay": 0.5},
            "llm": {"type": "llamacpp_binding", "model_name": "tiny.gguf", "n_ctx": 2048, "n_threads": 1},
            "eyes": {"type": "vision_binding", "model_name": "eyes"},
            "hf": {"type": "transformers_binding", "device": "cpu", "models_folder": str(embedders)},
        },
    ) as process:
        yield process
