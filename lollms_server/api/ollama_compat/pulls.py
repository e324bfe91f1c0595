"""``/api/pull`` and ``/api/delete`` over the model manager's pulls (``app.state.pulls``, see
the pull manager interface): a pull's progress events become Ollama's NDJSON progress lines
``{status, digest, total, completed}``, then ``{"status": "success"}`` or ``{"error": ...}``."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Protocol

from fastapi import Request

from lollms_server.api.ollama_compat.translate import line, model_target
from lollms_server.core.errors import BadRequestError, LollmsError

logger = logging.getLogger(__name__)

NOT_AVAILABLE = (
    "Pulling and deleting models is not available on this server (it has no model manager); "
    "put model files in the binding instance's models folder instead."
)


class NotImplementedByServer(LollmsError):
    """501: this server cannot do that (no model manager to pull with)."""

    status_code = 501
    error_type = "not_implemented"


class Pull(Protocol):
    id: str
    status: str

    def events(self) -> AsyncIterator[dict[str, Any]]: ...


class PullManager(Protocol):
    async def start(self, instance: str, ref: str) -> Pull: ...

    async def delete_model(self, instance: str, model: str) -> None: ...


def manager(request: Request) -> PullManager:
    """The server's pull manager (501 where there is none)."""
    found: PullManager | None = getattr(request.app.state, "pulls", None)
    if found is None:
        raise NotImplementedByServer(NOT_AVAILABLE)
    return found


def split_ref(name: str, param: str = "model") -> tuple[str, str]:
    """``<instance>/<ref>`` (``<instance>/owner/repo/file.gguf``, ``<instance>/owner/repo:Q4_K_M``...)."""
    instance, ref = model_target(name)
    if not instance or not ref:
        raise BadRequestError(
            f"Name the binding instance and the model: '<instance>/<model>' (got '{name[:100]}').",
            param=param,
        )
    return instance, ref


def progress(event: dict[str, Any]) -> dict[str, Any]:
    """One pull progress event as Ollama's progress object (the file name is the digest)."""
    file = str(event.get("file", ""))
    return {
        "status": f"pulling {file}",
        "digest": file,
        "total": int(event.get("total") or 0),
        "completed": int(event.get("completed") or 0),
    }


async def progress_lines(pull: Pull) -> AsyncGenerator[bytes, None]:
    """The NDJSON lines of a pull, from its start (a failed pull's last line is its error)."""
    yield line({"status": "pulling manifest"})
    try:
        async for event in pull.events():
            yield line(progress(event))
    except LollmsError as exc:
        yield line({"error": exc.message})
        return
    except Exception:  # noqa: BLE001 - the stream ends with an error line, never a trace
        logger.exception("Pull %s failed", getattr(pull, "id", "?"))
        yield line({"error": "The pull failed."})
        return
    yield line({"status": "success"})


async def wait(pull: Pull) -> dict[str, str]:
    """A pull to its end (``stream: false``); its LollmsError is the answer's error."""
    async for _ in pull.events():
        pass
    return {"status": "success"}
