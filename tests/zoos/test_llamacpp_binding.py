"""llamacpp_binding pieces that need no server: stop handling and direct model use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lollms_server.core.bindings import BindingManager, CancelToken, StopTextBuffer, TextRequest
from lollms_server.core.config import config_from_dict
from lollms_server.core.errors import BadRequestError, NotFoundError


@pytest.fixture
def module() -> Any:
    config = config_from_dict({"server": {"auto_install_requirements": False}}, environ={})
    return BindingManager._import(BindingManager(config).cards["llamacpp_binding"])


def test_stop_buffer_holds_back_possible_stop_prefixes() -> None:
    buffer = StopTextBuffer(["</end>", "STOP"])
    assert buffer.push("Hello </") == ("Hello ", False)
    assert buffer.push("e") == ("", False)
    assert buffer.push("x") == ("</ex", False)
    assert buffer.push(" and ST") == (" and ", False)
    assert buffer.push("OP after") == ("", True)
    assert StopTextBuffer([]).push("abc") == ("abc", False)


async def test_binding_loads_streams_and_unloads(module: Any, models_folder: Path) -> None:
    config = config_from_dict(
        {
            "server": {"auto_install_requirements": False},
            "paths": {"models_folder": str(models_folder)},
            "bindings": {"llm": {"type": "llamacpp_binding", "n_threads": 1, "n_ctx": 512}},
        },
        environ={},
    )
    bindings = BindingManager(config)
    binding = await bindings.get("llm")
    with pytest.raises(NotFoundError):
        await binding.load_model("absent.gguf")
    with pytest.raises(BadRequestError):
        await binding.load_model("../tiny.gguf")
    await binding.load_model("tiny.gguf")
    assert binding.loaded_models() == ["tiny.gguf"] and binding.footprint_mb("tiny.gguf") > 0.5
    request = TextRequest(
        messages=[{"role": "user", "content": "hi"}],
        parameters={"max_tokens": 5, "ignore_eos": True, "seed": 1},
    )
    chunks = [chunk async for chunk in binding.stream_text("tiny.gguf", request, CancelToken())]
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage["completion_tokens"] == 5
    long_prompt = TextRequest(messages=[{"role": "user", "content": "word " * 2000}])
    with pytest.raises(BadRequestError, match="context"):
        [chunk async for chunk in binding.stream_text("tiny.gguf", long_prompt, CancelToken())]
    await binding.unload_model("tiny.gguf")
    assert binding.loaded_models() == []


def test_gpu_layers_auto_follows_the_build_and_a_number_wins(
    module: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import llama_cpp

    model = tmp_path / "m.gguf"
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: True)
    assert module.resolve_gpu_layers({"n_gpu_layers": "auto"}, model) == -1  # every layer
    assert module.resolve_gpu_layers({}, model) == -1
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: False)
    assert module.resolve_gpu_layers({"n_gpu_layers": "auto"}, model) == 0  # a CPU build
    assert module.resolve_gpu_layers({"n_gpu_layers": 12}, model) == 12
    assert module.resolve_gpu_layers({"n_gpu_layers": -7}, model) == -1
    assert module.resolve_gpu_layers({"n_gpu_layers": 10**12}, model) == module.MAX_GPU_LAYERS


def test_gpu_layers_setting_takes_a_number_or_auto_only() -> None:
    from lollms_server.core.errors import ConfigError

    def settings(value: Any) -> dict[str, Any]:
        config = config_from_dict(
            {
                "server": {"auto_install_requirements": False},
                "bindings": {"llm": {"type": "llamacpp_binding", "n_gpu_layers": value}},
            },
            environ={},
        )
        return BindingManager(config).instances["llm"].settings

    assert settings("auto")["n_gpu_layers"] == "auto" and settings(20)["n_gpu_layers"] == 20
    for bad in ("all", True, 1.5):
        with pytest.raises(ConfigError, match='an int or "auto"'):
            settings(bad)
    default = config_from_dict({"server": {"auto_install_requirements": False}}, environ={})
    assert BindingManager(default).cards["llamacpp_binding"].instance_schema["n_gpu_layers"].default == "auto"


async def test_the_loaded_model_says_how_many_layers_it_offloaded(models_folder: Path) -> None:
    config = config_from_dict(
        {
            "server": {"auto_install_requirements": False},
            "paths": {"models_folder": str(models_folder)},
            "bindings": {"llm": {"type": "llamacpp_binding", "n_threads": 1, "n_ctx": 256, "parallel": 1}},
        },
        environ={},
    )
    binding = await BindingManager(config).get("llm")
    await binding.load_model("tiny.gguf")
    try:
        info = await binding.get_model_info("tiny.gguf")
        import llama_cpp

        expected = -1 if llama_cpp.llama_supports_gpu_offload() else 0
        assert info["n_gpu_layers"] == expected and info["gpu_offload"] is (expected != 0)
    finally:
        await binding.unload_model("tiny.gguf")
