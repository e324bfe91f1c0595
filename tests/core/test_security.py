"""API keys: hashing, constant-time lookup, scopes, refusing to run unsecured."""

from __future__ import annotations

import hashlib

import pytest

from lollms_server.core.config import config_from_dict
from lollms_server.core.errors import AuthenticationError, ConfigError, PermissionDeniedError
from lollms_server.core.security import KeyStore, automatic_name, extract_key, generate_key, hash_key


def store(**security: object) -> KeyStore:
    return KeyStore.from_config(config_from_dict({"security": security}, environ={}))


def test_clear_and_hashed_keys_authenticate() -> None:
    key = generate_key()
    keys = store(api_keys=["plain-key-123456", {"key": hash_key(key), "name": "alice", "scopes": ["admin"]}])
    assert keys.authenticate("plain-key-123456").name == automatic_name(
        hashlib.sha256(b"plain-key-123456").digest()
    )
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


def test_automatic_names_never_collide_with_explicit_ones() -> None:
    """T3-11: an unnamed second key used to be called 'key-2', the name Alice chose: Bob saw,
    read and cancelled her jobs and shared her quotas. Names are now unique identities."""
    keys = store(
        api_keys=[
            {"name": "key-2", "key": "alice-key-0123456789"},
            {"key": "bob-key-9876543210"},
            "carol-key-5555555555",
        ]
    )
    alice = keys.authenticate("alice-key-0123456789")
    bob = keys.authenticate("bob-key-9876543210")
    carol = keys.authenticate("carol-key-5555555555")
    assert len({alice.name, bob.name, carol.name}) == 3
    assert keys.principal_named("key-2") is alice
    assert keys.principal_named(bob.name) is bob
    # the automatic name does not depend on the position: editing the list keeps identities
    reordered = store(api_keys=["carol-key-5555555555", {"key": "bob-key-9876543210"}])
    assert reordered.authenticate("bob-key-9876543210").name == bob.name


@pytest.mark.parametrize(
    "api_keys",
    [
        [{"name": "team", "key": "first-key-0123456"}, {"name": "team", "key": "second-key-012345"}],
        ["same-key-01234567", "same-key-01234567"],
    ],
)
def test_duplicate_key_names_are_a_config_error_naming_both_entries(api_keys: list[object]) -> None:
    with pytest.raises(ConfigError, match="entries 1 and 2 are both named"):
        store(api_keys=api_keys)


def test_an_explicit_name_equal_to_an_automatic_one_is_refused() -> None:
    taken = automatic_name(hashlib.sha256(b"plain-key-123456").digest())
    with pytest.raises(ConfigError, match="entries 1 and 2"):
        store(api_keys=["plain-key-123456", {"name": taken, "key": "other-key-0123456"}])
