"""Shared fixtures: tiny models built once per session, configs, in-process apps, real servers."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from lollms_server.core.config import AppConfig, config_from_dict
from tests.processes import ServerProcess, free_port, start_lollms

__all__ = ["ServerProcess", "free_port"]  # re-exported for the test modules

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
USER_BINDINGS = TESTS / "fixtures" / "user_bindings"
GOOD_KEY = "test-key-generate-0123456789"
ADMIN_KEY = "test-key-admin-0123456789"
ONLY_ADMIN_KEY = "test-key-only-admin-0123456789"
LIMITED_KEY = "test-key-limited-0123456789"
AUTH = {"X-API-Key": ADMIN_KEY}


def base_config(tmp_path: Path, models_folder: Path | None = None, **sections: Any) -> dict[str, Any]:
    """A config mapping with test keys, the scripted user binding and a llama.cpp instance."""
    data: dict[str, Any] = {
        "server": {"auto_install_requirements": False},
        "logging": {"level": "WARNING"},
        "paths": {
            "bindings_folder": str(USER_BINDINGS),
            "personalities_folder": str(tmp_path / "personalities"),
            "functions_folder": str(tmp_path / "functions"),
            "models_folder": str(models_folder or tmp_path / "models"),
        },
        "security": {
            "api_keys": [
                {"key": GOOD_KEY, "name": "user", "scopes": ["generate"]},
                {"key": ADMIN_KEY, "name": "admin", "scopes": ["generate", "admin"]},
                {"key": ONLY_ADMIN_KEY, "name": "operator", "scopes": ["admin"]},
                {"key": LIMITED_KEY, "name": "limited", "scopes": ["generate"], "allowed_bindings": ["echo"]},
            ]
        },
        "defaults": {"ttt_binding": "echo", "ttt_model": "echo"},
        "resource_manager": {"pools": {"default": {"limit": 1, "queue_size": 16, "queue_timeout": 30}}},
        "bindings": {
            "echo": {"type": "scripted_binding", "api_token": "super-secret-token-value"},
            "llm": {"type": "llamacpp_binding", "model_name": "tiny.gguf", "n_ctx": 4096, "n_threads": 1},
        },
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **values}
        else:
            data[section] = values
    return data


@pytest.fixture(scope="session")
def models_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models folder with a tiny GGUF built from random weights (once per session)."""
    from tests.tiny_models import build_tiny_gguf

    root = tmp_path_factory.mktemp("models")
    build_tiny_gguf(root / "llamacpp_binding" / "tiny.gguf", seed=0)
    build_tiny_gguf(root / "llamacpp_binding" / "tiny2.gguf", seed=1)
    build_tiny_gguf(root / "llamacpp_binding" / "tiny3.gguf", seed=3)
    # wider, so a long generation lasts seconds (for disconnect tests)
    build_tiny_gguf(
        root / "llamacpp_binding" / "slow.gguf",
        hidden=384,
        intermediate=1536,
        layers=4,
        heads=4,
        kv_heads=4,
        seed=2,
    )
    return root


@pytest.fixture(scope="session")
def media_models_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random-weight media models, one sub-folder per binding type (built once per session)."""
    pytest.importorskip("torch")
    from tests import tiny_media_models as tiny

    root = tmp_path_factory.mktemp("media-models")
    tiny.build_tiny_stable_diffusion(root / "diffusers_binding" / "tiny-sd")
    tiny.build_tiny_wan(root / "diffusers_binding" / "tiny-wan")
    tiny.build_tiny_llama_hf(root / "transformers_binding" / "tiny-llama")
    tiny.build_tiny_embedding_model(root / "transformers_binding" / "tiny-embedder")
    tiny.build_tiny_musicgen(root / "transformers_audio_binding" / "tiny-musicgen")
    tiny.build_tiny_vits(root / "transformers_audio_binding" / "tiny-vits")
    tiny.build_tiny_whisper(root / "transformers_audio_binding" / "tiny-whisper")
    return root


def media_instance(kind: str, media_models_folder: Path, **settings: Any) -> dict[str, Any]:
    """A binding instance of ``kind`` on the CPU over the tiny media models of that kind."""
    return {"type": kind, "device": "cpu", "models_folder": str(media_models_folder / kind), **settings}


def media_sections(media_models_folder: Path) -> dict[str, Any]:
    """Config sections of the tiny diffusers and audio instances (``images``, ``audio``) and the
    defaults naming their models: the media half of several end-to-end servers."""
    return {
        "bindings": {
            "images": {**media_instance("diffusers_binding", media_models_folder), "default_steps": 2},
            "audio": media_instance("transformers_audio_binding", media_models_folder),
        },
        "defaults": {
            "tti_binding": "images",
            "tti_model": "tiny-sd",
            "tts_binding": "audio",
            "tts_model": "tiny-vits",
            "stt_binding": "audio",
            "stt_model": "tiny-whisper",
        },
    }


@pytest.fixture
def make_config(tmp_path: Path, models_folder: Path) -> Callable[..., AppConfig]:
    def make(**sections: Any) -> AppConfig:
        return config_from_dict(base_config(tmp_path, models_folder, **sections), base=tmp_path, environ={})

    return make


@pytest.fixture
async def app_client(make_config: Callable[..., AppConfig]) -> AsyncIterator[Callable[..., Any]]:
    """Factory of in-process clients: ``async with app_client(**sections) as client``."""
    from contextlib import asynccontextmanager

    from lollms_server.main import create_app

    @asynccontextmanager
    async def open_client(**sections: Any) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(make_config(**sections))
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                client.app = app  # type: ignore[attr-defined]
                yield client

    yield open_client


@contextmanager
def running_server(folder: Path, models_folder: Path, **sections: Any) -> Iterator[ServerProcess]:
    """A real server for ``base_config(**sections)``, stopped when the block ends."""
    server = start_lollms(base_config(folder, models_folder, **sections), folder, folder / "server.log")
    try:
        yield server
    finally:
        server.stop()


# Tests marked `distributed` start a Ray cluster whose nodes must listen on 127.0.0.1 only, so they
# run in a network namespace that has nothing but loopback (scripts/test.sh puts them there with
# `unshare -n`) and skip anywhere else. scripts/test.sh sets LOLLMS_TEST_PART ("local": the other
# tests only, "distributed": these only) and, when it cannot make the namespace, LOLLMS_TEST_NO_NETNS
# (why not).


def loopback_only_netns_missing() -> str | None:
    """Why this process is not in a network namespace with only loopback, up; None when it is."""
    import socket

    reason = os.environ.get("LOLLMS_TEST_NO_NETNS")
    if reason:
        return reason
    others = [name for _, name in socket.if_nameindex() if name != "lo"]
    if others:
        return (
            f"not in a loopback-only network namespace (interfaces {', '.join(others)}): "
            "scripts/test.sh runs these tests under `unshare -n`"
        )
    try:
        with socket.create_server(("127.0.0.1", 0)) as server:
            socket.create_connection(server.getsockname(), timeout=2).close()
    except OSError as exc:
        return f"loopback is down in this network namespace ({exc}): `ip link set lo up` first"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    part = os.environ.get("LOLLMS_TEST_PART")
    if part not in ("local", "distributed"):
        return
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        distributed = item.get_closest_marker("distributed") is not None
        (kept if distributed == (part == "distributed") else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("distributed") is not None:
        reason = loopback_only_netns_missing()
        if reason:
            pytest.skip(reason)
