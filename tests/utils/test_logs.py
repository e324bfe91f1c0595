"""R-06: secrets never reach the logs: the configured ones and URL credentials are masked by
the handlers ``configure_logging`` installs, and a lollms_client error is logged masked."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lollms_server.core.bindings.lollms_client_adapter.results import checked
from lollms_server.core.config import config_from_dict
from lollms_server.core.errors import BindingError
from lollms_server.core.log_secrets import configured_secrets
from lollms_server.utils.logs import configure_logging


def test_the_log_file_masks_configured_secrets_and_url_credentials(tmp_path: Path) -> None:
    config = config_from_dict(
        {
            "security": {"api_keys": ["plain-key-0123456789", {"name": "a", "key": "table-key-0123456789"}]},
            "bindings": {"remote": {"type": "openai_binding", "service_key": "sk-remote-secret-42"}},
        },
        base=tmp_path,
        environ={},
    )
    secrets = configured_secrets(config)
    assert {"plain-key-0123456789", "table-key-0123456789", "sk-remote-secret-42"} <= set(secrets)
    log_file = tmp_path / "server.log"
    configure_logging("INFO", log_file, secrets)
    logger = logging.getLogger("lollms_server.test_logs")
    try:
        logger.warning("remote said: invalid key %s for %s", "sk-remote-secret-42", "http://bob:pw123@host/x")
        try:
            raise RuntimeError("auth failed with table-key-0123456789")
        except RuntimeError:
            logger.exception("call failed")
        logging.getLogger("lollms_bindings.x").error("bearer plain-key-0123456789 refused")
    finally:
        configure_logging("WARNING")  # the handlers go back to a console one
    written = log_file.read_text(encoding="utf-8")
    assert "sk-remote-secret-42" not in written and "pw123" not in written
    assert "table-key-0123456789" not in written and "plain-key-0123456789" not in written
    assert written.count("********") >= 3 and "remote said: invalid key" in written


def test_a_lollms_client_error_is_logged_without_its_secrets(caplog: pytest.LogCaptureFixture) -> None:
    message = "401 for key sk-abcdef123456 at https://user:hunter2@api.example/v1"
    with caplog.at_level(logging.WARNING), pytest.raises(BindingError) as failure:
        checked("remote", {"status": False, "message": message}, ("sk-abcdef123456",))
    assert "sk-abcdef123456" not in caplog.text and "hunter2" not in caplog.text
    assert "401 for key ********" in caplog.text
    assert "sk-abcdef123456" not in failure.value.message
