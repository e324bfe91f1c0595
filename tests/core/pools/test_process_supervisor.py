"""WorkerSupervisor (isolation = "process") against fake workers: real subprocesses whose command
line reads like a worker's (``python -c SCRIPT -m lollms_server.worker --pool P --port N ...``)
and that serve /health on 127.0.0.1, slowly or never when asked to."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lollms_server.core.config import config_from_dict
from lollms_server.core.errors import ServiceUnavailableError
from lollms_server.core.pools.process_supervisor import WorkerSupervisor
from lollms_server.utils.processes import free_port, pid_alive

POOL = "gpu"

# answers GET after --delay seconds (each request in its own thread, like a loop that is busy)
FAKE_WORKER = r"""
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
delay = float(args[args.index("--delay") + 1])
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(delay)
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def fake_command(supervisor: WorkerSupervisor, port: int, delay: float, pool: str | None = None) -> list[str]:
    return [
        sys.executable,
        "-c",
        FAKE_WORKER,
        "-m",
        "lollms_server.worker",
        "--pool",
        pool or supervisor.pool,
        "--port",
        str(port),
        "--token-file",
        str(supervisor.token_path),
        "--delay",
        str(delay),
    ]


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, "the fake worker died"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise AssertionError("the fake worker does not listen")


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        subprocess.Popen.wait(process, timeout=10)  # the class's, even where a test patched wait


@pytest.fixture
def supervisor(tmp_path: Path) -> WorkerSupervisor:
    config = config_from_dict(
        {
            "paths": {"runtime_folder": str(tmp_path / "state" / "run")},
            "resource_manager": {"pools": {"default": {"limit": 1}, POOL: {"isolation": "process"}}},
        }
    )
    config.config_path = tmp_path / "config.toml"  # never read: the workers here are fakes
    return WorkerSupervisor(config, POOL, [])


def no_second_worker(supervisor: WorkerSupervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    def start() -> Any:
        raise AssertionError("a second worker was started while the recorded one lives")

    monkeypatch.setattr(supervisor, "_start", start)


def record_fake(
    supervisor: WorkerSupervisor,
    children: list[subprocess.Popen[bytes]],
    delay: float,
    pool: str | None = None,
) -> tuple[int, int]:
    """A running fake worker recorded in the state and token files, as another server left it."""
    folder = supervisor.config.paths.runtime_folder
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(fake_command(supervisor, port, delay, pool))
    children.append(process)
    wait_listening(port, process)
    supervisor.state_path.write_text(json.dumps({"pid": process.pid, "port": port}))
    supervisor.token_path.write_text("the-recorded-token")
    return process.pid, port


# ---- #18: never a second worker while the recorded one lives --------------------------------


def test_a_live_worker_slow_to_answer_health_is_attached_not_replaced(
    supervisor: WorkerSupervisor, children: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # its loop is busy: /health answers after 2.5 s, past the first 2 s probe
    pid, port = record_fake(supervisor, children, delay=2.5)
    no_second_worker(supervisor, monkeypatch)
    url, token = supervisor.endpoint_sync()
    assert (url, token) == (f"http://127.0.0.1:{port}", "the-recorded-token")
    assert supervisor.live_endpoint() == (url, token)
    assert json.loads(supervisor.state_path.read_text())["pid"] == pid


def test_a_live_worker_that_never_answers_is_a_503_not_a_second_worker(
    supervisor: WorkerSupervisor, children: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    pid, _ = record_fake(supervisor, children, delay=3600)
    no_second_worker(supervisor, monkeypatch)
    supervisor.attach_patience = 1.5
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError) as error:
        supervisor.endpoint_sync()
    assert error.value.status_code == 503 and "Retry-After" in error.value.headers
    assert 1.4 < time.monotonic() - started < 5
    # right after, the next requests fail at once instead of waiting again under the lock
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError):
        supervisor.endpoint_sync()
    assert time.monotonic() - started < 0.5
    assert pid_alive(pid)  # left alone: it may be busy serving another server process


def test_a_recorded_pid_that_runs_something_else_lets_a_worker_start(
    supervisor: WorkerSupervisor, children: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    supervisor.config.paths.runtime_folder.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a reused pid
    children.append(other)
    supervisor.state_path.write_text(json.dumps({"pid": other.pid, "port": free_port()}))
    supervisor.token_path.write_text("old-token")
    monkeypatch.setattr(supervisor, "_start", lambda: ("http://127.0.0.1:1", "new", 1))
    started = time.monotonic()
    assert supervisor.endpoint_sync() == ("http://127.0.0.1:1", "new")
    assert time.monotonic() - started < 1  # no waiting for a process that is not a worker


def test_a_recorded_pid_running_another_pools_worker_is_not_attached(
    supervisor: WorkerSupervisor, children: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    record_fake(supervisor, children, delay=0, pool="cpu")  # answers /health, but is not ours
    monkeypatch.setattr(supervisor, "_start", lambda: ("http://127.0.0.1:1", "new", 1))
    assert supervisor.endpoint_sync() == ("http://127.0.0.1:1", "new")


def test_a_dead_recorded_worker_lets_a_worker_start(
    supervisor: WorkerSupervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    supervisor.config.paths.runtime_folder.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    supervisor.state_path.write_text(json.dumps({"pid": gone.pid, "port": free_port()}))
    supervisor.token_path.write_text("old-token")
    monkeypatch.setattr(supervisor, "_start", lambda: ("http://127.0.0.1:1", "new", 1))
    assert supervisor.endpoint_sync() == ("http://127.0.0.1:1", "new")


# ---- #21: kill() returns at once, on the event loop ------------------------------------------


def in_d_state(process: subprocess.Popen[bytes]) -> None:
    """Make ``wait`` behave as on a child stuck in D state: it does not end."""

    def wait(timeout: float | None = None) -> int:
        time.sleep(min(timeout or 1.0, 1.0))
        raise subprocess.TimeoutExpired(process.args, timeout or 0)

    process.wait = wait  # type: ignore[method-assign]


async def test_killing_a_hung_worker_stuck_in_d_state_does_not_block_the_loop(
    supervisor: WorkerSupervisor, children: list[subprocess.Popen[bytes]]
) -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    children.append(process)
    in_d_state(process)
    supervisor.process = process
    supervisor._endpoint = ("http://127.0.0.1:1", "token", process.pid)

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    started = time.monotonic()
    supervisor.kill()  # as WorkerProcessHost.hung() calls it, on the loop; nothing escapes
    assert time.monotonic() - started < 0.2
    before = ticks
    await asyncio.sleep(0.2)
    assert ticks > before + 5  # the loop kept running
    task.cancel()
    assert supervisor.live_endpoint() is None
    deadline = time.monotonic() + 5
    while pid_alive(process.pid):  # SIGKILL was sent (a zombie counts as dead)
        assert time.monotonic() < deadline, "the hung worker was not killed"
        await asyncio.sleep(0.02)
    assert supervisor._reaper is not None
    await asyncio.to_thread(supervisor._reaper.join, 5)  # the reaper swallowed TimeoutExpired
    assert not supervisor._reaper.is_alive()


async def test_a_killed_child_is_reaped_in_the_background(
    supervisor: WorkerSupervisor, children: list[subprocess.Popen[bytes]]
) -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    children.append(process)
    supervisor.process = process
    supervisor._endpoint = ("http://127.0.0.1:1", "token", process.pid)
    supervisor.kill()
    deadline = time.monotonic() + 5
    while process.returncode is None:  # reaped by the supervisor: no zombie left
        assert time.monotonic() < deadline, "the killed child was not reaped"
        await asyncio.sleep(0.02)
    assert process.returncode < 0


def test_stop_gives_up_on_a_child_that_does_not_die(
    supervisor: WorkerSupervisor,
    children: list[subprocess.Popen[bytes]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """terminate, wait 15 s, kill, wait 5 s, then log and return (no TimeoutExpired, no hang)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    children.append(process)
    calls: list[object] = []

    def never_ends(timeout: float | None = None) -> int:
        calls.append(("wait", timeout))
        raise subprocess.TimeoutExpired(process.args, timeout or 0)

    monkeypatch.setattr(process, "wait", never_ends)
    monkeypatch.setattr(process, "terminate", lambda: calls.append("terminate"))
    monkeypatch.setattr(process, "kill", lambda: calls.append("kill"))
    supervisor.process = process
    with caplog.at_level(logging.ERROR):
        supervisor.stop()
    assert calls == ["terminate", ("wait", 15), "kill", ("wait", 5)]
    assert f"(pid {process.pid}) does not die" in caplog.text


# ---- #22: private runtime folder, token, state, lock and log files ---------------------------


def start_fake(supervisor: WorkerSupervisor, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    monkeypatch.setattr(supervisor, "_command", lambda python, port: fake_command(supervisor, port, delay=0))
    try:
        return supervisor.endpoint_sync()
    finally:
        assert supervisor.process is not None
        supervisor.process.kill()
        supervisor.process.wait(timeout=10)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
def test_a_start_leaves_a_0700_folder_and_0600_files(
    supervisor: WorkerSupervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, token = start_fake(supervisor, monkeypatch)
    folder = supervisor.config.paths.runtime_folder
    assert mode(folder) == 0o700
    assert supervisor.token_path.read_text() == token
    assert json.loads(supervisor.state_path.read_text())["port"] == int(url.rsplit(":", 1)[1])
    for path in (supervisor.token_path, supervisor.state_path, supervisor.log_path):
        assert mode(path) == 0o600, path
    if supervisor.lock_path.exists():
        assert mode(supervisor.lock_path) == 0o600
    assert [path.name for path in folder.iterdir() if path.name.endswith(".tmp")] == []


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
def test_an_existing_runtime_folder_of_ours_is_made_private(
    supervisor: WorkerSupervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = supervisor.config.paths.runtime_folder
    folder.mkdir(parents=True)
    folder.chmod(0o755)
    start_fake(supervisor, monkeypatch)
    assert mode(folder) == 0o700


@pytest.mark.skipif(os.name == "nt", reason="symlinks")
def test_symlinks_planted_at_the_token_state_and_log_paths_are_not_followed(
    supervisor: WorkerSupervisor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    supervisor.config.paths.runtime_folder.mkdir(parents=True)
    targets = {}
    for path in (supervisor.token_path, supervisor.state_path, supervisor.log_path):
        target = tmp_path / f"victim-{path.name}"
        target.write_text("precious")
        target.chmod(0o644)
        path.symlink_to(target)
        targets[path] = target
    _, token = start_fake(supervisor, monkeypatch)
    for path, target in targets.items():
        assert target.read_text() == "precious", f"{path.name} followed the symlink"
        assert mode(target) == 0o644
        assert not path.is_symlink() and mode(path) == 0o600
    assert supervisor.token_path.read_text() == token


def test_the_health_probe_of_a_fake_answers(
    supervisor: WorkerSupervisor, children: list[subprocess.Popen[bytes]]
) -> None:
    """The fake really serves /health (so the tests above test the supervisor, not the fake)."""
    _, port = record_fake(supervisor, children, delay=0)
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
