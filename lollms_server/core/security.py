"""API keys -> Principal (DESIGN §3).

Keys are kept only as SHA-256 digests; a presented key is hashed and compared in constant time
against every configured digest, so neither timing nor a memory dump reveals a key in clear.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field

from lollms_server.core.config import ApiKeyConfig, AppConfig
from lollms_server.core.errors import (
    AuthenticationError,
    ConfigError,
    PermissionDeniedError,
)
from lollms_server.utils.paths import printable

ALL_SCOPES = frozenset({"generate", "admin"})
HASH_PREFIX = "sha256:"


@dataclass(frozen=True)
class KeyLimits:
    """A key's quotas (None: no limit), kept by the gateway across all pools (``core/quotas.py``)."""

    max_concurrent: int | None = None
    max_queued: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's name, its scopes and the binding instances it may use."""

    name: str
    scopes: frozenset[str] = field(default_factory=lambda: frozenset({"generate"}))
    allowed_bindings: frozenset[str] | None = None
    weight: float = 1.0
    priority: str = "interactive"
    limits: KeyLimits = field(default_factory=lambda: KeyLimits())

    def require_scope(self, scope: str) -> None:
        if scope not in self.scopes:
            raise PermissionDeniedError(f"This API key lacks the '{scope}' scope.")

    def can_use_binding(self, instance: str) -> bool:
        return self.allowed_bindings is None or instance in self.allowed_bindings

    def require_binding(self, instance: str) -> None:
        if not self.can_use_binding(instance):
            raise PermissionDeniedError(f"This API key may not use binding '{printable(instance)}'.")


ANONYMOUS = Principal(name="anonymous-localhost", scopes=frozenset({"generate"}))
"""The caller in ``allow_unauthenticated_localhost`` mode (scopes from ``anonymous_scopes``)."""


def hash_key(key: str) -> str:
    """The stored form of a key: ``sha256:<hex>``."""
    return HASH_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    """A new random API key (256 bits, URL-safe)."""
    return "lollms_" + secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _digest_of(entry: ApiKeyConfig) -> bytes:
    key = entry.key
    if key.startswith(HASH_PREFIX):
        hex_digest = key[len(HASH_PREFIX) :].strip().lower()
        try:
            digest = bytes.fromhex(hex_digest)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise ConfigError(f"security.api_keys: key '{entry.name}' is not a valid sha256:<64 hex> digest")
        return digest
    return hashlib.sha256(key.encode("utf-8")).digest()


def automatic_name(digest: bytes) -> str:
    """The name of a key configured without one: ``key-`` and 12 hex digits of a hash of its
    digest, stable when the list is edited (a position would hand a key's jobs to another) and
    revealing nothing usable about the key."""
    return "key-" + hashlib.sha256(b"lollms-server key name\0" + digest).hexdigest()[:12]


class KeyStore:
    """Authenticates presented keys against the configured ones."""

    def __init__(
        self, entries: list[tuple[bytes, Principal]], allow_anonymous: bool, anonymous: Principal = ANONYMOUS
    ) -> None:
        self._entries = entries
        self.allow_anonymous = allow_anonymous
        self.anonymous = anonymous

    @classmethod
    def from_config(cls, config: AppConfig) -> KeyStore:
        entries: list[tuple[bytes, Principal]] = []
        where: dict[str, int] = {}  # name -> its entry, so two keys can never share an identity
        for index, raw in enumerate(config.security.api_keys, start=1):
            entry = ApiKeyConfig(key=raw) if isinstance(raw, str) else raw
            digest = _digest_of(entry)
            if entry.name is None:
                entry = entry.model_copy(update={"name": automatic_name(digest)})
            name = str(entry.name)
            if name in where:
                raise ConfigError(
                    f"security.api_keys: entries {where[name]} and {index} are both named "
                    f"'{printable(name)}'; key names must be unique (they own jobs, quotas and shares)"
                )
            where[name] = index
            principal = Principal(
                name=str(entry.name),
                scopes=frozenset(entry.scopes),
                allowed_bindings=None
                if entry.allowed_bindings is None
                else frozenset(entry.allowed_bindings),
                weight=entry.weight,
                priority=entry.priority,
                limits=KeyLimits(
                    max_concurrent=entry.max_concurrent,
                    max_queued=entry.max_queued,
                    requests_per_minute=entry.requests_per_minute,
                    tokens_per_minute=entry.tokens_per_minute,
                ),
            )
            entries.append((digest, principal))
        allow_anonymous = False
        if not entries:
            if not config.security.allow_unauthenticated_localhost:
                raise ConfigError(
                    "no API key is configured: add one to [security] api_keys "
                    "(`lollms-server init` writes a config with a fresh key)"
                )
            if not is_loopback(config.server.host):
                raise ConfigError(
                    "security.allow_unauthenticated_localhost only works when server.host is a "
                    f"loopback address, not '{config.server.host}'"
                )
            allow_anonymous = True
        anonymous = Principal(name=ANONYMOUS.name, scopes=frozenset(config.security.anonymous_scopes))
        return cls(entries, allow_anonymous, anonymous)

    def principal_named(self, name: str) -> Principal | None:
        """The Principal of the key called ``name`` (the anonymous one in anonymous mode), or
        None: work accepted earlier runs as its key is configured now (async jobs)."""
        if self.allow_anonymous:
            return self.anonymous if name == self.anonymous.name else None
        return next((principal for _, principal in self._entries if principal.name == name), None)

    def principals(self) -> list[Principal]:
        """The configured keys' principals (their names are unique)."""
        return [principal for _, principal in self._entries]

    @property
    def api_key_required(self) -> bool:
        return not self.allow_anonymous

    def authenticate(self, presented: str | None) -> Principal:
        """Return the Principal of a presented key, or raise 401."""
        if self.allow_anonymous:
            return self.anonymous
        if not presented:
            raise AuthenticationError("Missing API key: send 'X-API-Key' or 'Authorization: Bearer'.")
        digest = hashlib.sha256(presented.encode("utf-8")).digest()
        found: Principal | None = None
        for stored, principal in self._entries:  # no early exit: constant time over the list
            if hmac.compare_digest(stored, digest) and found is None:
                found = principal
        if found is None:
            raise AuthenticationError("Invalid API key.")
        return found


def extract_key(x_api_key: str | None, authorization: str | None) -> str | None:
    """The key from ``X-API-Key`` or ``Authorization: Bearer <key>``."""
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


def loopback_host_header(host: str | None) -> bool:
    """Whether a ``Host`` header names this machine's loopback (``localhost``, ``127.0.0.1``,
    ``[::1]``, with any port): in anonymous mode anything else may be DNS rebinding."""
    if not host:
        return False
    host = host.strip().lower()
    if host.startswith("["):
        name = host[1:].partition("]")[0]
    else:
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
    return is_loopback(name)


def same_machine_origin(origin: str | None) -> bool:
    """Whether an ``Origin`` header is absent (not a browser's cross-site call) or a page served
    from this machine's loopback."""
    if origin is None:
        return True
    scheme, _, rest = origin.partition("://")
    return scheme in ("http", "https") and loopback_host_header(rest.partition("/")[0])
