"""Binding cards, instance validation, lazy import, user folder overrides, secret masking."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from lollms_server.core.bindings import Binding, BindingManager, CancelToken, TextRequest
from lollms_server.core.config import config_from_dict
from lollms_server.core.errors import ConfigError, NotFoundError
from tests.conftest import USER_BINDINGS

CARD = """type_name: {name}
display_name: Test
generation_types: [ttt]
instance_schema:
  mode:
    type: str
    default: fast
    options: [fast, slow]
  count:
    type: int
    default: 1
  token:
    type: str
    secret: true
"""


def manager(tmp_path: Path, bindings: dict[str, Any], user_folder: Path = USER_BINDINGS) -> BindingManager:
    config = config_from_dict(
        {
            "paths": {"bindings_folder": str(user_folder), "models_folder": str(tmp_path / "models")},
            "server": {"auto_install_requirements": False},
            "bindings": bindings,
        },
        environ={},
    )
    return BindingManager(config)


def make_binding(folder: Path, name: str, code: str = "") -> Path:
    path = folder / name
    path.mkdir(parents=True)
    (path / "binding_card.yaml").write_text(CARD.format(name=name))
    (path / "__init__.py").write_text(code or "raise RuntimeError('imported too early')\n")
    return path


def test_cards_are_read_without_importing_code(tmp_path: Path) -> None:
    make_binding(tmp_path / "user", "lazy_binding")
    bindings = manager(tmp_path, {"lazy": {"type": "lazy_binding", "mode": "slow"}}, tmp_path / "user")
    assert "lazy_binding" in bindings.cards and "llamacpp_binding" in bindings.cards
    assert "lollms_bindings.lazy_binding" not in sys.modules
    assert bindings.instance("lazy").settings == {"mode": "slow", "count": 1, "token": None}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "medium"}, "bindings.x.mode: must be one of"),
        ({"count": "3"}, "bindings.x.count: expected int"),
        ({"colour": "red"}, "bindings.x.colour: unknown setting"),
    ],
)
def test_instance_settings_are_validated_against_the_card(
    tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    make_binding(tmp_path / "user", "checked_binding")
    with pytest.raises(ConfigError, match=message):
        manager(tmp_path, {"x": {"type": "checked_binding", **settings}}, tmp_path / "user")


def test_unknown_type_names_the_instance(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bindings.x.type: unknown binding type 'nope'"):
        manager(tmp_path, {"x": {"type": "nope"}})


def test_user_folder_wins_on_a_name_clash(tmp_path: Path) -> None:
    user = tmp_path / "user"
    make_binding(user, "llamacpp_binding")
    bindings = manager(tmp_path, {}, user)
    assert bindings.cards["llamacpp_binding"].folder == user / "llamacpp_binding"


def test_card_type_name_must_match_folder(tmp_path: Path) -> None:
    folder = make_binding(tmp_path / "user", "good_name")
    (folder / "binding_card.yaml").write_text(CARD.format(name="other_name"))
    assert "good_name" not in manager(tmp_path, {}, tmp_path / "user").cards  # logged and skipped


async def test_custom_user_binding_is_imported_on_first_use_and_streams(tmp_path: Path) -> None:
    bindings = manager(tmp_path, {"echo": {"type": "scripted_binding", "api_token": "hidden-value"}})
    instance = bindings.instance("echo")
    assert instance.public()["settings"]["api_token"] == "********"
    assert instance.binding is None
    binding = await bindings.get("echo")
    assert await bindings.get("echo") is binding
    await binding.load_model("echo")
    chunks = [
        chunk.text
        async for chunk in binding.stream_text(
            "echo", TextRequest(messages=[{"role": "user", "content": "a b c"}]), CancelToken()
        )
    ]
    assert "".join(chunks) == "a b c "
    with pytest.raises(NotFoundError):
        bindings.instance("ghost")


async def test_stream_from_thread_stops_the_producer_when_the_consumer_leaves(tmp_path: Path) -> None:
    import threading

    from lollms_server.core.bindings import Binding

    produced: list[int] = []
    finished = threading.Event()

    def produce() -> Any:
        try:
            for index in range(10_000):
                produced.append(index)
                yield index
                threading.Event().wait(0.001)
        finally:
            finished.set()

    cancel = CancelToken()
    stream = Binding.stream_from_thread(produce, cancel)
    async for item in stream:
        if item == 3:
            break
    await stream.aclose()
    assert cancel.cancelled and finished.is_set() and len(produced) < 100


async def test_requirements_are_checked_with_pipmaster_when_allowed(tmp_path: Path) -> None:
    folder = make_binding(
        tmp_path / "user",
        "needs_binding",
        "from lollms_server.core.bindings import Binding\n"
        "BindingName = 'Needs'\n"
        "class Needs(Binding):\n    pass\n",
    )
    card = (
        (folder / "binding_card.yaml")
        .read_text()
        .replace("generation_types", "requirements: [httpx>=0.20]\ngeneration_types")
    )
    (folder / "binding_card.yaml").write_text(card)
    config = config_from_dict(
        {
            "paths": {"bindings_folder": str(tmp_path / "user")},
            "server": {"auto_install_requirements": True},
            "bindings": {"n": {"type": "needs_binding"}},
        },
        environ={},
    )
    binding = await BindingManager(config).get("n")  # httpx is installed: nothing to do, no network
    assert binding.instance_name == "n"


def test_downloads_need_an_allowed_source_and_fit_the_size_cap(tmp_path: Path) -> None:
    """Finding #24: with allow_download any 'a/b' name went to the hub, of any size."""
    from lollms_server.core.bindings.torch import locate_model_folder
    from lollms_server.core.errors import BadRequestError, PermissionDeniedError

    config = config_from_dict(
        {
            "security": {"api_keys": ["a-key-long-enough"]},
            "downloads": {"allowed_sources": ["trusted", "other/one-repo"], "max_download_mb": 100},
            "bindings": {"llm": {"type": "llamacpp_binding", "allow_download": True}},
        },
        base=tmp_path,
        environ={},
    )
    instance = BindingManager(config).instance("llm")
    binding = Binding(instance.context())
    binding.check_download("trusted/any-model")
    binding.check_download("other/one-repo", size_mb=99)
    for refused in ("stranger/model", "other/another-repo"):
        with pytest.raises(PermissionDeniedError):
            binding.check_download(refused)
    with pytest.raises(BadRequestError):
        binding.check_download("trusted/huge", size_mb=101)
    with pytest.raises(PermissionDeniedError):
        locate_model_folder(
            tmp_path,
            "stranger/model",
            allow_download=True,
            instance="llm",
            check_download=binding.check_download,
        )
