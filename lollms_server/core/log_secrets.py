"""The configured values the server's logs must never show (``utils.logs.SecretMask`` masks them)."""

from __future__ import annotations

from lollms_server.core.config import AppConfig

SECRET_SETTING_WORDS = ("key", "token", "secret", "password")


def configured_secrets(config: AppConfig) -> list[str]:
    """API keys, and binding settings whose name says they are a key, token, secret or password
    (``service_key``, ``api_token``, ``hub_token``...)."""
    found = [raw if isinstance(raw, str) else raw.key for raw in config.security.api_keys]
    for instance in config.bindings.values():
        for name, value in instance.settings().items():
            if isinstance(value, str) and any(word in name.lower() for word in SECRET_SETTING_WORDS):
                found.append(value)
    return found
