"""The ``lollms-server`` command: init, config lookup, and a real run as a subprocess."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from lollms_server.cli import find_config, main, write_initial_config
from lollms_server.core.config import load_config
from lollms_server.core.errors import ConfigError
from lollms_server.core.security import KeyStore
from tests.conftest import free_port


def test_init_writes_a_hashed_key_and_prints_it_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "conf" / "config.toml"
    assert main(["init", str(target)]) == 0
    printed = capsys.readouterr().out
    key = re.search(r"(lollms_\S+)", printed)
    assert key is not None
    text = target.read_text()
    assert key.group(1) not in text and "sha256:" in text
    config = load_config(target, environ={})
    principal = KeyStore.from_config(config).authenticate(key.group(1))
    assert principal.scopes == frozenset({"generate", "admin"})
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert main(["init", str(target)]) == 2  # never overwrites silently


def test_find_config_order_and_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOLLMS_SERVER_CONFIG", raising=False)
    monkeypatch.setattr("lollms_server.cli.user_config_path", lambda: tmp_path / "user" / "config.toml")
    with pytest.raises(ConfigError, match="lollms-server init"):
        find_config(None)
    write_initial_config(tmp_path / "user" / "config.toml")
    assert find_config(None) == tmp_path / "user" / "config.toml"
    write_initial_config(tmp_path / "config.toml")
    assert find_config(None) == tmp_path / "config.toml"
    assert find_config("elsewhere.toml") == Path("elsewhere.toml")


def test_refuses_to_start_without_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[server]\nport = 9601\n")
    assert main(["--config", str(path)]) == 2
    assert "no API key" in capsys.readouterr().err


def test_a_wrong_binding_setting_is_a_one_line_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15 item 12: it was a traceback from the app's lifespan and exit 3."""
    monkeypatch.setattr("lollms_server.cli.serve", lambda config: pytest.fail("the server started"))
    path = tmp_path / "config.toml"
    path.write_text(
        '[security]\napi_keys = ["a-key-long-enough"]\n'
        '[bindings.llm]\ntype = "llamacpp_binding"\nn_thread = 2\n'
    )
    assert main(["--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert str(path) in error and "bindings.llm.n_thread" in error and "unknown setting" in error
    assert "Traceback" not in error and error.count("\n") == 1


@pytest.mark.e2e
def test_console_script_serves_and_stops(tmp_path: Path) -> None:
    executable = shutil.which("lollms-server", path=str(Path(sys.executable).parent))
    assert executable is not None, "the lollms-server console script is not installed"
    config = tmp_path / "config.toml"
    key = write_initial_config(config)
    port = free_port()
    process = subprocess.Popen(
        [executable, "--config", str(config), "--port", str(port), "--log-level", "info"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
        assert health.json()["api_key_required"] is True
        listed = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/list_bindings", headers={"X-API-Key": key}, timeout=5
        )
        assert listed.status_code == 200 and "llamacpp_binding" in listed.json()["binding_types"]
    finally:
        process.terminate()
        output = process.communicate(timeout=20)[0].decode(errors="replace")
    assert process.returncode is not None
    assert key not in output and "sha256" not in output


def test_ray_mode_with_several_processes_needs_a_cluster_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    path = tmp_path / "config.toml"
    path.write_text(
        '[security]\napi_keys = ["a-key-long-enough"]\n[cluster]\nmode = "ray"\n', encoding="utf-8"
    )
    assert main(["--config", str(path), "--workers", "2"]) == 2
    assert "cluster.address" in capsys.readouterr().err
    # cluster-stop refuses a local-mode config
    path.write_text('[security]\napi_keys = ["a-key-long-enough"]\n', encoding="utf-8")
    assert main(["--config", str(path), "cluster-stop"]) == 2
    assert "cluster.mode" in capsys.readouterr().err


def test_idle_connections_outlive_the_clients_keep_alive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn's default keep-alive (5 s) equals httpx's: a pooled connection reused at that instant
    is reset. The server keeps idle connections longer than the clients' expiry."""
    import uvicorn

    seen: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: seen.update(kwargs))
    path = tmp_path / "config.toml"
    path.write_text('[security]\napi_keys = ["a-key-long-enough"]\n', encoding="utf-8")
    assert main(["--config", str(path)]) == 0
    client_expiry = httpx.Limits().keepalive_expiry
    assert client_expiry is not None
    assert isinstance(seen["timeout_keep_alive"], int) and seen["timeout_keep_alive"] > client_expiry
