"""Supervision of a pool's worker process (``isolation = "process"``), shared by every server
process: the first one that needs it starts it under a FileLock and writes a state file (pid,
port) and a token file next to the lock; the others attach. A dead worker is restarted on the
next request (with a back-off after crashes); a hung one is killed. Blocking: call it in a thread.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import site
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from filelock import FileLock

from lollms_server.core.config import AppConfig
from lollms_server.core.errors import BindingError, ConfigError
from lollms_server.utils.processes import free_port, pid_alive

logger = logging.getLogger(__name__)
OWNER_ENV = "LOLLMS_SERVER_OWNER_PID"


def ensure_venv(venv: Path, requirements: list[str]) -> Path:
    """A venv that sees the server's packages after its own, with ``requirements`` installed in it."""
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        site_dir = Path(
            subprocess.run(
                [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )
        # the server's own packages come after the venv's: its versions win, the server still imports
        lines = [f"import site; site.addsitedir({path!r})" for path in site.getsitepackages()]
        (site_dir / "_lollms_server_parent.pth").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if requirements:
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *requirements], check=True, capture_output=True
        )
    return python


class WorkerSupervisor:
    """Starts or finds the worker of one pool (FileLock + state file) and restarts it when dead."""

    host = "process"

    def __init__(self, config: AppConfig, pool: str, requirements: list[str]) -> None:
        if config.config_path is None:
            raise ConfigError(
                f"pool '{pool}': isolation = \"process\" needs the server started from a config file"
            )
        self.config = config
        self.pool = pool
        self.requirements = requirements
        folder = config.paths.runtime_folder
        self.lock_path = folder / f"{pool}.lock"
        self.state_path = folder / f"{pool}.json"
        self.token_path = folder / f"{pool}.token"
        self.log_path = folder / f"{pool}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._endpoint: tuple[str, str, int] | None = None
        self._failures = 0

    def live_endpoint(self) -> tuple[str, str] | None:
        """(url, token) of the worker already found, if it still runs (cheap: no lock, no I/O)."""
        if self._endpoint is not None and pid_alive(self._endpoint[2]):
            return self._endpoint[0], self._endpoint[1]
        return None

    def endpoint_sync(self) -> tuple[str, str]:
        """(url, token) of a live worker, starting one when needed (blocking: call in a thread)."""
        live = self.live_endpoint()
        if live is not None:
            return live
        self.config.paths.runtime_folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.lock_path), timeout=300):
            found = self._attach()
            if found is None:
                found = self._start()
            self._endpoint = found
            return found[0], found[1]

    def _attach(self) -> tuple[str, str, int] | None:
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
            token = self.token_path.read_text(encoding="utf-8").strip()
        except (OSError, ValueError):
            return None
        url, pid = f"http://127.0.0.1:{int(state['port'])}", int(state["pid"])
        if not pid_alive(pid):
            return None  # a stale state file: the worker is gone
        try:
            httpx.get(url + "/health", timeout=2).raise_for_status()
        except httpx.HTTPError:
            return None
        return url, token, pid

    def _start(self) -> tuple[str, str, int]:
        if self._failures:
            time.sleep(min(10.0, 0.5 * 2 ** (self._failures - 1)))  # back off after crashes
        pool_config = self.config.resource_manager.pools[self.pool]
        python = Path(sys.executable)
        if pool_config.venv is not None:
            try:
                python = ensure_venv(pool_config.venv, self.requirements)
            except subprocess.CalledProcessError as exc:
                logger.error(
                    "Preparing the venv of pool %s failed: %s",
                    self.pool,
                    exc.stderr[-500:] if exc.stderr else exc,
                )
                raise BindingError(
                    f"The virtual environment of pool '{self.pool}' could not be prepared."
                ) from None
        token = secrets.token_urlsafe(32)
        self.token_path.write_text(token, encoding="utf-8")
        self.token_path.chmod(0o600)
        port = free_port()
        owner = int(os.environ.get(OWNER_ENV) or os.getpid())
        command = [
            str(python),
            "-m",
            "lollms_server.worker",
            "--config",
            str(self.config.config_path),
            "--pool",
            self.pool,
            "--port",
            str(port),
            "--token-file",
            str(self.token_path),
            "--owner-pid",
            str(owner),
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the worker writes it
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._failures += 1
                raise BindingError(
                    f"The worker of pool '{self.pool}' failed to start (see {self.log_path.name})."
                )
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            self.process.kill()
            self._failures += 1
            raise BindingError(f"The worker of pool '{self.pool}' did not start in time.")
        self.state_path.write_text(json.dumps({"pid": self.process.pid, "port": port}), encoding="utf-8")
        logger.info("Started the worker of pool %s (pid %d)", self.pool, self.process.pid)
        return url, token, self.process.pid

    def kill(self) -> None:
        """Kill a hung worker (whoever started it); the next request starts a fresh one."""
        endpoint = self._endpoint
        if endpoint is not None and pid_alive(endpoint[2]):
            logger.error("Killing the hung worker of pool %s (pid %d)", self.pool, endpoint[2])
            try:
                os.kill(endpoint[2], 9)
            except ProcessLookupError:
                pass
            if self.process is not None and self.process.pid == endpoint[2]:
                self.process.wait(timeout=10)  # reap it
        self._failures += 1
        self._endpoint = None

    def forget(self) -> None:
        """After a failed call: check the worker again next time (restarting it if dead)."""
        if self._endpoint is not None and not pid_alive(self._endpoint[2]):
            self._failures += 1
        if self.process is not None:
            self.process.poll()  # reap a dead child
        self._endpoint = None

    def stop(self) -> None:
        """Stop the worker if this process started it (others stop it through their owner pid)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    async def status(self) -> dict[str, Any] | None:
        if self._endpoint is None:
            return None
        url, token, pid = self._endpoint
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                response = await client.get(url + "/api/v1/status", headers={"X-API-Key": token})
            data: dict[str, Any] = response.json()
            return {"host": self.host, "pid": pid, **data}
        except (httpx.HTTPError, ValueError):
            return None
