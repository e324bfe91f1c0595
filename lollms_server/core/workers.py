"""Pools in a worker process (``isolation = "process"``), shared by every server process.

The worker is a lollms_server holding only that pool (see ``lollms_server/worker.py``): its
queue, its models, its bindings' dependencies (optionally in their own venv). The first server
process that needs it starts it under a FileLock and writes a state file (pid, port) and a token
file next to the lock; the others attach. A dead worker is restarted on the next request. In the
server, the pool's instances become :class:`WorkerBinding` proxies that speak the native API.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import site
import subprocess
import sys
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import httpx
from filelock import FileLock

from lollms_server.core.bindings import (
    BindingContext,
    CancelToken,
    ForwardingBinding,
    MediaOutput,
    MediaRequest,
    Progress,
    TextChunk,
    TextRequest,
)
from lollms_server.core.config import AppConfig
from lollms_server.core.errors import (
    BadRequestError,
    BindingError,
    ConfigError,
    GenerationTimeoutError,
    LollmsError,
    NotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
)

logger = logging.getLogger(__name__)
OWNER_ENV = "LOLLMS_SERVER_OWNER_PID"
HANG_MARGIN_SECONDS = 2.0
HUNG_SILENCE_SHARE = 0.9  # of the generation timeout, for a stream the server gave up on


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
        port = _free_port()
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


_ERRORS: dict[int, type[LollmsError]] = {
    400: BadRequestError,
    403: PermissionDeniedError,
    404: NotFoundError,
    422: BadRequestError,
    504: GenerationTimeoutError,
}


def _error(status: int, message: str, retry_after: str | None = None) -> LollmsError:
    if status == 503:
        return ServiceUnavailableError(message, retry_after=int(retry_after or 5))
    error_class = _ERRORS.get(status, BindingError)
    return error_class(message)  # type: ignore[call-arg]


def _inputs(request: TextRequest) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Chat messages back into native input items (the worker rebuilds the same messages)."""
    parameters = dict(request.parameters)
    if request.prompt is not None:
        parameters["raw_prompt"] = True
        return [{"type": "text", "role": "user_prompt", "data": request.prompt}], parameters
    messages = request.messages
    last_user = max((i for i, message in enumerate(messages) if message["role"] == "user"), default=-1)
    items: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        content = message.get("content") or ""
        parts: list[dict[str, Any]] = (
            content if isinstance(content, list) else [{"type": "text", "text": content}]
        )
        role = {"system": "system_context", "assistant": "assistant"}.get(message["role"], "user")
        if index == last_user:
            role = "user_prompt"
        text = "".join(part.get("text", "") for part in parts if part.get("type") == "text")
        items.append({"type": "text", "role": role, "data": text})
        for part in parts:
            if part.get("type") == "image_url":
                url = str(part["image_url"]["url"])
                items.append(
                    {
                        "type": "image",
                        "role": "input_image",
                        "data": url.split(",", 1)[-1],
                        "mime_type": url[5:].split(";", 1)[0] if url.startswith("data:") else None,
                    }
                )
    return items, parameters


class WorkerBinding(ForwardingBinding):
    """Stands for an instance whose pool runs in a worker process: every call goes to the worker,
    whose own resource manager queues, loads and generates."""

    def __init__(self, context: BindingContext, supervisor: WorkerSupervisor) -> None:
        super().__init__(context)
        self.supervisor = supervisor
        self._client: httpx.AsyncClient | None = None
        # a worker silent for longer than its own generation timeout (plus a margin) is hung
        self.hang_seconds = supervisor.config.resource_manager.generation_timeout + HANG_MARGIN_SECONDS

    async def _endpoint(self) -> httpx.AsyncClient:
        """A client on the live worker (kept open: connections are reused between calls)."""
        live = self.supervisor.live_endpoint()
        url, token = live if live is not None else await asyncio.to_thread(self.supervisor.endpoint_sync)
        if self._client is None or str(self._client.base_url).rstrip("/") != url:
            if self._client is not None:
                await self._client.aclose()
            timeout = httpx.Timeout(self.hang_seconds, connect=10.0)
            self._client = httpx.AsyncClient(base_url=url, headers={"X-API-Key": token}, timeout=timeout)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        client = await self._endpoint()
        try:
            response = await client.request(method, path, **kwargs)
        except httpx.ReadTimeout:
            self.supervisor.kill()
            raise GenerationTimeoutError(
                f"The worker of pool '{self.supervisor.pool}' hung and was restarted."
            ) from None
        except httpx.TransportError:
            self.supervisor.forget()
            raise BindingError(f"The worker of pool '{self.supervisor.pool}' is not answering.") from None
        if not response.is_success:
            raise self._remote_error(response)
        return response.json()

    @staticmethod
    def _remote_error(response: httpx.Response) -> LollmsError:
        try:
            message = str(response.json()["error"]["message"])
        except (ValueError, KeyError, TypeError):
            message = "The worker failed."
        return _error(response.status_code, message, response.headers.get("retry-after"))

    # ---- models (the worker owns residency) ------------------------------------------
    async def list_available_models(self) -> list[dict[str, Any]]:
        data = await self._call("GET", f"/api/v1/list_available_models/{self.instance_name}")
        models: list[dict[str, Any]] = data["models"]
        return models

    async def load_model(self, model_name: str) -> None:
        """Make sure the worker runs (it loads the model itself when the request reaches it)."""
        await self._endpoint()

    async def get_model_info(self, model_name: str | None) -> dict[str, Any]:
        params = {"model_name": model_name} if model_name else {}
        info: dict[str, Any] = await self._call(
            "GET", f"/api/v1/get_model_info/{self.instance_name}", params=params
        )
        return info

    # ---- text ------------------------------------------------------------------------
    async def stream_text(
        self, model_name: str, request: TextRequest, cancel: CancelToken
    ) -> AsyncGenerator[TextChunk, None]:
        inputs, parameters = _inputs(request)
        body = {
            "input_data": inputs,
            "binding_name": self.instance_name,
            "model_name": model_name,
            "parameters": parameters,
            "stream": True,
        }
        client = await self._endpoint()
        finished = False
        last_heard = time.monotonic()
        try:
            async with client.stream("POST", "/api/v1/generate", json=body) as response:
                if not response.is_success:
                    await response.aread()
                    raise self._remote_error(response)
                async for line in response.aiter_lines():
                    last_heard = time.monotonic()
                    if not line.startswith("data: "):
                        continue
                    event = json.loads(line[6:])
                    if event["type"] == "chunk":
                        yield TextChunk(event["content"])
                    elif event["type"] == "final":
                        metadata = event["content"][0]["metadata"]
                        finished = True
                        yield TextChunk(
                            "",
                            metadata.get("finish_reason") or "stop",
                            metadata.get("usage") or {},
                            {"worker_timings": metadata.get("timings", {})},
                        )
                    elif event["type"] == "error":
                        meta = event.get("metadata", {})
                        raise _error(int(meta.get("status", 500)), str(event["content"]))
        except httpx.ReadTimeout:
            self.supervisor.kill()
            raise GenerationTimeoutError(
                f"The worker of pool '{self.supervisor.pool}' hung and was restarted."
            ) from None
        except (GeneratorExit, asyncio.CancelledError):
            # stopped by the server's generation timeout while the worker, which has the same
            # timeout, said nothing: it is hung, not slow. The server's clock started a moment
            # before this stream, so silence of nearly the whole timeout counts.
            timeout = self.supervisor.config.resource_manager.generation_timeout
            if time.monotonic() - last_heard >= HUNG_SILENCE_SHARE * timeout:
                self.supervisor.kill()
            raise
        except (httpx.TransportError, httpx.RemoteProtocolError):
            self.supervisor.forget()
            raise BindingError(
                f"The worker of pool '{self.supervisor.pool}' stopped during the generation."
            ) from None
        if not finished:
            self.supervisor.forget()
            raise BindingError(f"The worker of pool '{self.supervisor.pool}' ended the stream early.")

    async def tokenize(self, model_name: str, text: str) -> list[int]:
        data = await self._call(
            "POST",
            "/api/v1/tokenize",
            json={"text": text, "binding_name": self.instance_name, "model_name": model_name},
        )
        tokens: list[int] = data["tokens"]
        return tokens

    async def detokenize(self, model_name: str, tokens: list[int]) -> str:
        data = await self._call(
            "POST",
            "/api/v1/detokenize",
            json={"tokens": tokens, "binding_name": self.instance_name, "model_name": model_name},
        )
        return str(data["text"])

    async def embed(self, model_name: str, texts: list[str]) -> list[list[float]]:
        data = await self._call(
            "POST",
            "/v1/embeddings",
            json={"model": f"{self.instance_name}/{model_name}", "input": texts, "encoding_format": "float"},
        )
        return [item["embedding"] for item in data["data"]]

    # ---- media -------------------------------------------------------------------------
    async def forward_media(
        self, model_name: str, request: MediaRequest, progress: Progress
    ) -> list[MediaOutput]:
        inputs: list[dict[str, Any]] = []
        if request.prompt:
            inputs.append({"type": "text", "role": "user_prompt", "data": request.prompt})
        for image in request.images:
            inputs.append({"type": "image", "role": "input_image", "data": base64.b64encode(image).decode()})
        if request.mask is not None:
            inputs.append(
                {"type": "image", "role": "mask_image", "data": base64.b64encode(request.mask).decode()}
            )
        if request.audio is not None:
            inputs.append(
                {"type": "audio", "role": "input_audio", "data": base64.b64encode(request.audio).decode()}
            )
        body = {
            "generation_type": request.generation_type,
            "input_data": inputs,
            "binding_name": self.instance_name,
            "model_name": model_name,
            "parameters": request.parameters,
        }
        data = await self._call("POST", "/api/v1/generate", json=body)
        outputs = []
        for item in data["output"]:
            payload = item["data"]
            if item["type"] in ("image", "video", "audio"):
                payload = base64.b64decode(payload)
            outputs.append(
                MediaOutput(item["type"], payload, item.get("mime_type") or "", item.get("metadata", {}))
            )
        return outputs
