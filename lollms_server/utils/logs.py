"""Logging set-up: stdlib loggers in the code, printed through ``ascii_colors``."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import ascii_colors

from lollms_server.utils.paths import without_userinfo

PACKAGE_LOGGER = "lollms_server"
SECRET_MASK = "********"
MIN_SECRET_CHARS = 6
"""Shorter values are not masked (they would mask ordinary words)."""


class SecretMask(logging.Filter):
    """Masks the configured secrets (API keys, binding tokens) and URL credentials in every
    record a handler writes: a remote error that quotes a key, a URL with a password."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        text = without_userinfo(text)
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, SECRET_MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format is logging's own error to report
            return True
        masked = self.mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:  # masked even when another handler formatted (and cached) it first
            record.exc_text = self.mask(record.exc_text)
        return True


class AsciiColorsHandler(logging.Handler):
    """Forwards stdlib log records to ``ascii_colors`` (colored console output)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            ascii_colors.getLogger(record.name).log(record.levelno, "%s", message)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def configure_logging(level: str, file: Path | None = None, secrets: Iterable[str] = ()) -> None:
    """Send the server's logs (``lollms_server.*`` and bindings) to the console and a file,
    with ``secrets`` and URL credentials masked (:class:`SecretMask`)."""
    masker = SecretMask(secrets)
    ascii_colors.basicConfig(
        level=getattr(ascii_colors, level, ascii_colors.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for name in (PACKAGE_LOGGER, "lollms_bindings"):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate = False
        for handler in list(logger.handlers):
            if getattr(handler, "_lollms", False):
                logger.removeHandler(handler)
                handler.close()
        console = AsciiColorsHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        handlers: list[logging.Handler] = [console]
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            to_file = logging.FileHandler(file, encoding="utf-8")
            to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            handlers.append(to_file)
        for handler in handlers:
            handler._lollms = True  # type: ignore[attr-defined]
            handler.addFilter(masker)
            logger.addHandler(handler)
