"""The first run: the default text instance gets a model without its user doing anything.

At start (``app.state.first_run``, started by the app's lifespan) the models folders of the
instances that keep model files are created, then, while the default text instance
(``defaults.ttt_binding``) has no model configured (``defaults.ttt_model``, its ``model_name``):

* an installed model (a file copied into its folder, a finished pull) is adopted: it becomes
  ``defaults.ttt_model``, at once and without a restart (the folder is looked at every
  ``WATCH_SECONDS``);
* with ``[models] pull_default_on_start`` (``lollms-server init`` turns it on) and nothing
  installed, the default model (:func:`~.hints.default_ref`) is pulled in the background with the
  server's :class:`~.pulls.PullManager`. The server answers meanwhile: a request for the default
  text model follows the pull as a first-use download does (a stream gets ``downloading``
  events; a whole answer waits up to its pool's ``queue_timeout``, then 503 "being downloaded"
  with Retry-After); ``GET /api/v1/models/default`` shows its progress;
* offline (``HF_HUB_OFFLINE``), refused (``allowed_sources``) or failed, the log says exactly
  what to do: the command, and the folder to copy a GGUF into. A request meanwhile gets 503 with
  the same words.

With several server workers one process pulls (it holds ``.first-run.lock`` in the models
folder); the others answer "being pulled" and adopt its file, or pull themselves if it gave up.

An adopted model is written into ``config.toml`` (``defaults.ttt_model``, atomically, same mode)
when ``pull_default_on_start`` is on, so the next start neither pulls nor looks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

from lollms_server.core.bindings import BindingInstance, BindingManager
from lollms_server.core.config import AppConfig
from lollms_server.core.errors import BadRequestError, ConflictError, LollmsError, ServiceUnavailableError
from lollms_server.core.models.config_file import set_default_text_model
from lollms_server.core.models.hints import default_ref, missing_default_model
from lollms_server.core.models.hub import hub_offline
from lollms_server.core.models.installed import installed_models, model_files_of
from lollms_server.core.models.pulls import Pull, PullManager

logger = logging.getLogger(__name__)

WATCH_SECONDS = 2.0
RETRY_AFTER = 10
Fetcher = Callable[..., Awaitable[Any]]


LOCK_FILE = ".first-run.lock"


def claim(folder: Path) -> IO[bytes] | None:
    """The open lock file of ``folder`` when this process is the one that pulls the default
    model (several server workers start together: one pulls, the others wait for its file);
    None when another process holds it. Blocking."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not posix: one process
        return open(os.devnull, "rb")  # noqa: SIM115 - the caller closes it
    try:
        handle = open(folder / LOCK_FILE, "a+b")  # noqa: SIM115 - kept open while the pull runs
    except OSError:  # a read-only folder: the pull says what is wrong
        return open(os.devnull, "rb")  # noqa: SIM115 - the caller closes it
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


class FirstRun:
    """The default text instance's model on a fresh install (see the module docstring)."""

    def __init__(self, config: AppConfig, bindings: BindingManager, pulls: PullManager) -> None:
        self.config = config
        self.bindings = bindings
        self.pulls = pulls
        self.instance = self._default_instance()
        self.ref = default_ref(config, self.kind or "gguf")
        self.status = "ready"  # ready | pulling | missing
        self.pull: Pull | None = None
        self.message: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._claim: IO[bytes] | None = None  # held while this process pulls the default model

    def _default_instance(self) -> BindingInstance | None:
        name = self.config.defaults.ttt_binding
        instance = self.bindings.instances.get(name) if name else None
        if instance is None:
            return None
        try:
            model_files_of(instance)
        except LollmsError:
            return None  # a remote API: no files to get
        return instance

    @property
    def kind(self) -> str | None:
        return model_files_of(self.instance) if self.instance is not None else None

    def configured(self) -> str | None:
        """The default text model the configuration names (None: none yet)."""
        if self.instance is None:
            return None
        return self.config.defaults.ttt_model or self.instance.config.model_name

    # ---- start and stop ---------------------------------------------------------
    async def start(self) -> None:
        """Create the models folders; then, when the default instance has no model, adopt,
        pull or explain in the background (the server does not wait)."""
        await asyncio.to_thread(self._make_folders)
        if self.instance is None or self.configured() is not None:
            return
        pulls = self.config.models.pull_default_on_start and not hub_offline()
        self.status = "pulling" if pulls else "missing"
        self._task = asyncio.create_task(self._run(), name="first-run model")

    def _make_folders(self) -> None:
        for instance in self.bindings.instances.values():
            try:
                model_files_of(instance)
            except LollmsError:
                continue
            try:
                instance.models_folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                logger.warning("Cannot create the models folder %s: %s", instance.models_folder, exc)

    async def close(self) -> None:
        for task in (self._task, self._follower):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._release()

    # ---- the background task ------------------------------------------------------
    async def _run(self) -> None:
        if await self._adopt_installed(force=True):
            return
        if self.config.models.pull_default_on_start:
            await self._pull()
        if self.status == "ready":
            return
        if self.status == "missing":
            await self._explain()
        while self.status != "ready":  # a file copied in (or pulled by hand) is served at once
            await asyncio.sleep(WATCH_SECONDS)
            if self.status == "missing" or (self.status == "pulling" and self.pull is None):
                if not await self._adopt_installed(force=True) and self.status == "pulling":
                    await self._pull()  # the process that pulled gave up: this one tries
                    if self.status == "missing":
                        await self._explain()

    async def _adopt_installed(self, force: bool = False) -> bool:
        assert self.instance is not None
        try:
            found = await asyncio.to_thread(installed_models, self.instance)
        except (LollmsError, OSError):
            return False
        if not found or (self.status == "pulling" and not force):
            return False
        await self._adopt(found[0]["name"])
        return True

    async def _pull(self) -> None:
        if hub_offline():
            self.message = "The hub is offline (HF_HUB_OFFLINE is set): the default model is not pulled."
            return
        assert self.instance is not None
        handle = await asyncio.to_thread(claim, self.instance.models_folder)
        if handle is None:  # another server process pulls it: its file is adopted when it lands
            self.status, self.message = "pulling", None
            return
        self._claim = handle
        try:
            await self.pull_default()
        except LollmsError as exc:
            self.status = "missing"
            self.message = f"Pulling the default model {self.ref} failed: {exc.message}"
            return
        finally:
            if self.pull is None:
                self._release()
        if self._follower is not None:
            await asyncio.shield(self._follower)

    def _release(self) -> None:
        if self._claim is not None:
            self._claim.close()
            self._claim = None

    async def pull_default(self) -> Pull:
        """Start (or join) the pull of the default model (at start, or the web UI's button):
        requests for the default text model follow it, and it is adopted once installed. 409 when
        the default text binding has its model; 4xx/503 when the pull cannot start (offline,
        refused source, too big, no room)."""
        if self.instance is None:
            raise BadRequestError("The default text binding keeps no model files to pull.", param="binding")
        if self.pull is not None:
            return self.pull
        if self.status == "ready" and self.configured() is not None:
            raise ConflictError(f"The default text binding already has its model '{self.configured()}'.")
        pull = await self.pulls.start(self.instance.name, self.ref, trusted=True)
        if self.pull is not None:  # started meanwhile by another caller
            return self.pull
        self.pull, self.status, self.message = pull, "pulling", None
        self.config.defaults.ttt_model = pull.plan.installed_name  # requests follow the pull
        logger.info(
            "Pulling the default text model %s into %s (%.2f GB); requests for it wait "
            "(GET /api/v1/models/default shows the progress)",
            self.ref,
            pull.folder,
            pull.plan.total / 2**30,
        )
        self._follower = asyncio.create_task(self._follow(pull), name="default model pull")
        return pull

    async def _follow(self, pull: Pull) -> None:
        """Wait for the pull, then adopt its model (or go back to "missing", saying why)."""
        try:
            names = await pull.wait()
        except LollmsError as exc:
            self.config.defaults.ttt_model = None
            self.status = "missing"
            self.message = f"Pulling the default model {self.ref} failed: {exc.message}"
            await self._explain()
            return
        finally:
            self.pull = None
            self._release()
        self.config.defaults.ttt_model = None
        await self._adopt(names[0])

    async def _adopt(self, model: str) -> None:
        assert self.instance is not None
        self.config.defaults.ttt_model = model
        self.status, self.message = "ready", None
        path = self.config.config_path
        if self.config.models.pull_default_on_start and path is not None and path.is_file():
            try:
                await asyncio.to_thread(set_default_text_model, path, model)
                logger.info("The default text model is now %s (written into %s)", model, path)
            except OSError as exc:
                logger.warning("Serving %s; could not write it into %s: %s", model, path, exc)
        else:
            logger.info("The default text model is now %s (installed in %s)", model, self.instance.name)

    async def _explain(self) -> None:
        hint = await asyncio.to_thread(missing_default_model, self.config, self.bindings)
        if self.message and hint and hint in self.message:
            return
        self.message = " ".join(part for part in (self.message, hint) if part) or None
        if self.message:
            logger.warning("%s", self.message)

    # ---- what requests and the API see ------------------------------------------------
    def fetcher(self, inner: Fetcher | None) -> Fetcher:
        """``inner`` (the first-use fetcher) that, for the default model being pulled, returns
        that pull: the request waits for it (or follows it when streamed)."""

        async def fetch(instance: str, model: str, *, trusted: bool, key: str | None = None) -> Any:
            pull = self.pull
            if pull is not None and instance == pull.instance and model == pull.plan.installed_name:
                return pull  # the server's own pull: no key's first-use budget is spent
            return await inner(instance, model, trusted=trusted, key=key) if inner is not None else None

        return fetch

    def no_model(self, instance: BindingInstance) -> LollmsError | None:
        """The error for a request to ``instance`` with no model: 503 with what to do, while the
        default instance has none (None for any other instance)."""
        if self.instance is None or instance.name != self.instance.name or self.status == "ready":
            return None
        if self.status == "pulling":
            message = f"The default model {self.ref} is being pulled; try again shortly."
        else:
            message = self.message or f"Binding '{instance.name}' has no model yet."
        return ServiceUnavailableError(message, retry_after=RETRY_AFTER)

    def describe(self) -> dict[str, Any]:
        """``GET /api/v1/models/default``: the default text model and how to get it."""
        pull = self.pull.describe() if self.pull is not None else None
        return {
            "binding": self.instance.name if self.instance is not None else self.config.defaults.ttt_binding,
            "model": self.configured() if self.status == "ready" else None,
            "status": self.status,
            "default_ref": self.ref,
            "models_folder": str(self.instance.models_folder) if self.instance is not None else None,
            "pull": pull,
            "message": self.message,
        }
