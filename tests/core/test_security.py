"""API keys: hashing, constant-time lookup, scopes, refusing to run unsecured."""

from __future__ import annotations

import pytest

from lollms_server.core.config import config_from_dict
from lollms_server.core.errors import AuthenticationError, ConfigError, PermissionDeniedError
from lollms_server.core.security import KeyStore, extract_key, generate_key, hash_key


def store(**security: object) -> KeyStore:
    return KeyStore.from_config(config_from_dict({"security": security}, environ={}))


def test_clear_and_hashed_keys_authenticate() -> None:
    key = generate_key()
    keys = store(api_keys=["plain-key-123456", {"key": hash_key(key), "name": "alice", "scopes": ["admin"]}])
    assert keys.authenticate("plain-key-123456").name == "key-1"
    alice = keys.authenticate(key)
    assert alice.name == "alice" and alice.scopes == frozenset({"admin"})
    with pytest.raises(PermissionDeniedError):
        alice.require_scope("generate")
    for wrong in (None, "", "nope", key + "x", hash_key(key)):
        with pytest.raises(AuthenticationError):
            keys.authenticate(wrong)


def test_allowed_bindings() -> None:
    keys = store(api_keys=[{"key": "limited-key-1234", "allowed_bindings": ["a"]}])
    principal = keys.authenticate("limited-key-1234")
    principal.require_binding("a")
    with pytest.raises(PermissionDeniedError):
        principal.require_binding("b")


def test_no_keys_refuses_unless_loopback_and_explicit() -> None:
    with pytest.raises(ConfigError, match="no API key"):
        store()
    assert store(allow_unauthenticated_localhost=True).api_key_required is False
    with pytest.raises(ConfigError, match="loopback"):
        KeyStore.from_config(
            config_from_dict(
                {"server": {"host": "0.0.0.0"}, "security": {"allow_unauthenticated_localhost": True}},
                environ={},
            )
        )


def test_bad_hash_is_a_config_error_without_the_value() -> None:
    with pytest.raises(ConfigError) as caught:
        store(api_keys=[{"key": "sha256:zzzz-not-hex", "name": "ops"}])
    assert "zzzz" not in caught.value.message and "ops" in caught.value.message


def test_extract_key_from_both_header_styles() -> None:
    assert extract_key("k1", None) == "k1"
    assert extract_key(None, "Bearer k2") == "k2"
    assert extract_key(None, "bearer  k3 ") == "k3"
    assert extract_key(None, "Basic abc") is None
    assert extract_key(None, None) is None
