"""What the Ollama listings tell from binding cards and model names."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from lollms_server.api.ollama_compat import catalog


def instance(types: list[str], capabilities: list[str] | None = None, **settings: Any) -> Any:
    extra = {"capabilities": capabilities} if capabilities is not None else {}
    card = SimpleNamespace(type_name="llamacpp_binding", generation_types=types, model_extra=extra)
    return SimpleNamespace(name="llm", card=card, settings=settings)


@pytest.mark.parametrize(
    ("model", "size", "quantization"),
    [
        ("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "1.5B", "Q4_K_M"),
        ("owner/Llama-3-8B-Instruct.IQ3_XS.gguf", "8B", "IQ3_XS"),
        ("SmolLM-135M-F16.gguf", "135M", "F16"),
        ("tiny.gguf", "", ""),
    ],
)
def test_details_from_the_name(model: str, size: str, quantization: str) -> None:
    found = catalog.details(instance(["ttt"]), model)
    assert found["parameter_size"] == size and found["quantization_level"] == quantization
    assert found["format"] == "gguf" and found["family"] == "llamacpp"
    assert catalog.details(instance(["ttt"]), model, "qwen2")["families"] == ["qwen2"]


def test_capabilities_from_the_card() -> None:
    assert catalog.capabilities(instance(["ttt"])) == ["completion", "tools"]
    assert catalog.capabilities(instance(["ttt", "embed"], ["vision", "insert"])) == [
        "completion",
        "tools",
        "embedding",
        "vision",
        "insert",
    ]
    assert catalog.capabilities(instance(["embed"])) == ["embedding"]
    assert catalog.kind(instance(["embed"])) == "embed" and catalog.kind(instance(["tti"])) == "tti"


def test_context_and_show() -> None:
    text = instance(["ttt"], n_ctx=2048)
    assert catalog.context_length(text, {}) == 2048
    assert catalog.context_length(text, {"context_size": 4096}) == 4096
    shown = catalog.show(text, "tiny.gguf", {"architecture": "llama", "context_size": 4096}, 0.0)
    assert shown["model_info"]["llama.context_length"] == 4096 and shown["parameters"] == "num_ctx 4096"
    assert ".Suffix" not in shown["template"]
    filling = catalog.show(instance(["ttt"], ["insert"]), "m", {}, 0.0)
    assert ".Suffix" in filling["template"] and filling["parameters"] == ""
    assert catalog.on_gpu(instance(["ttt"], n_gpu_layers=-1)) and not catalog.on_gpu(instance(["ttt"]))
    assert catalog.on_gpu(instance(["ttt"], device="cuda:0"))
