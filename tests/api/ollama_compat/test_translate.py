"""Ollama bodies -> native inputs and parameters, and native metadata -> Ollama's counts."""

from __future__ import annotations

import base64
import io

import pytest

from lollms_server.api.ollama_compat import translate
from lollms_server.api.ollama_compat.protocol import GenerateBody, Message, NamedBody, Options
from lollms_server.core.errors import BadRequestError


def png() -> str:
    from PIL import Image

    data = io.BytesIO()
    Image.new("RGB", (4, 3)).save(data, format="PNG")
    return base64.b64encode(data.getvalue()).decode()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("llm", ("llm", None)),
        ("llm:latest", ("llm", None)),
        ("llm/tiny.gguf", ("llm", "tiny.gguf")),
        ("llm/tiny.gguf:latest", ("llm", "tiny.gguf")),
        ("llm/owner/repo/file.gguf", ("llm", "owner/repo/file.gguf")),
        ("ollama/llama3:8b", ("ollama", "llama3:8b")),  # another tag is part of the model's name
    ],
)
def test_model_names(name: str, expected: tuple[str | None, str | None]) -> None:
    assert translate.model_target(name) == expected
    assert translate.public_name("llm", "tiny.gguf") == "llm/tiny.gguf:latest"


@pytest.mark.parametrize(
    ("keep_alive", "unloads"),
    [
        (0, True),
        ("0", True),
        ("0s", True),
        ("0m", True),
        (0.0, True),
        ("5m", False),
        (-1, False),
        (None, False),
    ],
)
def test_keep_alive_zero_means_unload(keep_alive: object, unloads: bool) -> None:
    assert translate.unloads(keep_alive) is unloads  # type: ignore[arg-type]


def test_options_and_format_map_to_native_parameters() -> None:
    options = Options(
        temperature=0.2,
        top_k=5,
        top_p=0.9,
        min_p=0.1,
        num_predict=7,
        stop=["\n"],
        seed=3,
        repeat_penalty=1.2,
        presence_penalty=0.5,
        frequency_penalty=0.4,
        num_ctx=8192,
    )
    assert translate.parameters(options) == {
        "temperature": 0.2,
        "top_k": 5,
        "top_p": 0.9,
        "min_p": 0.1,
        "max_tokens": 7,
        "stop": ["\n"],
        "seed": 3,
        "repeat_penalty": 1.2,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.4,
    }
    assert translate.parameters(Options(num_predict=-1, seed=-1, num_ctx=0)) == {}  # no limit, random
    assert translate.parameters(None, "json") == {"json_schema": {"type": "object"}}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert translate.parameters(None, schema) == {"json_schema": schema}
    with pytest.raises(BadRequestError):
        translate.parameters(None, "yaml")  # type: ignore[arg-type]
    with pytest.raises(BadRequestError):
        translate.parameters(Options(num_predict=0))


def test_chat_messages_with_tools_and_images() -> None:
    image = png()
    messages = [
        Message(role="system", content="Be brief."),
        Message(role="user", content="Weather?", images=[image]),
        Message(
            role="assistant",
            content="",
            tool_calls=[{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        ),
        Message(role="tool", content="sunny"),
        Message(role="user", content="Thanks"),
    ]
    inputs = translate.chat_inputs(messages)
    assert [(item.type, item.role) for item in inputs] == [
        ("text", "system_context"),
        ("text", "user"),
        ("image", "input_image"),
        ("text", "assistant"),
        ("text", "user"),
        ("text", "user_prompt"),
    ]
    assert inputs[2].mime_type == "image/png" and inputs[2].data == image
    assert inputs[3].data == '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    assert inputs[4].data == '<tool_result name="get_weather">sunny</tool_result>'  # named by the call
    with pytest.raises(BadRequestError):
        translate.chat_inputs([Message(role="user", content="x", images=["bm90IGFuIGltYWdl"])])
    with pytest.raises(BadRequestError):
        translate.chat_inputs([Message(role="assistant", content="x", tool_calls=[{"function": {}}])])


def test_generate_inputs_raw_and_system() -> None:
    inputs, extra = translate.generate_inputs(GenerateBody(model="m", prompt="p", system="s"))
    assert [(item.role, item.data) for item in inputs] == [("system_context", "s"), ("user_prompt", "p")]
    assert extra == {}
    inputs, extra = translate.generate_inputs(GenerateBody(model="m", prompt="p", system="s", raw=True))
    assert [item.data for item in inputs] == ["p"] and extra == {"raw_prompt": True}


def test_final_counts_in_nanoseconds() -> None:
    metadata = {
        "usage": {"prompt_tokens": 11, "completion_tokens": 4},
        "timings": {"total": 1.5, "load": 0.25, "compute": 1.0},
    }
    assert translate.durations(metadata, prompt_seconds=0.1) == {
        "total_duration": 1_500_000_000,
        "load_duration": 250_000_000,
        "prompt_eval_count": 11,
        "prompt_eval_duration": 100_000_000,
        "eval_count": 4,
        "eval_duration": 900_000_000,
    }
    assert translate.durations({})["eval_duration"] == 0
    assert translate.done_reason({"finish_reason": "length"}) == "length"
    assert translate.done_reason({"finish_reason": "tool_calls"}) == "stop"


def test_named_bodies_take_model_or_name() -> None:
    assert NamedBody(name="llm").model == "llm"
    assert NamedBody(model="a", name="b").model == "a"
    with pytest.raises(ValueError):
        NamedBody()


def test_tools_need_a_named_function() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    assert translate.tools_offered([tool, {"type": "retrieval"}]) == [tool]
    for bad in ({"function": "f"}, {"type": "function", "function": {"name": 3}}, {"type": "function"}):
        with pytest.raises(BadRequestError):
            translate.tools_offered([bad])
