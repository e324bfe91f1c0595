"""End to end: a fresh install's first start. A real ``lollms-server`` process whose default text
instance has no model pulls the default model from the local fake hub (``HF_ENDPOINT``) in the
background while it already answers, serves it to a chat that names no model, writes it into
config.toml, and does not pull again on the next start. Offline it starts, says how to get a
model (log, ``lollms-server models``, ``GET /api/v1/models/default``), and serves a GGUF copied
into the folder it names without a restart."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AUTH, GOOD_KEY, REPO, ServerProcess, base_config, start_lollms
from tests.e2e.sse import iter_events
from tests.fixtures.fake_hub import FakeHub

pytestmark = pytest.mark.e2e

DEFAULT_REPO = "Qwen/Qwen2.5-0.5B-Instruct-GGUF"
DEFAULT_FILE = "qwen2.5-0.5b-instruct-q4_k_m.gguf"
INSTALLED = f"{DEFAULT_REPO}/{DEFAULT_FILE}"
CHAT = {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 6, "seed": 1}


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import build_tiny_gguf

    return build_tiny_gguf(tmp_path_factory.mktemp("first-run-gguf") / "tiny.gguf")


@pytest.fixture
def hub(tiny_gguf: Path) -> Iterator[FakeHub]:
    with FakeHub.running() as running:
        data = tiny_gguf.read_bytes()
        running.state.add(DEFAULT_REPO, {DEFAULT_FILE: data, "qwen2.5-0.5b-instruct-q8_0.gguf": data})
        yield running


def fresh_config(folder: Path) -> dict[str, Any]:
    """What ``init`` writes, for the test keys: the default text instance has no model and
    ``pull_default_on_start`` is on."""
    data = base_config(
        folder,
        folder / "models",
        defaults={"ttt_binding": "local_llm", "ttt_model": None},
        models={"pull_default_on_start": True},
        bindings={"local_llm": {"type": "llamacpp_binding", "n_threads": 1, "n_ctx": 512}},
    )
    data["defaults"] = {key: value for key, value in data["defaults"].items() if value is not None}
    return data


def start(config: dict[str, Any], folder: Path) -> ServerProcess:
    server = start_lollms(config, folder, folder / "server.log")
    return server


def restart(folder: Path) -> ServerProcess:
    """The same config.toml (as the first run left it) started again."""
    server = ServerProcess.lollms(folder / "config.toml", folder / "server-2.log")
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def wait_until(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_the_first_start_pulls_the_default_model_and_chats(
    tmp_path: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("LOLLMS_DEFAULT_MODEL", raising=False)
    hub.state.delay = 0.2  # a download of about 7 s: the server answers while it runs
    config = fresh_config(tmp_path)
    (tmp_path / "config.toml").touch(mode=0o600)
    server = start(config, tmp_path)
    try:
        # the server answers at once, the pull runs in the background
        def default_state() -> dict[str, Any]:
            return httpx.get(server.url + "/api/v1/models/default", headers=AUTH, timeout=10).json()

        assert default_state()["status"] == "pulling"
        state = wait_until(lambda: (lambda state: state if state["pull"] else None)(default_state()))
        assert state["status"] == "pulling", state
        assert state["default_ref"] == f"{DEFAULT_REPO}:Q4_K_M" and state["pull"]["total"] > 0
        assert (tmp_path / "models" / "llamacpp_binding").is_dir()
        # a streamed request for the default model follows the pull, then is answered
        body = {
            "input_data": [{"type": "text", "role": "user_prompt", "data": "Hello"}],
            "stream": True,
            "parameters": {"max_tokens": 4, "seed": 1},
        }
        with httpx.stream(
            "POST", server.url + "/api/v1/generate", json=body, headers=AUTH, timeout=120
        ) as streamed:
            assert streamed.status_code == 200
            events = list(iter_events(streamed))
        downloading = [event for event in events if event.get("content") == "downloading"]
        assert downloading and downloading[-1]["metadata"]["file"] == DEFAULT_FILE, events[:3]
        assert events[-1]["type"] == "final", events[-3:]
        # a chat naming no model (after the pull, or waiting for it up to the queue_timeout) answers
        response = httpx.post(server.url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=120)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"]
        state = httpx.get(server.url + "/api/v1/models/default", headers=AUTH, timeout=10).json()
        assert state["status"] == "ready" and state["model"] == INSTALLED
        assert f'ttt_model = "{INSTALLED}"' in (tmp_path / "config.toml").read_text()
        assert (tmp_path / "config.toml").stat().st_mode & 0o777 == 0o600
    finally:
        server.stop()
    assert len(hub.state.downloads(DEFAULT_FILE)) == 1
    assert not hub.state.downloads("qwen2.5-0.5b-instruct-q8_0.gguf")

    second = restart(tmp_path)
    try:
        response = httpx.post(second.url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=60)
        assert response.status_code == 200, response.text
    finally:
        second.stop()
    assert len(hub.state.downloads(DEFAULT_FILE)) == 1  # no second pull


def test_offline_the_server_starts_says_how_and_serves_a_copied_gguf(
    tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    server = start(fresh_config(tmp_path), tmp_path)
    folder = tmp_path / "models" / "llamacpp_binding"
    try:
        assert folder.is_dir()  # created at start
        command = f"lollms-server init {tmp_path / 'config.toml'} --model {DEFAULT_REPO}:Q4_K_M"
        log = wait_until(lambda: "offline" in server.output() and server.output())
        assert command in log and f"copy a .gguf file into {folder}/" in log
        listing = subprocess.run(
            [sys.executable, "-m", "lollms_server.cli", "models", "--config", str(tmp_path / "config.toml")],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        ).stdout
        assert command in listing and str(folder) in listing
        refused = httpx.post(server.url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=30)
        assert refused.status_code == 503 and command in refused.json()["error"]["message"]
        user_view = httpx.get(
            server.url + "/api/v1/models/default", headers={"X-API-Key": GOOD_KEY}, timeout=10
        ).json()
        assert user_view["status"] == "missing" and str(folder) not in str(user_view)

        shutil.copy(tiny_gguf, folder / "my-model.gguf")

        def chat() -> httpx.Response | None:
            response = httpx.post(server.url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=60)
            return response if response.status_code == 200 else None

        answer = wait_until(chat, timeout=30)
        assert answer.json()["choices"][0]["message"]["content"]
        assert 'ttt_model = "my-model.gguf"' in (tmp_path / "config.toml").read_text()
    finally:
        server.stop()


def fake_checkout(root: Path) -> Path:
    """``scripts/run.sh`` in a folder of its own (its config.toml and models land there), with a
    virtual environment whose ``lollms-server`` is this checkout's (no install)."""
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "run.sh", root / "scripts" / "run.sh")
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    wrapper = venv_bin / "lollms-server"
    wrapper.write_text(
        f'#!/bin/sh\nPYTHONPATH="{REPO}" exec "{sys.executable}" -m lollms_server.cli "$@"\n',
        encoding="utf-8",
    )
    wrapper.chmod(0o755)
    return root / "scripts" / "run.sh"


def run_script(script: Path, port: int, env: dict[str, str], until: str, timeout: float = 240) -> str:
    """Run ``run.sh --port PORT`` until its output holds ``until``, then stop it (and its server)."""
    log = script.parent.parent / f"run-{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["bash", str(script), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            # the fake checkout's own .venv, whatever LOLLMS_VENV the suite runs under (CI: .venv-ci)
            env={
                **os.environ,
                "LOLLMS_VENV": ".venv",
                "LOLLMS_SKIP_INSTALL": "1",
                "OMP_WAIT_POLICY": "passive",
                **env,
            },
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout
            while until not in log.read_text(errors="replace"):
                assert process.poll() is None, log.read_text(errors="replace")
                assert time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.3)
        finally:
            with contextlib.suppress(ProcessLookupError):  # already ended (its output says why)
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return log.read_text(errors="replace")


def test_run_script_pulls_with_progress_and_ends_in_a_chat(tmp_path: Path, hub: FakeHub) -> None:
    from tests.conftest import free_port

    script = fake_checkout(tmp_path / "checkout")
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url, "LOLLMS_DEFAULT_MODEL": ""}
    output = run_script(script, free_port(), env, until="The server chats at")
    assert "Your API key" in output
    assert re.search(rf"{re.escape(DEFAULT_FILE)}\s+\[#+\]", output), output  # the progress bar
    assert f"{INSTALLED} is now the default text model" in output
    assert "> Hello!" in output  # the chat's question, then its answer
    config = (tmp_path / "checkout" / "config.toml").read_text()
    assert f'ttt_model = "{INSTALLED}"' in config and "pull_default_on_start = true" in config
    assert len(hub.state.downloads(DEFAULT_FILE)) == 1

    key = re.search(r"^    (\S+)$", output, re.MULTILINE)
    assert key is not None
    again = run_script(
        script, free_port(), {**env, "LOLLMS_API_KEY": key.group(1)}, until="The server chats at"
    )
    assert f"The default text model {INSTALLED} is installed" in again and "Your API key" not in again
    assert len(hub.state.downloads(DEFAULT_FILE)) == 1  # no second pull


def test_run_script_offline_starts_and_says_exactly_what_to_do(tmp_path: Path) -> None:
    from tests.conftest import free_port

    script = fake_checkout(tmp_path / "checkout")
    env = {"HF_HUB_OFFLINE": "1", "LOLLMS_DEFAULT_MODEL": ""}
    output = run_script(script, free_port(), env, until="lollms-server chat: 503")
    folder = tmp_path / "checkout" / "models" / "llamacpp_binding"
    assert folder.is_dir()
    command = f"--model {DEFAULT_REPO}:Q4_K_M"
    # the pull, `lollms-server models`, the server's log and the chat's 503 all say it
    assert output.count(command) >= 3 and output.count(f"copy a .gguf file into {folder}/") >= 3, output
    assert "The hub is offline (HF_HUB_OFFLINE is set)" in output
