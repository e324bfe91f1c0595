"""Binding commands and runtime settings: ``/api/v1/bindings/{instance}/commands`` and
``.../settings`` (admin scope; declared commands only; settings validated, secrets masked,
applied after the instance's running generations; ``persist`` keeps the config's comments)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_KEY, GOOD_KEY, base_config

ADMIN = {"X-API-Key": ADMIN_KEY}


async def test_a_declared_command_runs_with_checked_parameters(app_client: Any) -> None:
    async with app_client() as client:
        listed = await client.get("/api/v1/bindings/echo/commands", headers=ADMIN)
        assert listed.status_code == 200
        [command] = listed.json()["commands"]
        assert command["name"] == "word_count" and command["parameters"][0]["name"] == "text"
        ran = await client.post(
            "/api/v1/bindings/echo/commands/word_count",
            json={"parameters": {"text": "one two three", "repeat": 2}},
            headers=ADMIN,
        )
        assert ran.status_code == 200, ran.text
        assert ran.json()["result"] == {"words": 6, "delay": 0.0}
        default = await client.post(
            "/api/v1/bindings/echo/commands/word_count", json={"parameters": {"text": "a b"}}, headers=ADMIN
        )
        assert default.json()["result"]["words"] == 2


async def test_undeclared_commands_bad_parameters_and_scopes(app_client: Any) -> None:
    async with app_client() as client:
        url = "/api/v1/bindings/echo/commands/"
        undeclared = await client.post(url + "load_model", json={"parameters": {}}, headers=ADMIN)
        assert undeclared.status_code == 404 and undeclared.json()["error"]["type"] == "not_found_error"
        missing = await client.post(url + "word_count", json={"parameters": {}}, headers=ADMIN)
        assert missing.status_code == 400 and "text" in missing.json()["error"]["message"]
        wrong = await client.post(url + "word_count", json={"parameters": {"text": 3}}, headers=ADMIN)
        assert wrong.status_code == 400
        unknown = await client.post(
            url + "word_count", json={"parameters": {"text": "a", "x": 1}}, headers=ADMIN
        )
        assert unknown.status_code == 400
        user = {"X-API-Key": GOOD_KEY}
        assert (
            await client.post(url + "word_count", json={"parameters": {"text": "a"}}, headers=user)
        ).status_code == 403
        assert (await client.get("/api/v1/bindings/echo/settings", headers=user)).status_code == 403
        assert (await client.get("/api/v1/bindings/nope/commands", headers=ADMIN)).status_code == 404


async def test_settings_are_masked_validated_and_applied(app_client: Any) -> None:
    async with app_client() as client:
        url = "/api/v1/bindings/echo/settings"
        read = (await client.get(url, headers=ADMIN)).json()
        assert read["settings"]["api_token"] == "********"
        assert read["schema"]["delay"]["type"] == "float"
        assert "super-secret-token-value" not in str(read)
        for bad in ({"nope": 1}, {"delay": "slow"}):
            refused = await client.put(url, json={"settings": bad}, headers=ADMIN)
            assert refused.status_code == 400, refused.text
            assert "bindings.echo." in refused.json()["error"]["message"]
        changed = await client.put(
            url, json={"settings": {"delay": 0.01, "api_token": "********"}}, headers=ADMIN
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["settings"]["delay"] == 0.01
        ran = await client.post(
            "/api/v1/bindings/echo/commands/word_count", json={"parameters": {"text": "a"}}, headers=ADMIN
        )
        assert ran.json()["result"]["delay"] == 0.01  # the binding object sees the new value
        instance = client.app.state.bindings.instance("echo")  # type: ignore[attr-defined]
        assert instance.settings["api_token"] == "super-secret-token-value"  # kept, not masked


async def test_a_settings_change_waits_for_running_generations(app_client: Any) -> None:
    async with app_client() as client:
        body = {
            "input_data": [{"type": "text", "role": "user_prompt", "data": "a b c d e f"}],
            "binding_name": "echo",
            "parameters": {"delay": 0.15},
        }
        loop = asyncio.get_running_loop()
        started = loop.time()
        generation = asyncio.ensure_future(client.post("/api/v1/generate", json=body, headers=ADMIN))
        state = client.app.state  # type: ignore[attr-defined]
        gate = state.generation.gates.of("echo")
        for _ in range(200):
            if gate.running:
                break
            await asyncio.sleep(0.01)
        assert gate.running == 1
        change = await client.put(
            "/api/v1/bindings/echo/settings", json={"settings": {"size_mb": 5.0}}, headers=ADMIN
        )
        # six words at 0.15 s each: the change cannot be done before the generation's 0.9 s are
        assert loop.time() - started >= 0.85, "the change was applied while the generation ran"
        assert gate.running == 0
        assert change.status_code == 200 and (await generation).status_code == 200


async def test_persist_writes_the_config_keeping_its_comments(tmp_path: Path, models_folder: Path) -> None:
    pytest.importorskip("tomlkit")
    import httpx
    import toml

    from lollms_server.core.config import load_config
    from lollms_server.main import create_app

    path = tmp_path / "config.toml"
    text = toml.dumps(base_config(tmp_path, models_folder))
    text = text.replace("[bindings.echo]", "# the echo binding, for tests\n[bindings.echo]  # keep me")
    path.write_text(text, encoding="utf-8")
    app = create_app(load_config(path))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            url = "/api/v1/bindings/echo/settings?persist=true"
            changed = await client.put(url, json={"settings": {"delay": 0.02}}, headers=ADMIN)
            assert changed.status_code == 200, changed.text
    written = path.read_text(encoding="utf-8")
    assert "# the echo binding, for tests" in written and "# keep me" in written
    assert toml.loads(written)["bindings"]["echo"]["delay"] == 0.02
    assert load_config(path).bindings["echo"].settings()["delay"] == 0.02
