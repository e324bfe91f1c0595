"""Logging set-up: stdlib loggers in the code, printed through ``ascii_colors``."""

from __future__ import annotations

import logging
from pathlib import Path

import ascii_colors

PACKAGE_LOGGER = "lollms_server"


class AsciiColorsHandler(logging.Handler):
    """Forwards stdlib log records to ``ascii_colors`` (colored console output)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            ascii_colors.getLogger(record.name).log(record.levelno, "%s", message)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def configure_logging(level: str, file: Path | None = None) -> None:
    """Send the server's logs (``lollms_server.*`` and bindings) to the console and a file."""
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
            logger.addHandler(handler)
