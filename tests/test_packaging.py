"""A built wheel carries the zoos and the example configuration: an installed (non-editable)
server finds its shipped bindings and can write a first config."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, installed (without dependencies) into a folder of its own."""
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(folder),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = folder.glob("lollms_server-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "lollms_server/data/config.toml.example" in names
    assert "lollms_server/data/zoos/bindings/llamacpp_binding/binding_card.yaml" in names
    for page in ("index.html", "app.js", "api.js", "markdown.js", "style.css"):  # the web UI
        assert f"lollms_server/ui/static/{page}" in names, page
    target = folder / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def test_an_installed_wheel_finds_its_zoos_and_example_config(installed: Path, tmp_path: Path) -> None:
    script = (
        "import lollms_server, pathlib, sys\n"
        "from lollms_server.core.config import DEFAULT_ZOOS_FOLDER\n"
        "from lollms_server.core.bindings import BindingManager\n"
        "from lollms_server.cli import EXAMPLE_CONFIG\n"
        f"root = pathlib.Path({str(installed)!r})\n"
        "assert pathlib.Path(lollms_server.__file__).is_relative_to(root), lollms_server.__file__\n"
        "assert DEFAULT_ZOOS_FOLDER.is_relative_to(root), DEFAULT_ZOOS_FOLDER\n"
        "cards = BindingManager.discover_cards([DEFAULT_ZOOS_FOLDER / 'bindings'])\n"
        "assert 'llamacpp_binding' in cards and 'diffusers_binding' in cards, sorted(cards)\n"
        "assert 'api_keys = []' in EXAMPLE_CONFIG.read_text()\n"
        "from lollms_server.api.ui import STATIC_FOLDER\n"
        "assert STATIC_FOLDER.is_relative_to(root) and (STATIC_FOLDER / 'index.html').is_file()\n"
        "print('ok')\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(installed)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
