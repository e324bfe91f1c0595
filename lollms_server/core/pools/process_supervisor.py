"""Supervision of a pool's worker process (``isolation = "process"``), shared by every server
process: the first one that needs it starts it under a FileLock and writes a state file (pid,
port) and a token file next to the lock; the others attach. A dead worker is restarted on the
next request (with a back-off after crashes); a hung one is killed. Blocking: call
:meth:`WorkerSupervisor.endpoint_sync` and :meth:`WorkerSupervisor.stop` in a thread; ``kill``,
``forget`` and ``live_endpoint`` return at once (a killed child is reaped in a background thread).

A second worker is never started while the recorded one lives: a live worker that is slow to
answer (its loop busy) is waited for (``attach_patience``); only a dead pid, or one that now runs
something else, lets a new one start. The runtime folder is private (0700); the token, state,
lock and log files are created 0600 without following symlinks (token and state by an atomic
replace).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import site
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from filelock import FileLock

from lollms_server.core.config import AppConfig
from lollms_server.core.errors import BindingError, ConfigError, ServiceUnavailableError
from lollms_server.utils.processes import free_port, pid_alive, process_args

logger = logging.getLogger(__name__)
OWNER_ENV = "LOLLMS_SERVER_OWNER_PID"
WORKER_MODULE = "lollms_server.worker"
ATTACH_PATIENCE_SECONDS = 30.0  # how long a live worker may take to answer /health when attaching
STUCK_MEMORY_SECONDS = 5.0  # after that wait gave up, later attaches fail at once for this long
KILLED_MEMORY_SECONDS = 60.0  # a pid this process SIGKILLed counts as dead for this long (D state)
SIGKILL = getattr(signal, "SIGKILL", 9)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def private_folder(folder: Path) -> None:
    """Create ``folder`` 0700, or tighten it to 0700 if it exists and belongs to this user."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not hasattr(os, "geteuid"):
        return  # Windows: no POSIX modes
    info = folder.stat()
    if info.st_uid != os.geteuid():
        logger.warning("The runtime folder %s belongs to another user: its files may be exposed", folder)
    elif info.st_mode & 0o077:
        folder.chmod(0o700)
        logger.info("Made the runtime folder %s private (0700)", folder)


def write_private(path: Path, text: str) -> None:
    """Write ``path`` atomically, 0600 from its creation: a fresh temp file next to it (O_EXCL,
    O_NOFOLLOW), then ``os.replace``, which replaces a symlink planted at ``path`` instead of
    following it."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    try:
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
            os.write(fd, text.encode("utf-8"))
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def read_private(path: Path) -> str:
    """The text of ``path``, not following a symlink there (OSError then)."""
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    with os.fdopen(fd, "rb") as file:
        return file.read().decode("utf-8")


def open_private_log(path: Path) -> int:
    """A descriptor appending to ``path`` (0600; a symlink planted there is replaced by a file)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW
    try:
        fd = os.open(path, flags, 0o600)
    except OSError:
        if not path.is_symlink():
            raise
        path.unlink()
        fd = os.open(path, flags | os.O_EXCL, 0o600)
    if hasattr(os, "fchmod"):
        os.fchmod(fd, 0o600)
    return fd


def _reap(process: subprocess.Popen[bytes]) -> None:
    """Wait for a killed child in a background thread (it may stay in D state for long)."""
    try:
        process.wait()
    except Exception:  # noqa: BLE001 - nothing may escape a reaper thread
        logger.debug("Reaping the worker (pid %d) failed", process.pid, exc_info=True)


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
        self.attach_patience = ATTACH_PATIENCE_SECONDS
        self._stuck: tuple[int, float] | None = None  # (pid, until): a live worker that did not answer
        self._killed: dict[int, float] = {}  # pids this process SIGKILLed, with when
        self._reaper: threading.Thread | None = None

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
        private_folder(self.config.paths.runtime_folder)
        with FileLock(str(self.lock_path), timeout=300, mode=0o600):
            found = self._attach()
            if found is None:
                found = self._start()
            self._endpoint = found
            return found[0], found[1]

    def _is_worker(self, pid: int, port: int) -> bool:
        """Whether ``pid`` runs and is this pool's worker on ``port`` (not a reused pid). Where
        the command line cannot be read (no /proc), a live pid counts as the worker."""
        killed = self._killed.get(pid)
        if killed is not None and time.monotonic() - killed < KILLED_MEMORY_SECONDS:
            return False  # SIGKILLed: it will never answer again, even if still in D state
        if not pid_alive(pid):
            return False
        args = process_args(pid)
        if args is None:
            return True
        return (
            WORKER_MODULE in args
            and _follows(args, "--pool", self.pool)
            and _follows(args, "--port", str(port))
        )

    def _attach(self) -> tuple[str, str, int] | None:
        """The recorded worker if it lives; None when there is none, so that one may start."""
        try:
            state = json.loads(read_private(self.state_path))
            pid, port = int(state["pid"]), int(state["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not self._is_worker(pid, port):
            return None  # a stale state file: the worker is gone (or its pid runs something else)
        url = f"http://127.0.0.1:{port}"
        try:
            token = read_private(self.token_path).strip()
        except (OSError, ValueError):
            token = ""
        if not token:
            logger.error("The worker of pool %s (pid %d) lost its token file: stopping it", self.pool, pid)
            self._put_down(pid)
            return None
        if self._answers(url, pid, port):
            return url, token, pid
        return None  # it died while we waited

    def _answers(self, url: str, pid: int, port: int) -> bool:
        """Wait (``attach_patience``, longer and longer probes) for a live worker to answer
        /health: True once it does, False if it dies meanwhile; a worker still alive but silent
        after that is busy or stuck: a 503, and no second worker."""
        stuck = self._stuck
        if stuck is not None and stuck[0] == pid and time.monotonic() < stuck[1]:
            raise ServiceUnavailableError(f"The worker of pool '{self.pool}' is not answering.")
        deadline = time.monotonic() + self.attach_patience
        timeout, pause = 2.0, 0.1
        while True:
            left = deadline - time.monotonic()
            try:
                if httpx.get(url + "/health", timeout=max(0.1, min(timeout, left))).status_code == 200:
                    self._stuck = None
                    return True
            except httpx.HTTPError:
                pass
            if not self._is_worker(pid, port):
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                self._stuck = (pid, time.monotonic() + STUCK_MEMORY_SECONDS)
                logger.error(
                    "The worker of pool %s (pid %d) runs but did not answer in %.0f s",
                    self.pool,
                    pid,
                    self.attach_patience,
                )
                raise ServiceUnavailableError(f"The worker of pool '{self.pool}' is not answering.")
            time.sleep(min(pause, left))
            timeout, pause = min(timeout * 2, 10.0), min(pause * 2, 1.0)

    def _put_down(self, pid: int) -> None:
        """Kill a worker nobody can use any more and wait (bounded) until it is gone."""
        try:
            os.kill(pid, SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            if self.process is not None and self.process.pid == pid:
                self.process.poll()  # reap our own child
            time.sleep(0.05)
        if pid_alive(pid):
            self._killed[pid] = time.monotonic()
            raise ServiceUnavailableError(f"The worker of pool '{self.pool}' is not answering.")

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
        write_private(self.token_path, token)
        port = free_port()
        log = open_private_log(self.log_path)
        try:
            self.process = subprocess.Popen(
                self._command(python, port), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            os.close(log)
        pid = self.process.pid
        self._killed.pop(pid, None)
        # recorded at once: were this process to die while the worker starts, the next one
        # attaches to it (once it answers) instead of starting a second one
        write_private(self.state_path, json.dumps({"pid": pid, "port": port}))
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
            self._killed[pid] = time.monotonic()
            self._reap_in_background(self.process)
            self._failures += 1
            raise BindingError(f"The worker of pool '{self.pool}' did not start in time.")
        logger.info("Started the worker of pool %s (pid %d)", self.pool, pid)
        return url, token, pid

    def _command(self, python: Path, port: int) -> list[str]:
        owner = int(os.environ.get(OWNER_ENV) or os.getpid())
        return [
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

    def _reap_in_background(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            self._reaper = threading.Thread(
                target=_reap, args=(process,), name=f"reap-{self.pool}-{process.pid}", daemon=True
            )
            self._reaper.start()

    def kill(self) -> None:
        """Kill a hung worker (whoever started it); the next request starts a fresh one.
        Returns at once (safe on the event loop): SIGKILL, then our child is reaped in a thread."""
        endpoint = self._endpoint
        self._endpoint = None
        self._failures += 1
        if endpoint is None:
            return
        pid = endpoint[2]
        if pid_alive(pid):
            logger.error("Killing the hung worker of pool %s (pid %d)", self.pool, pid)
            try:
                os.kill(pid, SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self._killed[pid] = time.monotonic()
        if self.process is not None and self.process.pid == pid:
            self._reap_in_background(self.process)

    def forget(self) -> None:
        """After a failed call: check the worker again next time (restarting it if dead)."""
        if self._endpoint is not None and not pid_alive(self._endpoint[2]):
            self._failures += 1
        if self.process is not None:
            self.process.poll()  # reap a dead child
        self._endpoint = None

    def stop(self) -> None:
        """Stop the worker if this process started it (others stop it through their owner pid).
        Blocking (at most about 20 s): call it in a thread."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                logger.error("The worker of pool %s (pid %d) does not die", self.pool, process.pid)

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


def _follows(args: list[str], flag: str, value: str) -> bool:
    """Whether ``flag value`` (or ``flag=value``) is among ``args``."""
    pairs = zip(args, args[1:], strict=False)
    return f"{flag}={value}" in args or any(a == flag and b == value for a, b in pairs)
