"""Cards of lollms_client binding folders (copied at test time out of the installed package),
the constructor arguments LollmsClient would pass, and the errors of a folder that is not one."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from lollms_server.core.bindings.cards import validate_settings
from lollms_server.core.bindings.lollms_client_adapter.cards import discover_lollms_client_cards
from lollms_server.core.bindings.lollms_client_adapter.loading import binding_class, constructor_kwargs
from lollms_server.core.bindings.lollms_client_adapter.results import checked, sniff
from lollms_server.core.errors import BindingError, ConfigError

lollms_client = pytest.importorskip("lollms_client")
PACKAGE = Path(lollms_client.__file__).parent


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for family, name in (
        ("tti_bindings", "openai"),
        ("tti_bindings", "leonardo_ai"),
        ("llm_bindings", "lollms"),
        ("tts_bindings", "canvas_tts"),
    ):
        shutil.copytree(PACKAGE / family / name, tmp_path / family / name)
    (tmp_path / "tts_bindings" / "no_code").mkdir()  # description only: skipped
    (tmp_path / "tts_bindings" / "no_code" / "description.yaml").write_text("title: x\n")
    (tmp_path / "rag_bindings" / "safe").mkdir(parents=True)  # not a modality we serve
    (tmp_path / "rag_bindings" / "safe" / "__init__.py").write_text("")
    return tmp_path


def test_cards_from_the_two_description_formats(root: Path) -> None:
    cards = discover_lollms_client_cards([root])
    assert sorted(cards) == ["lc_llm_lollms", "lc_tti_leonardo_ai", "lc_tti_openai", "lc_tts_canvas_tts"]
    openai = cards["lc_tti_openai"]
    assert openai.generation_types == ["tti", "i2i"] and not openai.supports_streaming
    assert openai.instance_schema["service_key"].secret
    assert openai.instance_schema["size"].options is not None
    assert "model_name" not in openai.instance_schema
    assert [command["name"] for command in openai.commands] == ["list_models", "get_credits", "list_services"]  # type: ignore[attr-defined]
    assert openai.lollms_client["default_model"] == "gpt-image-1"  # type: ignore[attr-defined]
    legacy = cards["lc_tti_leonardo_ai"]  # input_parameters
    assert legacy.instance_schema["api_key"].secret
    assert cards["lc_llm_lollms"].generation_types == ["ttt", "embed"]
    assert cards["lc_llm_lollms"].supports_streaming
    assert all(spec.default is None for key, spec in openai.instance_schema.items() if key != "extra_kwargs")


def test_settings_are_validated_and_only_the_set_ones_reach_the_constructor(
    root: Path, tmp_path: Path
) -> None:
    card = discover_lollms_client_cards([root])["lc_tti_openai"]
    with pytest.raises(ConfigError, match="bindings.x.nope: unknown setting"):
        validate_settings("x", card, {"nope": 1})
    with pytest.raises(ConfigError, match="expected bool"):
        validate_settings("x", card, {"verify_ssl_certificate": "yes"})
    settings = validate_settings("x", card, {"service_key": "k", "extra_kwargs": {"port": 9}})
    kwargs = constructor_kwargs(card, settings, "gpt-image-1", tmp_path)
    assert kwargs == {
        "service_key": "k",
        "port": 9,
        "model_name": "gpt-image-1",
        "debug": False,
        "wait_for_server": True,
        "system_dir": str(tmp_path),
        "cwd": str(tmp_path),
    }
    llm = discover_lollms_client_cards([root])["lc_llm_lollms"]
    llm_kwargs = constructor_kwargs(llm, validate_settings("y", llm, {}), "echo/echo", tmp_path)
    assert llm_kwargs["user_name"] == "user" and "wait_for_server" not in llm_kwargs


def test_a_folder_whose_class_is_no_lollms_client_binding(tmp_path: Path) -> None:
    folder = tmp_path / "ttm_bindings" / "impostor"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("BindingName = 'Impostor'\nclass Impostor:\n    pass\n")
    card = discover_lollms_client_cards([tmp_path])["lc_ttm_impostor"]
    with pytest.raises(BindingError, match="derived from lollms_client's LollmsTTMBinding"):
        binding_class(card)


def test_results_and_sniffing() -> None:
    with pytest.raises(BindingError, match="quota exceeded"):
        checked("x", {"status": False, "message": "quota exceeded"})
    with pytest.raises(BindingError, match="boom"):
        checked("x", {"error": "boom"})
    assert checked("x", {"status": True, "value": 1}) == {"status": True, "value": 1}
    assert sniff(b"RIFF\x00\x00\x00\x00WAVEfmt ")[1] == "audio/wav"
    assert sniff(b"\x00\x00\x00\x18ftypisom")[1] == "video/mp4"
    assert sniff(b"ID3\x03")[1] == "audio/mpeg"
    assert sniff(b' {"a": 1}')[0] == "json"
    assert sniff(b"\x01\x02")[0] is None


def test_the_server_does_not_import_lollms_client_until_an_instance_starts() -> None:
    import subprocess
    import sys

    code = "import sys, lollms_server.main; print('lollms_client' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert found.stdout.strip() == "False", found.stderr


def test_prompts_for_bindings_without_generate_from_messages() -> None:
    from lollms_server.core.bindings import TextRequest
    from lollms_server.core.bindings.lollms_client_adapter.prompts import generation_kwargs, prompt_of

    one = TextRequest(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    )
    assert prompt_of(one) == ("Hi", "Be brief.", [])
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    turns = TextRequest(
        messages=[
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": [{"type": "text", "text": "And this?"}, image]},
        ],
        parameters={"max_tokens": 5, "top_k": 3, "stop": ["x"]},
    )
    prompt, system, images = prompt_of(turns)
    assert prompt == "!@>user: Hello\n!@>assistant: Hi!\n!@>user: And this?\n!@>assistant: "
    assert system == "" and images == ["data:image/png;base64,AAAA"]
    assert generation_kwargs(turns) == {"stream": True, "think": False, "n_predict": 5, "top_k": 3}
    raw = TextRequest(messages=[], prompt="raw text")
    assert prompt_of(raw) == ("raw text", "", [])


def test_without_auto_install_a_missing_package_is_an_error_not_a_pip_run(tmp_path: Path) -> None:
    import pipmaster

    from lollms_server.core.bindings.lollms_client_adapter.loading import construct

    folder = tmp_path / "stt_bindings" / "needs_more"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(
        "import pipmaster as pm\n"
        "pm.ensure_packages(['lollms-test-surely-missing-pkg'])\n"
        "import lollms_test_surely_missing_pkg\n"
    )
    card = discover_lollms_client_cards([tmp_path])["lc_stt_needs_more"]
    original = pipmaster.ensure_packages
    with pytest.raises(BindingError, match=r"missing a dependency \(lollms_test_surely_missing_pkg\)"):
        construct(card, {}, auto_install=False)
    assert pipmaster.ensure_packages is original


def test_media_calls_get_only_the_parameters_their_card_declares(root: Path) -> None:
    """R-01: every request parameter became a keyword argument of third-party code."""
    from types import SimpleNamespace

    from lollms_server.core.bindings import MediaRequest
    from lollms_server.core.bindings.lollms_client_adapter.adapter import LollmsClientBinding
    from lollms_server.core.bindings.lollms_client_adapter.cards import (
        COMMON_MEDIA_PARAMETERS,
        declared_call_parameters,
    )

    shutil.copytree(PACKAGE / "tti_bindings" / "diffusers", root / "tti_bindings" / "diffusers")
    cards = discover_lollms_client_cards([root])
    openai, diffusers = cards["lc_tti_openai"], cards["lc_tti_diffusers"]
    declared = declared_call_parameters(openai, "generate_image")
    assert declared == {"negative_prompt", "width", "height"}  # "prompt" is the call's own argument
    assert declared_call_parameters(diffusers, "generate_image") == COMMON_MEDIA_PARAMETERS  # none declared
    request = MediaRequest(
        generation_type="tti",
        prompt="a cat",
        parameters={
            "width": 64,
            "steps": 3,
            "seed": 5,
            "output_path": "/etc/cron.d/x",
            "note": "n" * 1000,
            "num_images": 2,
        },
    )
    names = {"steps": "num_inference_steps"}
    media_kwargs = LollmsClientBinding._media_kwargs
    passed = media_kwargs(SimpleNamespace(card=diffusers), request, names, "generate_image")  # type: ignore[arg-type]
    assert passed == {"width": 64, "num_inference_steps": 3, "seed": 5}
    passed = media_kwargs(SimpleNamespace(card=openai), request, names, "generate_image")  # type: ignore[arg-type]
    assert passed == {"width": 64}


class FakeLLM:
    """A lollms_client-like LLM object whose generation streams pieces through the callback."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces
        self.cancelled = False
        self.model_name = "m"

    def reset_cancel(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def run(self, callback: Any) -> str:
        for piece in self.pieces:
            if self.cancelled or callback(piece, 0) is False:
                break
        return "".join(self.pieces)


async def test_a_dropped_in_stream_matches_stops_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """T3-04: the stop matching of a lollms_client stream ran on the event loop (a long stop
    list froze the whole server ~1 s per piece); it runs in the binding's thread now."""
    import threading

    from lollms_server.core.bindings import CancelToken, TextRequest
    from lollms_server.core.bindings.lollms_client_adapter import adapter as adapter_module
    from lollms_server.core.bindings.text import StopTextBuffer

    threads: set[str] = set()
    push = StopTextBuffer.push

    def recording_push(self: StopTextBuffer, piece: str) -> tuple[str, bool]:
        threads.add(threading.current_thread().name)
        return push(self, piece)

    monkeypatch.setattr(StopTextBuffer, "push", recording_push)
    fake = FakeLLM(["keep ", "this ", "ST", "OP ", "not ", "that"])
    binding = object.__new__(adapter_module.LollmsClientBinding)
    binding.modality, binding.obj, binding._lock = "llm", fake, threading.Lock()  # type: ignore[attr-defined]
    monkeypatch.setattr(binding, "_text_call", lambda request: fake.run)
    monkeypatch.setattr(binding, "_checked", lambda result: result)
    request = TextRequest(messages=[{"role": "user", "content": "x"}], parameters={"stop": ["STOP"]})
    chunks = [chunk async for chunk in binding.stream_text("m", request, CancelToken())]
    assert threads and threading.main_thread().name not in threads, threads
    assert "".join(chunk.text for chunk in chunks) == "keep this "
    assert chunks[-1].finish_reason == "stop" and fake.cancelled
