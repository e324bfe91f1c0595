"""Writing the default text model into ``config.toml`` (``init --model``, the first-run pull):
one line of ``[defaults]`` changed, every other line kept, and the file replaced atomically with
its mode kept (it holds key hashes: ``init`` writes it 0600). Blocking: call it from a thread."""

from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path

TTT_MODEL_LINE = re.compile(r"^#?\s*ttt_model\s*=.*$", re.MULTILINE)


TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string: quotes, backslashes and control characters escaped (a
    model file's name may hold a newline: it must not end the string and start a setting)."""
    return (
        '"'
        + "".join(
            TOML_ESCAPES.get(char) or (f"\\u{ord(char):04x}" if ord(char) < 0x20 or char == "\x7f" else char)
            for char in value
        )
        + '"'
    )


def with_default_text_model(text: str, model: str) -> str:
    """``text`` with ``defaults.ttt_model = model`` (the line replaced, or added to ``[defaults]``,
    or a ``[defaults]`` section added)."""
    line = f"ttt_model = {toml_string(model)}"
    defaults = re.search(r"^\[defaults\]\s*$", text, re.MULTILINE)
    if defaults is None:
        return text.rstrip("\n") + f"\n\n[defaults]\n{line}\n"
    section_end = re.search(r"^\[", text[defaults.end() :], re.MULTILINE)
    end = defaults.end() + (section_end.start() if section_end else len(text) - defaults.end())
    section = text[defaults.end() : end]
    if TTT_MODEL_LINE.search(section):
        section = TTT_MODEL_LINE.sub(lambda _: line, section, count=1)
    else:
        section = f"\n{line}" + section
    return text[: defaults.end()] + section + text[end:]


def replace_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in its folder and ``os.replace``: a
    reader sees the old file or the new one, never half of one; the mode stays the file's."""
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o600
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def set_default_text_model(path: Path, model: str) -> None:
    """Write ``defaults.ttt_model = model`` into the config file (its other lines untouched)."""
    replace_text(path, with_default_text_model(path.read_text(encoding="utf-8"), model))
