"""The first run in process: a refused default model, a model copied in, the config file write."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lollms_server.core.models import first_run
from lollms_server.core.models.config_file import set_default_text_model
from tests.conftest import AUTH

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}


def fresh(tmp_path: Path, **models: Any) -> dict[str, Any]:
    return {
        "paths": {"models_folder": str(tmp_path / "fresh-models")},
        "defaults": {"ttt_binding": "llm", "ttt_model": None},
        "models": {"pull_default_on_start": True, **models},
        "bindings": {"llm": {"type": "llamacpp_binding", "n_threads": 1, "n_ctx": 256, "parallel": 1}},
    }


async def state_when(client: Any, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    for _ in range(200):
        state: dict[str, Any] = (await client.get("/api/v1/models/default", headers=AUTH)).json()
        if check(state):
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(state)


async def test_a_refused_default_model_is_explained_and_a_copied_gguf_is_served(
    app_client: Any, tmp_path: Path, models_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(first_run, "hub_offline", lambda: False)  # reach the allowed_sources check
    monkeypatch.setattr(first_run, "WATCH_SECONDS", 0.1)
    async with app_client(**fresh(tmp_path, allowed_sources=["someone-else"])) as client:
        state = await state_when(client, lambda state: state["status"] == "missing" and state["message"])
        assert "not allowed on this server" in state["message"] and "allowed_sources" in state["message"]
        folder = tmp_path / "fresh-models" / "llamacpp_binding"
        assert state["models_folder"] == str(folder) and folder.is_dir()
        refused = await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
        assert refused.status_code == 503 and "copy a .gguf file into" in refused.json()["error"]["message"]
        assert refused.headers["retry-after"]
        shutil.copy(models_folder / "llamacpp_binding" / "tiny.gguf", folder / "mine.gguf")
        state = await state_when(client, lambda state: state["status"] == "ready")
        assert state["model"] == "mine.gguf" and state["message"] is None
        answer = await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
        assert answer.status_code == 200, answer.text
        again = await client.post("/api/v1/models/default/pull", headers=AUTH)
        assert again.status_code == 409 and "mine.gguf" in again.json()["error"]["message"]


async def test_an_instance_with_a_model_is_left_alone(app_client: Any, tmp_path: Path) -> None:
    async with app_client() as client:  # the test config: echo, a scripted binding with its model
        state = (await client.get("/api/v1/models/default", headers=AUTH)).json()
        assert state["status"] == "ready" and state["pull"] is None
        assert (await client.post("/api/v1/models/default/pull", headers=AUTH)).status_code == 400


def test_the_config_file_is_replaced_whole_with_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[server]\nport = 1\n\n[defaults]\nttt_binding = "llm"\n', encoding="utf-8")
    os.chmod(path, 0o640)
    set_default_text_model(path, 'odd "name"\\x.gguf')
    assert path.read_text() == (
        '[server]\nport = 1\n\n[defaults]\nttt_model = "odd \\"name\\"\\\\x.gguf"\nttt_binding = "llm"\n'
    )
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(item.name for item in tmp_path.iterdir()) == ["config.toml"]  # no temporary left


def test_a_model_file_name_cannot_write_other_settings_into_the_config_file(tmp_path: Path) -> None:
    """A file copied into the models folder is adopted by its name, which may hold any character
    but '/': a newline in it must not end the TOML string and start settings of its own."""
    import tomllib

    path = tmp_path / "config.toml"
    path.write_text('[server]\nhost = "127.0.0.1"\n\n[defaults]\nttt_binding = "llm"\n', encoding="utf-8")
    name = 'x"\n[server]\nhost = "0.0.0.0"\n#\t\x7f\x01.gguf'
    set_default_text_model(path, name)
    loaded = tomllib.loads(path.read_text(encoding="utf-8"))
    assert loaded["server"] == {"host": "127.0.0.1"}
    assert loaded["defaults"] == {"ttt_model": name, "ttt_binding": "llm"}


async def test_one_server_process_pulls_the_others_wait_for_its_file_or_take_over(
    app_client: Any, tmp_path: Path, models_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(first_run, "hub_offline", lambda: False)
    monkeypatch.setattr(first_run, "WATCH_SECONDS", 0.1)
    folder = tmp_path / "fresh-models" / "llamacpp_binding"
    folder.mkdir(parents=True)
    other_process = first_run.claim(folder)  # another worker is pulling
    assert other_process is not None and first_run.claim(folder) is None
    nowhere = {"hub_endpoint": "http://127.0.0.1:9"}  # no hub: a pull here would fail at once
    async with app_client(**fresh(tmp_path, **nowhere)) as client:
        await asyncio.sleep(0.5)
        state = (await client.get("/api/v1/models/default", headers=AUTH)).json()
        assert state["status"] == "pulling" and state["pull"] is None  # waiting, not pulling twice
        waiting = await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
        assert waiting.status_code == 503 and "being pulled" in waiting.json()["error"]["message"]
        shutil.copy(models_folder / "llamacpp_binding" / "tiny.gguf", folder / "pulled.gguf")
        state = await state_when(client, lambda state: state["status"] == "ready")
        assert state["model"] == "pulled.gguf"
    (folder / "pulled.gguf").unlink()
    async with app_client(**fresh(tmp_path, **nowhere)) as client:
        await asyncio.sleep(0.3)
        other_process.close()  # that worker gave up without a file: this one tries, and says why not
        state = await state_when(client, lambda state: state["status"] == "missing" and state["message"])
        assert "Pulling the default model" in state["message"] and "failed" in state["message"]
