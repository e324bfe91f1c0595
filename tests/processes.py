"""Servers in subprocesses on free 127.0.0.1 ports, for the tests and the scripts (no pytest here)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import toml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server started as a subprocess; ``wait_ready`` polls ``health_url`` until it answers."""

    def __init__(
        self,
        command: list[str],
        url: str,
        health_url: str,
        log_path: Path | None = None,
        cwd: Path | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.health_url = health_url
        self.headers = headers or {}
        if log_path is None:
            log_path = Path(tempfile.mkstemp(prefix="server-", suffix=".log")[1])
        self.log_path = log_path
        self.log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "OMP_WAIT_POLICY": "passive"}
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=cwd)

    @classmethod
    def lollms(cls, config_path: Path, log_path: Path | None = None) -> ServerProcess:
        """``lollms-server --config config_path`` on a free port."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [
            sys.executable,
            "-m",
            "lollms_server.cli",
            "--config",
            str(config_path),
            "--port",
            str(port),
        ]
        return cls(command, url, url + "/health", log_path)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.health_url, headers=self.headers, timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def start_lollms(config: dict[str, Any], workdir: Path, log_path: Path | None = None) -> ServerProcess:
    """Write ``config`` as ``workdir/config.toml`` and start a ready lollms_server on it."""
    path = workdir / "config.toml"
    path.write_text(toml.dumps(config), encoding="utf-8")
    server = ServerProcess.lollms(path, log_path)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server
