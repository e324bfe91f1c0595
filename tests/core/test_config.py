"""Configuration loading: the example file, env overrides, and every error case."""

from __future__ import annotations

from pathlib import Path

import pytest

from lollms_server.core.config import ClusterConfig, ClusterPoolConfig, load_config
from lollms_server.core.errors import ConfigError
from tests.conftest import REPO


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_config_loads_and_documents_every_section(tmp_path: Path) -> None:
    config = load_config(REPO / "config.toml.example", environ={})
    assert config.server.port == 9601 and config.server.host == "127.0.0.1"
    assert config.bindings["local_llm"].type == "llamacpp_binding"
    assert config.defaults.ttt_binding == "local_llm"
    assert config.paths.models_folder == (REPO / "models").resolve()
    text = (REPO / "config.toml.example").read_text()
    for section in ("[server]", "[logging]", "[paths]", "[security]", "[defaults]", "[resource_manager]"):
        assert section in text
    assert config.cluster.mode == "local" and "[cluster]" in text
    for key in (*(set(ClusterConfig.model_fields) - {"pools"}), *ClusterPoolConfig.model_fields):
        assert f"{key} = " in text, key


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    path = write(tmp_path, '[paths]\nmodels_folder = "my/models"\n[logging]\nfile = "logs/x.log"\n')
    config = load_config(path, environ={})
    assert config.paths.models_folder == tmp_path / "my" / "models"
    assert config.logging.file == tmp_path / "logs" / "x.log"


def test_env_overrides_parse_toml_values(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9601\n")
    environ = {
        "LOLLMS_SERVER__SERVER__PORT": "9700",
        "LOLLMS_SERVER__SERVER__ALLOWED_ORIGINS": '["http://a.example"]',
        "LOLLMS_SERVER__RESOURCE_MANAGER__POOLS__DEFAULT__LIMIT": "3",
        "LOLLMS_SERVER__LOGGING__LEVEL": "debug",
        "UNRELATED": "1",
    }
    config = load_config(path, environ=environ)
    assert config.server.port == 9700
    assert config.server.allowed_origins == ["http://a.example"]
    assert config.resource_manager.pools["default"].limit == 3
    assert config.logging.level == "DEBUG"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server\nport = 1", "invalid TOML"),
        ('[server]\nport = "many"', "server.port"),
        ("[server]\nprot = 9601", "server.prot: unknown key"),
        ("[mystery]\na = 1", "mystery: unknown key"),
        ("[server]\nport = 70000", "server.port"),
        ('[resource_manager]\ndefault_pool = "gpu9"', "resource_manager.default_pool"),
        ('[defaults]\nttt_binding = "ghost"', "defaults.ttt_binding"),
        ('[bindings.x]\ntype = "t"\npool = "nowhere"', "bindings.x.pool: unknown pool"),
        ('[security]\napi_keys = [{ key = "short" }]', "security.api_keys.0.key"),
    ],
)
def test_errors_name_file_key_and_reason(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(path) in caught.value.message
    assert expected in caught.value.message


def test_env_override_errors_say_so_and_never_echo_values(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"LOLLMS_SERVER__SERVER__PORT": "secret-looking-value"})
    assert "server.port (set by environment)" in caught.value.message
    assert "secret-looking-value" not in caught.value.message


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml", environ={})


def test_toml_1_0_mixed_arrays_load(tmp_path: Path) -> None:
    """What the settings writer (tomlkit, TOML 1.0) persists, the loader reads (T3-09)."""
    path = write(tmp_path, '[bindings.x]\ntype = "t"\n[bindings.x.extra_kwargs]\nvoices = ["default", 2]\n')
    config = load_config(path, environ={})
    assert (config.bindings["x"].model_extra or {})["extra_kwargs"] == {"voices": ["default", 2]}


@pytest.mark.parametrize(
    "keys",
    [
        '[{ name = "a", key = "aaaaaaaaaa" }, "bbbbbbbbbb"]',
        '["bbbbbbbbbb", { name = "a", key = "aaaaaaaaaa" }]',
    ],
)
def test_api_keys_mixing_strings_and_tables_keep_every_key(tmp_path: Path, keys: str) -> None:
    """Plain strings and tables in one list: none dropped, no traceback (T3-20)."""
    path = write(tmp_path, f"[security]\napi_keys = {keys}\n")
    config = load_config(path, environ={})
    assert len(config.security.api_keys) == 2


@pytest.mark.parametrize("text", ["a = [1,", "a = 1\na = 2", "x = '''", "[a]\n[a]", "a = 1979-05-99"])
def test_any_parse_error_is_a_config_error_naming_the_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="invalid TOML") as caught:
        load_config(path, environ={})
    assert str(path) in caught.value.message
