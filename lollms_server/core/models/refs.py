"""Model references: what a user types to name a model on the hub.

* ``owner/repo/path/file.gguf`` — one GGUF file;
* ``owner/repo:QUANT`` — the GGUF of that quantisation in the repo (as llama.cpp's
  ``-hf owner/repo:Q4_K_M``);
* ``owner/repo`` — a whole snapshot (diffusers/transformers), or for a GGUF binding the repo's
  default quantisation;
* any of them with ``@revision`` after the repo (``owner/repo@main:Q8_0``).

The installed name of a pull is what listings show and requests name: ``owner/repo/file.gguf``
for a GGUF, ``owner/repo`` for a snapshot.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from lollms_server.core.errors import BadRequestError

NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
QUANT = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
FILE_PART = re.compile(r"^[A-Za-z0-9_.+()\[\] -]{1,200}$")


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: the repository, and a file or a quantisation (or neither: a snapshot)."""

    repo_id: str
    filename: str | None = None
    quant: str | None = None
    revision: str | None = None

    @property
    def owner(self) -> str:
        return self.repo_id.split("/", 1)[0]

    @property
    def kind(self) -> str:
        """``file``, ``quant`` or ``repo``."""
        return "file" if self.filename else "quant" if self.quant else "repo"

    def __str__(self) -> str:
        revision = f"@{self.revision}" if self.revision else ""
        if self.filename:
            return f"{self.repo_id}{revision}/{self.filename}"
        return f"{self.repo_id}{revision}" + (f":{self.quant}" if self.quant else "")


def _bad(ref: str, why: str) -> BadRequestError:
    shown = ref if len(ref) <= 200 and ref.isprintable() else "<reference>"
    return BadRequestError(
        f"'{shown}' is not a model reference ({why}); use owner/repo/file.gguf, owner/repo:QUANT "
        "or owner/repo.",
        param="ref",
    )


def parse_ref(ref: str) -> ModelRef:
    """Parse ``ref`` (400 with the accepted forms when it is none of them)."""
    text = ref.strip()
    if text.startswith(("hf.co/", "huggingface.co/")):  # as Ollama users write them
        text = text.split("/", 1)[1]
    parts = text.split("/")
    if len(parts) < 2:
        raise _bad(ref, "no owner/repo")
    owner, repo, rest = parts[0], parts[1], parts[2:]
    quant = revision = None
    if not rest and ":" in repo:
        repo, quant = repo.split(":", 1)
        if not QUANT.match(quant):
            raise _bad(ref, "bad quantisation tag")
    if "@" in repo:
        repo, revision = repo.split("@", 1)
        if not REVISION.match(revision) or ".." in revision:
            raise _bad(ref, "bad revision")
    if not (NAME_PART.match(owner) and NAME_PART.match(repo)) or ".." in (owner, repo):
        raise _bad(ref, "bad owner or repository name")
    filename = None
    if rest:
        if any(part in ("", ".", "..") or not FILE_PART.match(part) for part in rest):
            raise _bad(ref, "bad file path")
        filename = "/".join(rest)
    return ModelRef(f"{owner}/{repo}", filename=filename, quant=quant, revision=revision)


def source_allowed(repo_id: str, patterns: list[str], *, trusted: bool) -> bool:
    """Whether ``repo_id`` may be pulled: it matches one of ``patterns`` (an owner, a repo, or a
    shell pattern of either; case-insensitive), or the list is empty and the caller is trusted
    (an admin)."""
    if not patterns:
        return trusted
    repo = repo_id.lower()
    owner = repo.split("/", 1)[0]
    for pattern in patterns:
        wanted = pattern.strip().lower()
        if fnmatch.fnmatchcase(repo if "/" in wanted else owner, wanted):
            return True
    return False
