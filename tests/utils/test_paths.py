from __future__ import annotations

from pathlib import Path

import pytest

from lollms_server.core.errors import BadRequestError
from lollms_server.utils.paths import safe_join, validate_model_name


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../b", "", "a\\..\\b", "a\x00b", "C:evil"])
def test_escaping_names_are_rejected(tmp_path: Path, name: str) -> None:
    with pytest.raises(BadRequestError):
        safe_join(tmp_path, name)
    with pytest.raises(BadRequestError):
        validate_model_name(name)


def test_symlink_out_of_the_folder_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "link").symlink_to(tmp_path)
    with pytest.raises(BadRequestError):
        safe_join(tmp_path / "models", "link/secret.gguf")


def test_sub_folders_are_fine(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "family/model.gguf") == (tmp_path / "family" / "model.gguf").resolve()
    validate_model_name("family/model.gguf")
