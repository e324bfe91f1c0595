"""Configuration: pydantic models of ``config.toml`` (DESIGN §2).

Nothing is read at import time: ``load_config(path)`` reads one file, applies the
``LOLLMS_SERVER__SECTION__KEY`` environment overrides, validates everything and resolves
relative paths against the folder of the file. Errors name the file, the key and the reason;
values are never echoed, so a secret cannot leak through an error message.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lollms_server.core.errors import ConfigError
from lollms_server.core.types import GENERATION_TYPES
from lollms_server.utils.paths import shipped

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ENV_PREFIX = "LOLLMS_SERVER__"
DEFAULT_ZOOS_FOLDER = shipped("zoos")


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServerConfig(StrictModel):
    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 exposes the server.")
    port: int = Field(9601, ge=1, le=65535, description="TCP port to listen on.")
    workers: int = Field(1, ge=1, le=64, description="Number of uvicorn worker processes.")
    allowed_origins: list[str] = Field(
        default_factory=list, description="CORS origins allowed to call the API (none by default)."
    )
    max_request_bytes: int = Field(
        40 * 1024 * 1024,
        ge=1024,
        description="Request bodies larger than this get 413 before being read (40 MiB: one 25 MiB "
        "audio file or image, base64-encoded, with room to spare).",
    )
    send_timeout: float = Field(
        15.0,
        gt=0,
        le=3600,
        description="A streamed answer whose client does not take the next piece for this long is "
        "ended, and its slot given back.",
    )
    docs: bool | None = Field(
        None,
        description="Serve the OpenAPI pages (/docs, /redoc, /openapi.json) without a key. Unset: only "
        "when the server listens on loopback (the pages map every route of a public server).",
    )
    ui: bool = Field(
        True, description="Serve the web playground and dashboard at / (the pages need no key; the API does)."
    )
    auto_install_requirements: bool = Field(
        True, description="Install a binding's requirements with pipmaster when it is first used."
    )
    install_personality_dependencies: bool = Field(
        False, description="Install a scripted personality's dependencies with pipmaster on first use."
    )
    public_metrics: bool = Field(False, description="Serve GET /metrics without an admin key.")
    shutdown_grace_seconds: float = Field(
        10.0, ge=0, description="On shutdown, time running generations get to finish before cancellation."
    )


class LoggingConfig(StrictModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Log level of the server."
    )
    file: Path | None = Field(None, description="Optional log file (relative to the config file).")

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class PathsConfig(StrictModel):
    zoos_folder: Path = Field(
        DEFAULT_ZOOS_FOLDER, description="Folder of the shipped zoos (bindings/, personalities/, functions/)."
    )
    bindings_folder: Path = Field(
        Path("personal/bindings"), description="User bindings; a folder here overrides a zoo binding."
    )
    personalities_folder: Path = Field(
        Path("personal/personalities"), description="User personalities; override zoo ones of the same name."
    )
    functions_folder: Path = Field(
        Path("personal/functions"), description="User function modules; override zoo ones of the same name."
    )
    models_folder: Path = Field(
        Path("models"), description="Root of model files; each binding type has a sub-folder."
    )
    runtime_folder: Path = Field(
        Path("run"), description="Lock and state files of worker processes (isolation = process)."
    )


Scope = Literal["generate", "admin"]
DEFAULT_SCOPES: tuple[Scope, ...] = ("generate",)


class ApiKeyConfig(StrictModel):
    key: str = Field(
        ..., min_length=8, description="The key in clear, or 'sha256:<hex>' of it (recommended)."
    )
    name: str | None = Field(
        None,
        description="Name used in logs and metrics (never the key); it owns the key's jobs, quotas "
        "and fair share, so it is unique. Unnamed keys are called key-<12 hex of a hash>.",
    )
    scopes: list[Scope] = Field(
        default_factory=lambda: list(DEFAULT_SCOPES), description="What the key may do."
    )
    allowed_bindings: list[str] | None = Field(
        None, description="Binding instances this key may use (all when omitted)."
    )
    weight: float = Field(
        1.0, gt=0, le=1000, description="Share of a busy pool against other keys (fair policy)."
    )
    priority: Literal["interactive", "batch"] = Field(
        "interactive", description="batch: served only when no interactive request waits (with aging)."
    )
    max_concurrent: int | None = Field(
        None, ge=1, description="Running generations of this key, all pools together."
    )
    max_queued: int | None = Field(
        None, ge=0, description="Waiting requests of this key, all pools together."
    )
    requests_per_minute: int | None = Field(None, ge=1, description="Requests of this key per minute.")
    tokens_per_minute: int | None = Field(None, ge=1, description="Generated tokens of this key per minute.")


class SecurityConfig(StrictModel):
    api_keys: list[str | ApiKeyConfig] = Field(
        default_factory=list,
        description="API keys: plain strings or tables with key/name/scopes/allowed_bindings.",
    )
    allow_unauthenticated_localhost: bool = Field(
        False, description="Allow running with no keys, only when the server binds to loopback."
    )
    anonymous_scopes: list[Scope] = Field(
        default_factory=lambda: list[Scope](["generate"]),
        description="Scopes of the anonymous caller in allow_unauthenticated_localhost mode.",
    )


class DefaultsConfig(StrictModel):
    ttt_binding: str | None = Field(None, description="Binding instance for text generation.")
    ttt_model: str | None = Field(None, description="Model for text generation.")
    tti_binding: str | None = Field(None, description="Binding instance for text-to-image.")
    tti_model: str | None = Field(None, description="Model for text-to-image.")
    i2i_binding: str | None = Field(None, description="Binding instance for image-to-image and edits.")
    i2i_model: str | None = Field(None, description="Model for image-to-image.")
    ttv_binding: str | None = Field(None, description="Binding instance for text-to-video.")
    ttv_model: str | None = Field(None, description="Model for text-to-video.")
    ttm_binding: str | None = Field(None, description="Binding instance for text-to-music.")
    ttm_model: str | None = Field(None, description="Model for text-to-music.")
    tts_binding: str | None = Field(None, description="Binding instance for text-to-speech.")
    tts_model: str | None = Field(None, description="Model for text-to-speech.")
    stt_binding: str | None = Field(None, description="Binding instance for speech-to-text.")
    stt_model: str | None = Field(None, description="Model for speech-to-text.")
    personality: str | None = Field(None, description="Personality used when a request names none.")
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Server-wide default generation parameters (lowest precedence).",
    )

    def binding_for(self, generation_type: str) -> str | None:
        return getattr(self, f"{generation_type}_binding", None)

    def model_for(self, generation_type: str) -> str | None:
        return getattr(self, f"{generation_type}_model", None)


class PoolConfig(StrictModel):
    limit: int = Field(1, ge=1, description="Generations and loads running at once in this pool.")
    queue_size: int = Field(64, ge=0, description="Requests allowed to wait; more get 503.")
    queue_timeout: float = Field(120.0, gt=0, description="Seconds a request may wait before 503.")
    policy: Literal["fair", "fifo"] = Field(
        "fair",
        description="Who gets a freed slot: fair: the waiting API key with the least weighted "
        "slot-seconds (FIFO within a key, batch after interactive); fifo: strict arrival order.",
    )
    batch_max_wait: float = Field(
        60.0,
        gt=0,
        description="Seconds a batch request waits behind interactive ones before it competes "
        "as interactive (fair policy).",
    )
    memory_budget_mb: float | None = Field(
        None, gt=0, description="Memory budget; idle models are evicted (LRU) to fit a new one."
    )
    idle_unload_seconds: float | None = Field(
        None, gt=0, description="Unload a model unused for this long (never when omitted)."
    )
    isolation: Literal["inprocess", "process"] = Field(
        "inprocess",
        description="inprocess: the pool runs in the server process; process: in one worker process "
        "shared by every server process (its queue included).",
    )
    venv: Path | None = Field(
        None,
        description="With isolation = process: a virtual environment for the worker (created if missing).",
    )


class LimitsConfig(StrictModel):
    max_prompt_chars: int = Field(
        1_000_000, ge=1, description="Total characters of text inputs in a request."
    )
    max_input_items: int = Field(256, ge=1, description="input_data items in a request.")
    max_image_bytes: int = Field(20 * 2**20, ge=1, description="Size of one input image.")
    max_image_pixels: int = Field(16_000_000, ge=1, description="Width x height of one input image.")
    max_audio_bytes: int = Field(25 * 2**20, ge=1, description="Size of one input audio file.")
    max_image_side: int = Field(2048, ge=16, description="Largest width or height a request may ask for.")
    max_images: int = Field(8, ge=1, description="Images one request may ask for.")
    max_steps: int = Field(150, ge=1, description="Largest number of denoising steps.")
    max_frames: int = Field(256, ge=1, description="Largest number of video frames.")
    max_audio_seconds: float = Field(
        300.0, gt=0, description="Longest music or speech a request may ask for."
    )


class DownloadsConfig(StrictModel):
    allowed_sources: list[str] = Field(
        default_factory=list,
        description="Hub owners ('owner') or repositories ('owner/repo') a binding with "
        "allow_download may fetch from on first use; none by default.",
    )
    max_download_mb: float = Field(20480.0, gt=0, description="Largest download (a file, or a whole model).")


class ModelsConfig(StrictModel):
    """What ``lollms-server pull``, ``POST /api/v1/models/pull`` and first-use downloads may fetch.

    Supersedes ``[downloads]``: a key left unset here falls back to its ``[downloads]`` twin."""

    allowed_sources: list[str] | None = Field(
        None,
        description="Hub owners ('owner') or repositories ('owner/repo'), shell patterns allowed "
        "('owner/*'), that may be pulled. Empty: any source for an admin (the CLI, an admin key), none "
        "for a first use by a generate key. Unset: [downloads] allowed_sources.",
    )
    max_download_gb: float | None = Field(
        None, gt=0, description="Largest pull (all its files). Unset: [downloads] max_download_mb."
    )
    hub_endpoint: str | None = Field(
        None, description="Hub URL. Unset: the HF_ENDPOINT variable, else https://huggingface.co."
    )
    hub_token_env: str = Field(
        "HF_TOKEN", description="Environment variable holding the hub token (gated/private repositories)."
    )
    recent_pulls: int = Field(32, ge=1, le=1000, description="Finished pulls GET /api/v1/models/pulls keeps.")
    first_use_gb_per_key: float = Field(
        10.0,
        ge=0,
        description="Bytes a generate key's requests may have downloaded on first use since the server "
        "started (0: none; admin keys and admin pulls are not counted). More: 403.",
    )
    first_use_total_gb: float = Field(
        50.0, ge=0, description="The same budget for all generate keys together (more: 403)."
    )
    pull_default_on_start: bool = Field(
        False,
        description="When the default text instance has no model and none is installed, pull "
        "default_model at start (in the background) and make it defaults.ttt_model (written into "
        "config.toml). `lollms-server init` turns it on.",
    )
    default_model: str | None = Field(
        None,
        max_length=512,
        description="What that first-run pull fetches. Unset: the LOLLMS_DEFAULT_MODEL variable, else "
        "Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M.",
    )

    def sources(self, downloads: DownloadsConfig) -> list[str]:
        return list(self.allowed_sources if self.allowed_sources is not None else downloads.allowed_sources)

    def max_bytes(self, downloads: DownloadsConfig) -> int:
        if self.max_download_gb is not None:
            return int(self.max_download_gb * 2**30)
        return int(downloads.max_download_mb * 2**20)

    def endpoint(self) -> str:
        return (self.hub_endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


class FunctionsConfig(StrictModel):
    max_rounds: int = Field(5, ge=1, le=50, description="Tool-calling rounds before the loop gives up.")
    call_timeout: float = Field(30.0, gt=0, description="Seconds one function call may run.")


class ResourceManagerConfig(StrictModel):
    pools: dict[str, PoolConfig] = Field(
        default_factory=lambda: {"default": PoolConfig()},
        description="Named pools (one per GPU, for example) with their limits.",
    )
    default_pool: str = Field("default", description="Pool of binding instances that name none.")
    generation_timeout: float = Field(
        600.0, gt=0, description="Seconds one generation may run before it is stopped."
    )
    housekeeping_interval: float = Field(
        1.0, gt=0, description="Seconds between checks for idle models to unload."
    )


class DeviceConfig(StrictModel):
    """One device's memory (``[devices."cuda:0"]``, ``[devices.cpu]``): what the arbiter of
    :mod:`lollms_server.core.devices` may hand out to the models of every pool on it."""

    reserve_mb: float | None = Field(
        None,
        ge=0,
        description="Memory kept free on the device (default: max(1 GiB, 5 % of total) on a GPU, "
        "min(1 GiB, 5 % of RAM) on the CPU).",
    )
    max_memory_mb: float | None = Field(
        None,
        gt=0,
        description="Most memory the models of this server may hold on the device (a cap below its "
        "real size, to share it with other programs).",
    )


class ClusterPoolConfig(StrictModel):
    """What the Ray actor of one pool asks the cluster for (its placement)."""

    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved for the pool's actor.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved for the pool's actor (1 per physical GPU).")
    memory_mb: float | None = Field(None, gt=0, description="Memory reserved for the actor (Ray 'memory').")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources the actor needs, e.g. {gpu0 = 1} to pin it to a node started "
        "with --resources '{\"gpu0\": 1}'.",
    )
    runtime_env: dict[str, Any] | None = Field(
        None, description="Ray runtime_env of the actor (pip packages, env_vars, working_dir...)."
    )

    def demands(self) -> dict[str, float]:
        """The resources placement needs, in Ray's names (MB of memory become bytes)."""
        wanted = {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources}
        if self.memory_mb is not None:
            wanted["memory"] = self.memory_mb * 2**20
        return {name: amount for name, amount in wanted.items() if amount > 0}


class ClusterConfig(StrictModel):
    mode: Literal["local", "ray"] = Field(
        "local",
        description="local: pools run on this machine; ray: every pool is a named, detached Ray actor "
        "(pip install lollms_server[distributed]).",
    )
    address: str | None = Field(
        None,
        description="Ray cluster address: 'auto' (this host is a node) or 'head:6379'; omitted: RAY_ADDRESS, "
        "else a local Ray instance is started.",
    )
    namespace: str = Field("lollms_server", description="Ray namespace of the pool actors.")
    max_restarts: int = Field(-1, ge=-1, description="Restarts of a crashed pool actor (-1: always).")
    max_concurrency: int = Field(
        1000, ge=1, description="Calls one pool actor accepts at once (they queue in its pool, FIFO)."
    )
    start_timeout: float = Field(
        60.0, gt=0, description="Seconds to wait for a pool actor to start before answering 503."
    )
    stream_batch_ms: float = Field(
        5.0,
        ge=0,
        description="Tokens coming faster than this travel together in one Ray object (a Ray object "
        "costs about 0.5 ms); slower tokens, and the first, are sent at once. 0: one object per chunk.",
    )
    retry_after: int = Field(
        10, ge=1, description="Retry-After (seconds) of the 503 sent while a pool has no node to run on."
    )
    pools: dict[str, ClusterPoolConfig] = Field(
        default_factory=dict, description="Ray resources per pool (pools not listed get the defaults)."
    )

    def pool(self, name: str) -> ClusterPoolConfig:
        return self.pools.get(name) or ClusterPoolConfig()


class JobsConfig(StrictModel):
    """``[jobs]``: durable async jobs (``/api/v1/jobs``, ``/v1/videos``), kept in a database."""

    enabled: bool = Field(True, description="Serve /api/v1/jobs and /v1/videos and run queued jobs.")
    database_url: str = Field(
        "sqlite:///jobs.db",
        description="SQLAlchemy URL of the jobs database: sqlite:///file (relative to the config file's "
        "folder) or postgresql://user:password@host/db (psycopg 3) for several gateway hosts.",
    )
    jobs_folder: Path = Field(Path("jobs"), description="Where job outputs are stored as files.")
    result_ttl_hours: float = Field(
        24.0, gt=0, description="Hours a finished job and its outputs are kept before cleanup."
    )
    max_jobs_per_key: int = Field(
        100, ge=1, description="Queued and running jobs one API key may have at once (more: 429)."
    )
    max_result_mb_per_key: float = Field(
        1024.0, gt=0, description="Stored results of one API key (more: new jobs get 413)."
    )
    allowed_callback_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts a job's callback_url may name ('host' or 'host:port'); none by default.",
    )
    callback_timeout: float = Field(10.0, gt=0, description="Seconds a completion callback may take.")
    retry_interrupted: bool = Field(
        True,
        description="A job that was running when its server stopped or crashed runs once more; "
        "false: it fails with reason 'interrupted'. One whose server died at its start, or running "
        "it twice, fails with reason 'crashed'.",
    )
    lease_seconds: float = Field(
        30.0,
        ge=1,
        description="A server holds each job it runs under a lease it renews; a lease not renewed for "
        "this long (the server died) lets another server take the job.",
    )
    concurrency: int = Field(
        4, ge=1, description="Jobs one server process holds at once (running or waiting in its pools)."
    )
    max_request_mb_per_key: float = Field(
        256.0,
        gt=0,
        description="Requests (inputs included) one API key's unfinished jobs may hold in the database "
        "(more: 429; one larger request: 413). A finished job keeps no request.",
    )
    max_watchers_per_key: int = Field(
        8,
        ge=1,
        le=10_000,
        description="Job event streams one API key may hold open at once, per server process (more: 429).",
    )
    events_max_seconds: float = Field(
        3600.0, gt=0, description="A job event stream ends after this long (the client may reconnect)."
    )
    poll_seconds: float = Field(1.0, gt=0, description="Seconds between looks for new jobs in the database.")
    cleanup_interval_seconds: float = Field(
        60.0, gt=0, description="Seconds between removals of expired jobs and their outputs."
    )
    responses_ttl_hours: float = Field(
        24.0, gt=0, description="Hours a stored /v1/responses answer (store: true) can be read or continued."
    )
    max_responses_per_key: int = Field(
        1000, ge=1, description="Stored /v1/responses answers kept per API key (the oldest go first)."
    )

    def resolve_paths(self, absolute: Callable[[Path], Path]) -> None:
        """``jobs_folder`` and a relative SQLite file against the config file's folder."""
        self.jobs_folder = absolute(self.jobs_folder)
        prefix = "sqlite:///"
        if self.database_url.startswith(prefix):
            file = self.database_url[len(prefix) :]
            if file and file != ":memory:" and not file.startswith("/"):
                self.database_url = prefix + str(absolute(Path(file)))


class BindingInstanceConfig(BaseModel):
    """One ``[bindings.<instance>]`` table: common keys plus the type's own settings.

    The type's settings are validated against its binding card by the BindingManager.
    """

    model_config = ConfigDict(extra="allow")

    type: str = Field(..., description="Binding type (folder name in zoos/bindings or the user folder).")
    pool: str | None = Field(None, description="Resource pool this instance runs in.")
    model_name: str | None = Field(None, description="Default model of this instance.")
    models_folder: Path | None = Field(None, description="Where this instance looks for models.")
    isolation: Literal["inprocess", "process"] | None = Field(
        None, description="Must match its pool's isolation (the queue lives with the pool); omit to inherit."
    )

    def settings(self) -> dict[str, Any]:
        """The type-specific settings (everything but the common keys)."""
        return dict(self.model_extra or {})


class PersonalityOverride(BaseModel):
    model_config = ConfigDict(extra="allow")

    enabled: bool = Field(True, description="Set false to hide this personality.")


class ProvenanceConfig(StrictModel):
    """``[provenance]``: what every image output carries (one step, whatever the binding)."""

    metadata: bool = Field(
        True, description="Write PNG text chunks: software, binding, model, seed and all parameters."
    )
    watermark_image: Path | None = Field(None, description="Image (PNG with alpha) pasted on every image.")
    watermark_position: Literal["bottom-right", "bottom-left", "top-right", "top-left", "center"] = Field(
        "bottom-right", description="Where the watermark goes."
    )
    watermark_scale: float = Field(
        0.2, gt=0, le=1, description="Watermark width as a fraction of the image's."
    )
    watermark_opacity: float = Field(
        0.5, ge=0, le=1, description="Watermark opacity (0 invisible, 1 opaque)."
    )


class AppConfig(StrictModel):
    server: ServerConfig = Field(default_factory=ServerConfig, description="HTTP server settings.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logging settings.")
    paths: PathsConfig = Field(default_factory=PathsConfig, description="Folders.")
    security: SecurityConfig = Field(default_factory=SecurityConfig, description="API keys.")
    defaults: DefaultsConfig = Field(default_factory=DefaultsConfig, description="Default bindings.")
    resource_manager: ResourceManagerConfig = Field(
        default_factory=ResourceManagerConfig, description="Pools, queues and timeouts."
    )
    bindings: dict[str, BindingInstanceConfig] = Field(
        default_factory=dict, description="Binding instances by name."
    )
    functions: FunctionsConfig = Field(default_factory=FunctionsConfig, description="Function calling.")
    downloads: DownloadsConfig = Field(
        default_factory=DownloadsConfig, description="What bindings may download on first use."
    )
    models: ModelsConfig = Field(
        default_factory=ModelsConfig, description="Pulling models from the hub (supersedes [downloads])."
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Sizes and maxima of requests.")
    cluster: ClusterConfig = Field(
        default_factory=ClusterConfig, description="Scaling out: pools as Ray actors."
    )
    devices: dict[str, DeviceConfig] = Field(
        default_factory=dict,
        description='Memory of each device ("cpu", "cuda:0", "mps"), shared by every pool on it.',
    )
    jobs: JobsConfig = Field(default_factory=JobsConfig, description="Durable async jobs.")
    personalities_config: dict[str, PersonalityOverride] = Field(
        default_factory=dict, description="Per-personality switches and overrides."
    )
    provenance: ProvenanceConfig = Field(
        default_factory=ProvenanceConfig, description="Metadata and watermark of image outputs."
    )
    config_path: Path | None = Field(None, exclude=True, description="File this config came from.")

    def pool_host(self, pool: str) -> Literal["inprocess", "process", "ray"]:
        """Where a pool's queue and models live: here, in a worker process, or in a Ray actor."""
        if self.cluster.mode == "ray":
            return "ray"
        return self.resource_manager.pools[pool].isolation

    def for_pool(self, pool: str) -> AppConfig:
        """A copy reduced to one pool and its binding instances, run in process: what the pool's
        host (worker process or Ray actor) serves."""
        config = self.model_copy(deep=True)
        default_pool = self.resource_manager.default_pool
        config.bindings = {
            name: instance.model_copy(update={"isolation": None})
            for name, instance in self.bindings.items()
            if (instance.pool or default_pool) == pool
        }
        own = self.resource_manager.pools[pool].model_copy(update={"isolation": "inprocess", "venv": None})
        config.resource_manager.pools = {pool: own}
        config.resource_manager.default_pool = pool
        config.defaults = DefaultsConfig()
        config.cluster = ClusterConfig()
        config.server.workers = 1
        config.config_path = self.config_path
        return config

    def resolve_paths(self, base: Path) -> None:
        """Make every relative path absolute against ``base`` (the config file's folder)."""

        def absolute(path: Path) -> Path:
            return path if path.is_absolute() else (base / path).resolve()

        for name in PathsConfig.model_fields:
            setattr(self.paths, name, absolute(getattr(self.paths, name)))
        if self.logging.file is not None:
            self.logging.file = absolute(self.logging.file)
        for instance in self.bindings.values():
            if instance.models_folder is not None:
                instance.models_folder = absolute(Path(instance.models_folder))
        for pool in self.resource_manager.pools.values():
            if pool.venv is not None:
                pool.venv = absolute(pool.venv)
        if self.provenance.watermark_image is not None:
            self.provenance.watermark_image = absolute(self.provenance.watermark_image)
        self.jobs.resolve_paths(absolute)

    def check_references(self, source: str) -> None:
        pools = self.resource_manager.pools
        if self.resource_manager.default_pool not in pools:
            raise ConfigError(
                f"{source}: resource_manager.default_pool: pool "
                f"'{self.resource_manager.default_pool}' is not defined in resource_manager.pools"
            )
        for name, instance in self.bindings.items():
            if instance.pool is not None and instance.pool not in pools:
                raise ConfigError(f"{source}: bindings.{name}.pool: unknown pool '{instance.pool}'")
            pool = pools[instance.pool or self.resource_manager.default_pool]
            if instance.isolation is not None and instance.isolation != pool.isolation:
                raise ConfigError(
                    f"{source}: bindings.{name}.isolation: '{instance.isolation}' differs from its pool's "
                    f"'{pool.isolation}' (set [resource_manager.pools.<pool>] isolation)"
                )
        for name in self.cluster.pools:
            if name not in pools:
                raise ConfigError(f"{source}: cluster.pools.{name}: unknown pool '{name}'")
        if self.cluster.mode == "ray":
            for name, pool in pools.items():
                if pool.isolation != "inprocess":
                    raise ConfigError(
                        f'{source}: resource_manager.pools.{name}.isolation: cluster.mode = "ray" runs '
                        f'every pool in a Ray actor; leave isolation at "inprocess"'
                    )
        for generation_type in GENERATION_TYPES:
            binding = self.defaults.binding_for(generation_type)
            if binding is not None and binding not in self.bindings:
                raise ConfigError(
                    f"{source}: defaults.{generation_type}_binding: no binding instance named '{binding}'"
                )


def _parse_env_value(raw: str) -> Any:
    """Parse an override as a TOML value (numbers, booleans, arrays), else keep the string."""
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except (tomllib.TOMLDecodeError, KeyError, ValueError):
        return raw


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Apply ``LOLLMS_SERVER__SECTION__KEY=value`` overrides in place; return the keys touched."""
    touched: list[str] = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if len(parts) < 2:
            continue
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"environment {name}: '{part}' is not a section")
            node = child
        node[parts[-1]] = _parse_env_value(raw)
        touched.append(".".join(parts))
    return touched


def _format_validation_error(source: str, error: ValidationError, from_env: list[str]) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"] if not str(part).startswith("function-"))
        # Union members add their class name to the location; drop those for readability.
        key = key.replace(".str", "").replace(".ApiKeyConfig", "")
        reason = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        origin = " (set by environment)" if key in from_env else ""
        lines.append(f"{source}: {key}{origin}: {reason}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def config_from_dict(
    data: dict[str, Any],
    *,
    source: str = "<config>",
    base: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> AppConfig:
    """Validate a config mapping (with env overrides) and resolve its paths."""
    data = _deep_copy(data)
    from_env = apply_env_overrides(data, os.environ if environ is None else environ)
    try:
        config = AppConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc, from_env)) from None
    config.resolve_paths(base or Path.cwd())
    config.check_references(source)
    return config


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """The document in ``text`` (TOML 1.0, ``tomllib``: the reading twin of the ``tomlkit`` writer
    that persists settings); any parse error is a ConfigError naming ``source``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    except (ValueError, TypeError, IndexError, RecursionError) as exc:  # never a traceback at start
        raise ConfigError(f"{source}: invalid TOML ({type(exc).__name__})") from None


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> AppConfig:
    """Read, override, validate and resolve one ``config.toml``."""
    path = Path(path).expanduser().resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file ({exc.strerror})") from None
    data = parse_toml(text, str(path))
    config = config_from_dict(data, source=str(path), base=path.parent, environ=environ)
    config.config_path = path
    return config


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _deep_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_deep_copy(item) for item in value]
    return value
