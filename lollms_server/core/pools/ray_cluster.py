"""Ray plumbing of the ``ray`` pool host: joining the cluster, the actors' names and
fingerprints, stopping them, and telling Ray's failures apart.

``ray`` is imported only here and in the modules that use this one, and only in ``ray`` mode
(``pip install .[distributed]``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Any

from lollms_server import __version__
from lollms_server.core.config import AppConfig, ClusterConfig
from lollms_server.core.errors import BindingError, ConfigError, LollmsError

logger = logging.getLogger(__name__)
ACTOR_PREFIX = "lollms-pool-"
_connect_lock = threading.Lock()


def ray_module() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            'cluster.mode = "ray" needs Ray: pip install "lollms_server[distributed]"'
        ) from None
    return ray


def connect(cluster: ClusterConfig) -> None:
    """Join the Ray cluster as a driver, once per process (blocking: call it in a thread)."""
    ray = ray_module()
    with _connect_lock:
        if ray.is_initialized():
            return
        try:
            ray.init(
                address=cluster.address,
                namespace=cluster.namespace,
                log_to_driver=False,
                configure_logging=False,
                include_dashboard=False if cluster.address is None else None,
            )
        except ConnectionError as exc:
            raise ConfigError(f"cluster.address: cannot reach the Ray cluster ({exc})") from None
        logger.info("Joined the Ray cluster (namespace %s)", cluster.namespace)


def actor_name(pool: str) -> str:
    return ACTOR_PREFIX + pool


def fingerprint(config: AppConfig, pool: str) -> str:
    """What a pool's actor is built from (the server version, its binding instances and pool
    settings); gateways compare it with their own."""
    data = config.for_pool(pool).model_dump_json(include={"bindings", "resource_manager"})
    return hashlib.sha256(f"{__version__}:{data}".encode()).hexdigest()[:16]


def actor_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the actor died or is restarting (rather than the call failing)."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    return isinstance(exc, RayActorError | ActorUnavailableError)


def actor_gone(exc: BaseException) -> bool:
    """Whether the actor died for good (restarts exhausted, or stopped): a new one is needed."""
    from ray.exceptions import ActorDiedError

    return isinstance(exc, ActorDiedError)


def stop_actors(config: AppConfig) -> list[str]:
    """Kill the pool actors of ``config`` (after a config change); returns the pools stopped."""
    ray = ray_module()
    connect(config.cluster)
    stopped = []
    for pool in config.resource_manager.pools:
        try:
            actor = ray.get_actor(actor_name(pool), namespace=config.cluster.namespace)
        except ValueError:
            continue
        ray.kill(actor, no_restart=True)
        stopped.append(pool)
    return stopped


def remote_error(exc: BaseException) -> LollmsError:
    """An error raised inside the actor: its LollmsError as is (status and message), anything
    else as a plain 500 without internals."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, LollmsError):
        return cause  # the original exception, unpickled: not Ray's wrapper with its traceback
    logger.error("A pool actor call failed: %s", exc)
    return BindingError(f"The binding failed in its pool actor ({type(cause).__name__}).")
