"""Pulls: a model reference fetched into a binding instance's models folder, with progress that
any number of listeners follow, shared downloads, cancel, and a bounded list of recent pulls.

The :class:`PullManager` is what ``app.state.pulls`` holds (the native ``/api/v1/models`` routes,
the Ollama API's ``/api/pull`` and the dashboard call it) and what ``lollms-server pull`` runs.
One file is fetched once at a time however many pulls want it (a :class:`Transfer`, joined by
later pulls); a pull of the same files as a running one *is* that pull.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from lollms_server.core.bindings import BindingInstance, BindingManager
from lollms_server.core.config import AppConfig
from lollms_server.core.errors import (
    BadRequestError,
    ConflictError,
    LollmsError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ServiceUnavailableError,
)
from lollms_server.core.models.hub import HubClient, Plan, RemoteFile, hub_offline
from lollms_server.core.models.installed import delete_installed, model_files_of, model_path
from lollms_server.core.models.refs import ModelRef, parse_ref, source_allowed
from lollms_server.core.models.transfer import PullCancelled, fetch_file, part_path

logger = logging.getLogger(__name__)

EVENTS_EVERY_SECONDS = 0.25
MAX_RUNNING = 16  # pulls at once; more get 503 (nothing keyed by requests grows without bound)
DISK_MARGIN_BYTES = 64 * 2**20
DOWNLOAD_THREADS = MAX_RUNNING + 4
"""Threads of the pulls' own executor: every transfer and hub call runs there, never in the loop's
default executor, which short server work (image decoding and stamping, binding starts, job files)
needs free. A transfer beyond it waits for a thread; it does not take one from anybody else."""
T = TypeVar("T")
Residency = Callable[[], Awaitable[set[tuple[str, str]]]]
"""The (instance, model) pairs loaded or in use in any pool, for deletes."""


@dataclass
class FileProgress:
    file: str
    completed: int
    total: int

    def public(self) -> dict[str, Any]:
        return {"file": self.file, "completed": self.completed, "total": self.total}


@dataclass
class Transfer:
    """One file being fetched, shared by every pull that needs it."""

    target: Path
    progress: FileProgress
    cancel: threading.Event = field(default_factory=threading.Event)
    users: set[str] = field(default_factory=set)
    pulls: list[Pull] = field(default_factory=list)
    task: asyncio.Task[Path] | None = None

    def update(self, completed: int) -> None:
        self.progress.completed = completed
        for pull in self.pulls:
            pull.notify()


class Pull:
    """One pull: its files' progress, its outcome, and its listeners (see :meth:`events`)."""

    def __init__(self, instance: str, ref: str, plan: Plan, folder: Path) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.instance = instance
        self.ref = ref
        self.plan = plan
        self.folder = folder
        self.status = "running"
        self.result: list[str] = []
        self.error: LollmsError | None = None
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.files = {item.path: FileProgress(item.path, 0, item.size) for item in plan.files}
        self._changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.charged: tuple[str, int] | None = None
        """(generate key, bytes) counted against the key's first-use budget, until it ends."""

    def notify(self) -> None:
        """Wake every listener (each holds the event of its last look; a new one replaces it)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "instance": self.instance,
            "ref": self.ref,
            "status": self.status,
            "model": self.plan.installed_name,
            "files": [item.public() for item in self.files.values()],
            "completed": sum(item.completed for item in self.files.values()),
            "total": sum(item.total for item in self.files.values()),
            "result": list(self.result),
            "error": self.error.to_dict()["error"] if self.error is not None else None,
            "started_at": round(self.started_at, 3),
            "ended_at": round(self.ended_at, 3) if self.ended_at is not None else None,
        }

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """``{file, completed, total}`` for every file now, then as bytes arrive (at most every
        0.25 s per file); ends when the pull succeeded, raises its error otherwise."""
        sent: dict[str, int] = {}
        while True:
            finished = self.status != "running"
            changed = self._changed
            for item in list(self.files.values()):
                if sent.get(item.file) != item.completed:
                    sent[item.file] = item.completed
                    yield item.public()
            if finished:
                break
            await changed.wait()
            if self.status == "running":
                await asyncio.sleep(EVENTS_EVERY_SECONDS)
        if self.error is not None:
            raise self.error

    async def wait(self) -> list[str]:
        """The installed model names once the pull succeeded (its error otherwise)."""
        async for _ in self.events():
            pass
        return self.result

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def _finish(self, status: str, error: LollmsError | None = None) -> None:
        self.status = status
        self.error = error
        self.ended_at = time.time()
        self.notify()


class PullManager:
    """Starts and tracks pulls for the binding instances of one configuration."""

    def __init__(
        self, config: AppConfig, bindings: BindingManager, residency: Residency | None = None
    ) -> None:
        self.config = config
        self.bindings = bindings
        self.residency = residency
        self.running: dict[str, Pull] = {}
        self.recent: deque[Pull] = deque(maxlen=config.models.recent_pulls)
        self._transfers: dict[Path, Transfer] = {}
        self._clients: dict[str, httpx.Client] = {}
        self._executor = ThreadPoolExecutor(DOWNLOAD_THREADS, thread_name_prefix="lollms-pull")
        self._first_use_spent: dict[str, int] = {}  # generate key name -> bytes its requests pulled
        self._first_use_total = 0

    async def _in_thread(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``func`` in the pulls' executor (network and disk work of pulls only)."""
        call = functools.partial(func, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    # ---- starting -----------------------------------------------------------
    async def start(
        self, instance: str, ref: str, *, trusted: bool = True, budget_key: str | None = None
    ) -> Pull:
        """Start (or join) a pull of ``ref`` into ``instance``'s models folder. ``trusted``: an
        admin asked (an empty ``allowed_sources`` then allows any source). ``budget_key``: a
        generate key's first use, counted against ``[models] first_use_gb_per_key`` and
        ``first_use_total_gb``. 4xx before returning for an unknown instance, a bad ref, a
        refused source, too big, no room on disk, over budget."""
        target = self.bindings.instance(instance)
        model_files = model_files_of(target)
        parsed = parse_ref(ref)
        self._check_source(parsed, trusted)
        for pull in self.running.values():
            if pull.instance == target.name and pull.ref == str(parsed):
                return pull
        hub = self._hub(target)
        plan = await self._in_thread(hub.plan, parsed, model_files)
        limit = self.config.models.max_bytes(self.config.downloads)
        if plan.total > limit:
            raise PayloadTooLargeError(
                f"'{parsed}' is {plan.total / 2**30:.2f} GB; this server pulls at most "
                f"{limit / 2**30:.2f} GB ([models] max_download_gb)."
            )
        folder = target.models_folder
        needed = await self._in_thread(self._check_disk, folder, plan)
        for pull in self.running.values():  # after the last await: nothing starts in between
            if pull.folder == folder and pull.plan.installed_name == plan.installed_name:
                return pull
        if len(self.running) >= MAX_RUNNING:
            raise ServiceUnavailableError(f"{MAX_RUNNING} pulls are running; try again soon.", retry_after=30)
        if budget_key is not None:
            self._spend_first_use(budget_key, needed)
        pull = Pull(target.name, str(parsed), plan, folder)
        pull.charged = (budget_key, needed) if budget_key is not None else None
        self.running[pull.id] = pull
        pull.task = asyncio.create_task(self._run(pull, hub), name=f"pull {pull.id}")
        logger.info("Pull %s: %s into %s (%d files, %d bytes)", pull.id, parsed, target.name,
                    len(plan.files), plan.total)  # fmt: skip
        return pull

    def _check_source(self, ref: ModelRef, trusted: bool) -> None:
        sources = self.config.models.sources(self.config.downloads)
        if not source_allowed(ref.repo_id, sources, trusted=trusted):
            raise PermissionDeniedError(
                f"Pulling from '{ref.repo_id}' is not allowed on this server (an administrator lists "
                "allowed sources in [models] allowed_sources).",
                param="ref",
            )

    def _hub(self, target: BindingInstance) -> HubClient:
        token = target.settings.get("hub_token") or os.environ.get(self.config.models.hub_token_env)
        return HubClient(self.config.models.endpoint(), token or None)

    def _spend_first_use(self, key: str, needed: int) -> None:
        """Count a generate key's first-use download against its budget and the total (403 past
        either: the bytes are counted when the pull starts, and stay counted while it runs)."""
        settings = self.config.models
        per_key = int(settings.first_use_gb_per_key * 2**30)
        total = int(settings.first_use_total_gb * 2**30)
        spent = self._first_use_spent.get(key, 0)
        if spent + needed > per_key:
            raise PermissionDeniedError(
                f"This download ({needed / 2**20:.1f} MB) is over this key's budget for models "
                f"downloaded on first use: {spent / 2**20:.1f} of {per_key / 2**20:.1f} MB used "
                "([models] first_use_gb_per_key). An administrator can pull the model.",
                param="model_name",
            )
        if self._first_use_total + needed > total:
            raise PermissionDeniedError(
                f"This download ({needed / 2**20:.1f} MB) is over this server's budget for models "
                f"downloaded on first use ({total / 2**20:.1f} MB, [models] first_use_total_gb). "
                "An administrator can pull the model.",
                param="model_name",
            )
        self._first_use_spent[key] = spent + needed  # keys are the configured ones: bounded
        self._first_use_total += needed

    async def _refund_first_use(self, pull: Pull) -> None:
        """A first-use pull that failed or was cancelled keeps counted only the bytes it left on
        disk (its ``.part`` files, which a later pull resumes from); the rest goes back to the
        key's budget and the total."""
        if pull.charged is None:
            return
        key, charged = pull.charged
        pull.charged = None
        try:
            missing = await self._in_thread(self._missing_bytes, pull.folder, pull.plan)
        except (OSError, asyncio.CancelledError):  # a second cancel (shutdown) must not skip
            return  # the pull's end: what is on disk is unknown, nothing refunded
        refund = min(missing, charged)
        self._first_use_spent[key] = max(0, self._first_use_spent.get(key, 0) - refund)
        self._first_use_total = max(0, self._first_use_total - refund)

    @staticmethod
    def _missing_bytes(folder: Path, plan: Plan) -> int:
        """The bytes of ``plan`` not yet on disk (a ``.part`` file counts for what it holds)."""
        needed = 0
        for item in plan.files:
            target = plan.target(folder, item)
            if target.is_file() and target.stat().st_size == item.size:
                continue
            part = part_path(target)
            needed += max(0, item.size - (part.stat().st_size if part.is_file() else 0))
        return needed

    @classmethod
    def _check_disk(cls, folder: Path, plan: Plan) -> int:
        """The bytes the pull still needs (413 when the disk has no room for them)."""
        needed = cls._missing_bytes(folder, plan)
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        free = shutil.disk_usage(existing).free
        if needed + DISK_MARGIN_BYTES > free:
            raise PayloadTooLargeError(
                f"Not enough disk space for this pull: it needs {needed / 2**30:.2f} GB, "
                f"{free / 2**30:.2f} GB are free in {folder.name}."
            )
        return needed

    # ---- running --------------------------------------------------------------
    async def _run(self, pull: Pull, hub: HubClient) -> None:
        plan = pull.plan
        deferred: list[Path] = []  # snapshot markers: renamed last, so listings never see half a model
        try:
            for item in plan.files:
                target = await self._in_thread(plan.target, pull.folder, item)
                if await self._in_thread(_present, target, item):
                    pull.files[item.path].completed = item.size
                    pull.notify()
                    continue
                defer = item.path in plan.markers
                written = await self._fetch(pull, hub, item, target, rename=not defer)
                if defer:
                    deferred.append(written)
            for part in deferred:
                final = part.with_name(part.name.removesuffix(".part"))
                if part.exists():
                    os.replace(part, final)
        except asyncio.CancelledError:
            await self._refund_first_use(pull)
            pull._finish("cancelled", PullCancelled("The pull was cancelled."))
            logger.info("Pull %s cancelled", pull.id)
        except LollmsError as exc:
            await self._refund_first_use(pull)
            pull._finish("failed", exc)
            logger.warning("Pull %s failed: %s", pull.id, exc.message)
        except Exception as exc:  # noqa: BLE001 - disk errors and the like end the pull, not the server
            logger.exception("Pull %s failed", pull.id)
            await self._refund_first_use(pull)
            pull._finish("failed", LollmsError(f"The pull failed ({type(exc).__name__})."))
        else:
            pull.result = [plan.installed_name]
            pull._finish("succeeded")
            logger.info("Pull %s done: %s", pull.id, plan.installed_name)
        finally:
            self.running.pop(pull.id, None)
            self.recent.appendleft(pull)

    async def _fetch(
        self, pull: Pull, hub: HubClient, item: RemoteFile, target: Path, *, rename: bool
    ) -> Path:
        """This file, fetched by a transfer this pull starts or joins."""
        transfer = self._transfers.get(target)
        if transfer is None:
            transfer = Transfer(target, FileProgress(item.path, 0, item.size))
            loop = asyncio.get_running_loop()
            client = self._client(hub)
            url = hub.file_url(pull.plan.repo_id, item.path, pull.plan.commit)

            def progress(completed: int) -> None:
                loop.call_soon_threadsafe(transfer.update, completed)

            transfer.task = asyncio.create_task(
                self._in_thread(
                    fetch_file, client, url, item, target, progress, transfer.cancel, rename=rename
                )
            )
            self._transfers[target] = transfer
            transfer.task.add_done_callback(lambda _: self._forget(transfer))
        pull.files[item.path] = transfer.progress  # the shared counter
        transfer.users.add(pull.id)
        transfer.pulls.append(pull)
        assert transfer.task is not None
        try:
            return await asyncio.shield(transfer.task)
        except asyncio.CancelledError:
            transfer.users.discard(pull.id)
            if not transfer.users:  # nobody else waits for it: stop it (its .part stays, to resume)
                transfer.cancel.set()
            raise
        finally:
            transfer.pulls.remove(pull)

    def _forget(self, transfer: Transfer) -> None:
        if self._transfers.get(transfer.target) is transfer:
            del self._transfers[transfer.target]
        if transfer.task is not None and not transfer.task.cancelled():
            transfer.task.exception()  # retrieved: a stopped transfer nobody awaits is no error

    def _client(self, hub: HubClient) -> httpx.Client:
        key = f"{hub.endpoint}\0{hub.token or ''}"
        client = self._clients.get(key)
        if client is None:
            client = httpx.Client(
                headers=hub.headers(),
                follow_redirects=True,
                timeout=httpx.Timeout(30.0, read=60.0),
            )
            self._clients[key] = client
        return client

    # ---- the interface the API uses ----------------------------------------------
    def get(self, pull_id: str) -> Pull | None:
        return self.running.get(pull_id) or next((p for p in self.recent if p.id == pull_id), None)

    def list(self) -> list[dict[str, Any]]:
        """Running pulls, then recent ones (newest first)."""
        return [pull.describe() for pull in [*self.running.values(), *self.recent]]

    async def delete_model(self, instance: str, model: str) -> None:
        """Delete an installed model: 404 unknown, 409 while loaded, in use or being pulled."""
        target = self.bindings.instance(instance)
        path = await self._in_thread(model_path, target, model)
        for pull in self.running.values():
            if pull.folder == target.models_folder and pull.plan.installed_name == model:
                raise ConflictError(f"Model '{model}' is being pulled (pull {pull.id}).")
        if self.residency is not None:
            sharing = {
                other.name
                for other in self.bindings.instances.values()
                if other.models_folder == target.models_folder
            }
            loaded = await self.residency()
            if any((name, model) in loaded for name in sharing):
                raise ConflictError(f"Model '{model}' is loaded; it can be deleted once unloaded.")
        await self._in_thread(delete_installed, target, path)
        logger.info("Deleted model %s of %s", model, target.name)

    async def for_first_use(
        self, instance: str, model: str, *, trusted: bool, key: str | None = None
    ) -> Pull | None:
        """The pull that fetches ``model`` for a request (started or joined), or None when the
        model is there, the instance does not download, or the name is no hub reference. A
        request of a generate key (not ``trusted``) spends that key's first-use budget."""
        target = self.bindings.instance(instance)
        if not target.settings.get("allow_download") or hub_offline():
            return None  # offline: the binding finds what it can (a library's own cache)
        try:
            kind = model_files_of(target)
            await self._in_thread(model_path, target, model)
            return None  # installed
        except BadRequestError:
            return None
        except LollmsError:
            pass
        parts = model.split("/")
        if kind == "gguf" and not (len(parts) >= 3 and model.lower().endswith(".gguf")):
            return None
        if kind == "snapshot" and len(parts) != 2:
            return None
        budget_key = None if trusted else (key or "")
        return await self.start(instance, model, trusted=trusted, budget_key=budget_key)

    async def close(self) -> None:
        """Stop every pull (their ``.part`` files stay, for the next pull to resume)."""
        pulls = list(self.running.values())
        for transfer in self._transfers.values():
            transfer.cancel.set()
        for pull in pulls:
            pull.cancel()
        await asyncio.gather(*(pull.task for pull in pulls if pull.task is not None), return_exceptions=True)
        tasks = [transfer.task for transfer in self._transfers.values() if transfer.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _present(target: Path, item: RemoteFile) -> bool:
    """Already installed (a finished earlier pull): the right size is there."""
    return target.is_file() and target.stat().st_size == item.size
