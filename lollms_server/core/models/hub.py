"""What a pull fetches: the hub's file list (``huggingface_hub``'s ``HfApi.model_info`` with
``files_metadata``: sizes, LFS sha256 and git blob ids) turned into a :class:`Plan` of files for
one binding's model format.

Metadata comes from ``huggingface_hub``; the bytes do not (see :mod:`.transfer` for why).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from lollms_server.core.errors import (
    BadRequestError,
    LollmsError,
    NotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
)
from lollms_server.core.models.refs import ModelRef
from lollms_server.utils.paths import safe_join

logger = logging.getLogger(__name__)

DEFAULT_QUANT = "Q4_K_M"  # what llama.cpp's -hf picks when a repo is named without a tag
SPLIT_PART = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
MARKERS = ("config.json", "model_index.json")
"""Files listings look for in a snapshot folder: a pull writes them last, so a half-pulled
snapshot is never listed."""
OTHER_FRAMEWORKS = re.compile(
    r"(\.msgpack|\.h5|\.ot|\.tflite|\.onnx|\.onnx_data|\.pb|\.mlmodel|\.gguf|\.npz)$"
    r"|(^|/)(flax_model|tf_model|rust_model|model\.tflite)"
    r"|(^|/)(onnx|coreml|openvino|flax|tf|tensorflow)/"
    r"|^\.gitattributes$",
    re.IGNORECASE,
)
TORCH_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt")
VARIANTS = ("fp16", "bf16", "fp32", "non_ema", "ema_only")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repository at a commit, with what verifies it."""

    path: str
    size: int
    sha256: str | None = None  # LFS files
    git_sha1: str | None = None  # small files: the git blob id


@dataclass
class Plan:
    """The files one pull fetches and the model name they install."""

    repo_id: str
    commit: str
    files: list[RemoteFile]
    installed_name: str
    kind: str  # "gguf" or "snapshot"
    folder: str = ""  # relative folder of the files inside the models folder
    markers: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(item.size for item in self.files)

    def target(self, models_folder: Path, item: RemoteFile) -> Path:
        """Where ``item`` goes in ``models_folder`` (400 if it would leave it)."""
        return safe_join(models_folder, f"{self.folder}/{item.path}" if self.folder else item.path)


def _quant_pattern(quant: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9])", re.IGNORECASE)


def safe_repo_path(path: str) -> bool:
    """A file name from the hub that stays inside its folder (the hub's answer is not trusted)."""
    parts = path.split("/")
    return (
        bool(path)
        and len(path) <= 1000
        and not path.startswith("/")
        and "\\" not in path
        and path.isprintable()
        and all(part not in ("", ".", "..") for part in parts)
    )


def gguf_groups(paths: list[str]) -> dict[str, list[str]]:
    """GGUF models of a repo: the first file of each (split files grouped), with all its parts."""
    groups: dict[str, list[str]] = {}
    for path in sorted(paths):
        if not path.lower().endswith(".gguf") or "mmproj" in PurePosixPath(path).name.lower():
            continue
        split = SPLIT_PART.search(path)
        if split:
            first = SPLIT_PART.sub(f"-00001-of-{split.group(2)}.gguf", path)
            groups.setdefault(first, []).append(path)
        else:
            groups[path] = [path]
    return groups


def pick_gguf(ref: ModelRef, paths: list[str]) -> list[str]:
    """The files of the GGUF ``ref`` names (a file, a quantisation, or the repo's default)."""
    groups = gguf_groups(paths)
    if ref.filename:
        for first, parts in groups.items():
            if ref.filename in parts:
                return parts if ref.filename == first else [ref.filename]
        raise NotFoundError(f"'{ref.repo_id}' has no GGUF file '{ref.filename}'.", param="ref")
    if not groups:
        raise NotFoundError(f"'{ref.repo_id}' holds no GGUF file.", param="ref")
    quant = ref.quant or DEFAULT_QUANT
    matches = [parts for first, parts in groups.items() if _quant_pattern(quant).search(first)]
    if not matches and ref.quant is None and len(groups) == 1:
        return next(iter(groups.values()))
    if not matches:
        names = ", ".join(PurePosixPath(first).name for first in list(groups)[:20])
        raise NotFoundError(
            f"'{ref.repo_id}' has no GGUF of quantisation '{quant}' (it has: {names}).", param="ref"
        )
    return matches[0]


def snapshot_files(paths: list[str]) -> list[str]:
    """The files a PyTorch binding loads: no other framework's weights, no ``.bin`` beside
    ``.safetensors``, no ``fp16``-style variant beside the plain file."""
    kept = [path for path in paths if not OTHER_FRAMEWORKS.search(path)]
    by_folder: dict[str, set[str]] = {}
    for path in kept:
        by_folder.setdefault(str(PurePosixPath(path).parent), set()).add(PurePosixPath(path).name)
    result = []
    for path in kept:
        pure = PurePosixPath(path)
        names = by_folder[str(pure.parent)]
        has_safetensors = any(name.endswith(".safetensors") for name in names)
        if has_safetensors and (pure.name.endswith(TORCH_WEIGHTS) or pure.name.endswith(".bin.index.json")):
            continue
        parts = pure.name.split(".")
        variant = next((part for part in parts[1:-1] if part in VARIANTS), None)
        if variant is not None and ".".join(part for part in parts if part != variant) in names:
            continue
        result.append(path)
    return sorted(result)


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set: no request may reach the hub."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a core dependency
        return True
    return bool(constants.HF_HUB_OFFLINE)


class HubClient:
    """The hub's API through ``huggingface_hub`` (blocking: call it from a worker thread)."""

    def __init__(self, endpoint: str, token: str | None) -> None:
        self.endpoint = endpoint
        self.token = token

    def headers(self) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers

        return dict(build_hf_headers(token=self.token or False, library_name="lollms_server"))

    def file_url(self, repo_id: str, path: str, commit: str) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(repo_id, path, revision=commit, endpoint=self.endpoint)

    def plan(self, ref: ModelRef, model_files: str) -> Plan:
        """What pulling ``ref`` for a binding whose models are ``model_files`` (``gguf`` or
        ``snapshot``) fetches (4xx when the repo, file or quantisation does not exist)."""
        info = self._model_info(ref)
        siblings = {
            sibling.rfilename: sibling for sibling in info.siblings or [] if safe_repo_path(sibling.rfilename)
        }
        if model_files == "gguf":
            chosen = pick_gguf(ref, list(siblings))
            installed = f"{ref.repo_id}/{chosen[0]}"
            folder = ref.repo_id
        else:
            if ref.kind != "repo":
                raise BadRequestError(
                    f"This binding loads whole model folders: pull '{ref.repo_id}', not a file or tag.",
                    param="ref",
                )
            chosen = snapshot_files(list(siblings))
            if not any(marker in chosen for marker in MARKERS):
                raise BadRequestError(
                    f"'{ref.repo_id}' is not a diffusers or transformers model (no config.json or "
                    "model_index.json at its root).",
                    param="ref",
                )
            installed = folder = ref.repo_id
        files = []
        for path in chosen:
            sibling = siblings[path]
            lfs = sibling.lfs
            size = lfs.size if lfs is not None else sibling.size
            if size is None:
                raise ServiceUnavailableError(f"The hub gave no size for '{ref.repo_id}/{path}'.")
            files.append(
                RemoteFile(
                    path=path,
                    size=int(size),
                    sha256=lfs.sha256 if lfs is not None else None,
                    git_sha1=None if lfs is not None else sibling.blob_id,
                )
            )
        kind = "gguf" if model_files == "gguf" else "snapshot"
        markers = [path for path in chosen if path in MARKERS]
        return Plan(ref.repo_id, info.sha or ref.revision or "main", files, installed, kind, folder, markers)

    def _model_info(self, ref: ModelRef):  # type: ignore[no-untyped-def]
        from huggingface_hub import HfApi
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        if hub_offline():
            raise ServiceUnavailableError(
                "The hub is switched off on this server (HF_HUB_OFFLINE is set).", retry_after=60
            )
        api = HfApi(endpoint=self.endpoint, token=self.token or False, library_name="lollms_server")
        try:
            return api.model_info(ref.repo_id, revision=ref.revision, files_metadata=True, timeout=30)
        except GatedRepoError:
            raise PermissionDeniedError(
                f"'{ref.repo_id}' is gated: accept its terms on the hub and set a token "
                "([models] hub_token_env).",
                param="ref",
            ) from None
        except RevisionNotFoundError:
            raise NotFoundError(f"'{ref.repo_id}' has no revision '{ref.revision}'.", param="ref") from None
        except RepositoryNotFoundError:
            raise NotFoundError(f"No model repository '{ref.repo_id}' on the hub.", param="ref") from None
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            logger.warning("The hub answered %s for %s", status, ref.repo_id)
            raise ServiceUnavailableError(f"The hub answered {status} for '{ref.repo_id}'.") from None
        except LollmsError:
            raise
        except Exception as exc:  # noqa: BLE001 - connection errors of the hub's HTTP client vary
            logger.warning("The hub could not be reached for %s: %s", ref.repo_id, type(exc).__name__)
            raise ServiceUnavailableError("The model hub could not be reached.", retry_after=30) from None
