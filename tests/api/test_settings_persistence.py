"""Persisted settings changes (``PUT /api/v1/bindings/{instance}/settings?persist=true``): what
is written reads back through the server's own loader to what is applied (else 400, nothing
applied), the file keeps its mode, concurrent changes never tear or lose the file, a planted temp
name is never followed; and a request waiting for a settings change holds no pool slot."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, base_config

pytest.importorskip("tomlkit")

ADMIN = {"X-API-Key": ADMIN_KEY}
URL = "/api/v1/bindings/echo/settings?persist=true"


def write_config(tmp_path: Path, models_folder: Path) -> Path:
    import toml

    path = tmp_path / "config.toml"
    path.write_text(toml.dumps(base_config(tmp_path, models_folder)), encoding="utf-8")
    return path


@asynccontextmanager
async def served(path: Path) -> AsyncIterator[httpx.AsyncClient]:
    from lollms_server.core.config import load_config
    from lollms_server.main import create_app

    app = create_app(load_config(path))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


def restarts(path: Path) -> dict[str, Any]:
    """What the next start reads: the loader, then the instance against its card."""
    from lollms_server.core.bindings import BindingManager
    from lollms_server.core.config import load_config

    config = load_config(path, environ={})
    return BindingManager(config).instance("echo").settings


async def test_a_mixed_array_is_persisted_and_the_server_restarts(
    tmp_path: Path, models_folder: Path
) -> None:
    """T3-09: tomlkit wrote TOML 1.0 the old loader refused: 200, then no restart."""
    path = write_config(tmp_path, models_folder)
    async with served(path) as client:
        changed = await client.put(
            URL, json={"settings": {"extra_kwargs": {"voices": ["default", 2]}}}, headers=ADMIN
        )
        assert changed.status_code == 200, changed.text
    assert restarts(path)["extra_kwargs"] == {"voices": ["default", 2]}


async def test_the_file_keeps_its_mode(tmp_path: Path, models_folder: Path) -> None:
    """T3-10: a 0600 config (it holds the keys) became 0644 after a persisted change."""
    path = write_config(tmp_path, models_folder)
    path.chmod(0o600)
    previous = os.umask(0o022)
    try:
        async with served(path) as client:
            changed = await client.put(
                URL, json={"settings": {"delay": 0.0, "api_token": "S3CRET-0123"}}, headers=ADMIN
            )
            assert changed.status_code == 200, changed.text
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert restarts(path)["api_token"] == "S3CRET-0123"


async def test_concurrent_persisted_changes_all_succeed_and_agree_with_memory(
    tmp_path: Path, models_folder: Path
) -> None:
    """T3-15: 40 concurrent persisted PUTs gave 500s (one fixed temp name) and lost updates."""
    path = write_config(tmp_path, models_folder)
    async with served(path) as client:

        async def put(index: int) -> int:
            key = "delay" if index % 2 else "size_mb"
            value = float(index) / 1000 if key == "delay" else float(index)
            response = await client.put(URL, json={"settings": {key: value}}, headers=ADMIN)
            return response.status_code

        statuses = await asyncio.gather(*(put(index) for index in range(40)))
        assert statuses == [200] * 40
        memory = client.app.state.bindings.instance("echo").settings  # type: ignore[attr-defined]
        in_file = restarts(path)
        assert {key: in_file[key] for key in ("delay", "size_mb")} == {
            key: memory[key] for key in ("delay", "size_mb")
        }
        assert in_file["delay"] in {index / 1000 for index in range(1, 40, 2)}
        assert in_file["size_mb"] in {float(index) for index in range(0, 40, 2)}
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


async def test_a_planted_temp_name_is_never_followed(tmp_path: Path, models_folder: Path) -> None:
    """R-09: the fixed temp name, planted as a link, made the write overwrite the link's target."""
    path = write_config(tmp_path, models_folder)
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched", encoding="utf-8")
    (tmp_path / ".config.toml.tmp").symlink_to(victim)
    async with served(path) as client:
        changed = await client.put(URL, json={"settings": {"delay": 0.03}}, headers=ADMIN)
        assert changed.status_code == 200, changed.text
    assert victim.read_text(encoding="utf-8") == "untouched"
    assert restarts(path)["delay"] == 0.03


def test_a_taken_temp_name_is_skipped_not_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even the random temp name, when planted (as a link), is skipped (O_EXCL|O_NOFOLLOW)."""
    from lollms_server.core.generation import binding_admin

    path = tmp_path / "config.toml"
    path.write_text("a = 1\n", encoding="utf-8")
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched", encoding="utf-8")
    (tmp_path / ".config.toml.planted.tmp").symlink_to(victim)
    names = iter(["planted", "fresh"])
    monkeypatch.setattr(binding_admin.secrets, "token_hex", lambda _: next(names))
    binding_admin.replace_file(path, b"a = 2\n")
    assert path.read_text() == "a = 2\n" and victim.read_text() == "untouched"
    assert sorted(os.listdir(tmp_path)) == [".config.toml.planted.tmp", "config.toml", "victim.txt"]


@pytest.mark.parametrize(
    "settings",
    [{"extra_kwargs": {"voice": None}}, {"extra_kwargs": {"voices": ["a", None]}}, {"delay": None}],
)
async def test_a_value_the_file_cannot_hold_is_a_400_and_nothing_is_applied(
    tmp_path: Path, models_folder: Path, settings: dict[str, Any]
) -> None:
    """T3-18: a null was applied in memory, then the write failed with a 500."""
    path = write_config(tmp_path, models_folder)
    before = path.read_bytes()
    async with served(path) as client:
        instance = client.app.state.bindings.instance("echo")  # type: ignore[attr-defined]
        applied = dict(instance.settings)
        refused = await client.put(URL, json={"settings": settings}, headers=ADMIN)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["type"] == "invalid_request_error"
        assert instance.settings == applied
    assert path.read_bytes() == before


async def test_a_request_waiting_for_a_settings_change_holds_no_pool_slot(app_client: Any) -> None:
    """T3-12: a request parked at its instance's gate kept its pool slot, so another instance of
    the same pool got 503 for as long as the running generation lasted."""
    sections = {
        "resource_manager": {"pools": {"default": {"limit": 2, "queue_size": 16, "queue_timeout": 2}}},
        "bindings": {
            "echo": {"type": "scripted_binding"},
            "echo2": {"type": "scripted_binding"},
        },
    }
    async with app_client(**sections) as client:
        state = client.app.state  # type: ignore[attr-defined]
        gate = state.generation.gates.of("echo")

        def generate(binding: str, words: int, delay: float) -> Any:
            body = {
                "prompt": " ".join(["w"] * words),
                "binding_name": binding,
                "parameters": {"delay": delay},
            }
            return asyncio.ensure_future(client.post("/api/v1/generate", json=body, headers=ADMIN))

        long = generate("echo", 12, 0.3)  # about 3.6 s
        for _ in range(300):
            if gate.running:
                break
            await asyncio.sleep(0.01)
        change = asyncio.ensure_future(
            client.put("/api/v1/bindings/echo/settings", json={"settings": {"size_mb": 11.0}}, headers=ADMIN)
        )
        for _ in range(300):
            if gate._changing:
                break
            await asyncio.sleep(0.01)
        parked = generate("echo", 1, 0.0)  # waits for the change
        await asyncio.sleep(0.3)
        other = await client.post(
            "/api/v1/generate",
            json={"prompt": "hi", "binding_name": "echo2", "model_name": "echo"},
            headers=ADMIN,
        )
        assert other.status_code == 200, other.text  # it had a slot to take: no 503 after queue_timeout
        assert not long.done(), "the long generation should still run (the test proves nothing)"
        assert (await long).status_code == 200
        assert (await change).status_code == 200
        assert (await parked).status_code == 200


async def test_a_settings_change_gives_up_after_its_wait_and_changes_nothing(
    app_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """T3-12: the PUT had no deadline, so a change pending behind a long generation stalled every
    new request of the instance for as long as that generation ran."""
    from lollms_server.core.generation.binding_admin import BindingAdmin

    monkeypatch.setattr(BindingAdmin, "change_wait_seconds", 0.5)
    sections = {
        "resource_manager": {"pools": {"default": {"limit": 2, "queue_size": 16, "queue_timeout": 10}}}
    }
    async with app_client(**sections) as client:
        state = client.app.state  # type: ignore[attr-defined]
        gate = state.generation.gates.of("echo")
        body = {
            "prompt": "w " * 12,
            "binding_name": "echo",
            "model_name": "echo",
            "parameters": {"delay": 0.3},
        }
        long = asyncio.ensure_future(client.post("/api/v1/generate", json=body, headers=ADMIN))
        for _ in range(300):
            if gate.running:
                break
            await asyncio.sleep(0.01)
        change = await client.put(
            "/api/v1/bindings/echo/settings", json={"settings": {"size_mb": 11.0}}, headers=ADMIN
        )
        assert change.status_code == 409, change.text  # before the generation's 3.6 s were over
        assert state.bindings.instance("echo").settings["size_mb"] == 10.0  # nothing changed
        quick = await client.post(
            "/api/v1/generate",
            json={"prompt": "hi", "binding_name": "echo", "model_name": "echo"},
            headers=ADMIN,
        )
        assert quick.status_code == 200 and not long.done()  # the instance serves on
        assert (await long).status_code == 200
