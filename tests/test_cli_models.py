"""``lollms-server pull | models | rm`` and ``init --model`` against the local fake hub."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import toml

from lollms_server.cli import main
from lollms_server.cli_models import set_default_text_model
from lollms_server.core.config import load_config
from tests.conftest import base_config
from tests.fixtures.fake_hub import FakeHub

REPO = "tester/tiny-GGUF"


@pytest.fixture
def hub(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    import huggingface_hub.constants

    from tests.tiny_models import build_tiny_gguf

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    data = build_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf").read_bytes()
    with FakeHub.running() as running:
        running.state.add(REPO, {"tiny-Q4_K_M.gguf": data, "tiny-Q8_0.gguf": data[::-1]})
        yield running


def write_config(tmp_path: Path, hub: FakeHub) -> Path:
    data = base_config(tmp_path, tmp_path / "models", models={"hub_endpoint": hub.url})
    path = tmp_path / "config.toml"
    path.write_text(toml.dumps(data))
    return path


def test_pull_models_rm(tmp_path: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(write_config(tmp_path, hub))
    assert main(["pull", f"{REPO}:Q8_0", "--binding", "llm", "--config", config]) == 0
    out, err = capsys.readouterr()
    name = f"{REPO}/tiny-Q8_0.gguf"
    assert out.strip() == name
    assert re.search(r"tiny-Q8_0.gguf\s+\[#{24}\] .*/s ETA 0:00", err)  # the bar, complete
    assert (tmp_path / "models" / "llamacpp_binding" / name).is_file()

    assert main(["pull", "nope/x:Q4_K_M", "--binding", "llm", "--config", config]) == 1
    assert "No model repository 'nope/x'" in capsys.readouterr().err

    assert main(["--config", config, "models"]) == 0
    listing = capsys.readouterr().out
    assert re.search(rf"^llm \(llamacpp_binding, .*\):\n  {re.escape(name)}\s+\d+\.\d KB$", listing, re.M)
    assert "echo" not in listing  # a binding without model files

    assert main(["rm", name, "--binding", "llm", "--config", config]) == 0
    assert not (tmp_path / "models" / "llamacpp_binding" / "tester").exists()
    assert main(["rm", name, "--binding", "llm", "--config", config]) == 1
    assert "not installed" in capsys.readouterr().err


def test_init_with_a_model_pulls_it_and_makes_it_the_default(
    tmp_path: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOLLMS_SERVER__MODELS__HUB_ENDPOINT", hub.url)
    path = tmp_path / "config.toml"
    assert main(["init", str(path), "--model", f"{REPO}:Q4_K_M"]) == 0
    out = capsys.readouterr().out
    assert "Your API key" in out and "is now the default text model" in out
    config = load_config(path)
    assert config.defaults.ttt_binding == "local_llm"
    assert config.defaults.ttt_model == f"{REPO}/tiny-Q4_K_M.gguf"
    assert (config.paths.models_folder / "llamacpp_binding" / REPO / "tiny-Q4_K_M.gguf").is_file()
    # again on the existing file: no new key, only the model
    assert main(["init", str(path), "--model", f"{REPO}:Q8_0"]) == 0
    out = capsys.readouterr().out
    assert "Your API key" not in out
    assert load_config(path).defaults.ttt_model == f"{REPO}/tiny-Q8_0.gguf"


def test_models_names_the_command_when_the_default_model_is_missing(
    tmp_path: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, hub)
    data = toml.loads(path.read_text())
    data["defaults"] = {"ttt_binding": "llm", "ttt_model": f"{REPO}/tiny-Q4_K_M.gguf"}
    path.write_text(toml.dumps(data))
    assert main(["models", "--config", str(path)]) == 0
    assert f"get it with  lollms-server pull --config {path} --binding llm {REPO}/tiny-Q4_K_M.gguf" in (
        capsys.readouterr().out
    )


def test_set_default_text_model_keeps_the_other_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[defaults]\nttt_binding = "x"\n# ttt_model = "old"\n\n[other]\nttt_model = "keep"\n')
    set_default_text_model(path, "o/r/f.gguf")
    assert path.read_text() == (
        '[defaults]\nttt_binding = "x"\nttt_model = "o/r/f.gguf"\n\n[other]\nttt_model = "keep"\n'
    )
    path.write_text("[server]\nport = 1\n")
    set_default_text_model(path, "m")
    assert toml.loads(path.read_text())["defaults"]["ttt_model"] == "m"
