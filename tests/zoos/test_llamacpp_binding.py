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
