"""The Responses dialect: items and tools in, the response object and its events out."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from lollms_server.api.responses import dialect, output, tools
from lollms_server.api.responses.protocol import ResponsesRequest
from lollms_server.core.errors import BadRequestError
from lollms_server.core.generation.text_inputs import text_request

FUNCTION = {
    "type": "function",
    "name": "add",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}},
}
CUSTOM = {
    "type": "custom",
    "name": "apply_patch",
    "format": {"type": "grammar", "syntax": "lark", "definition": "start: /x/"},
}
NAMESPACE = {"type": "namespace", "name": "mcp_fs", "tools": [{"type": "function", "name": "read"}]}


def request(**fields: Any) -> ResponsesRequest:
    return ResponsesRequest(**{"model": "echo", **fields})


def messages_of(body: ResponsesRequest) -> list[dict[str, Any]]:
    """The chat messages a binding receives for the request."""
    the_plan = tools.plan(body)
    native = dialect.native_request(body, the_plan, dialect.input_items(body), stream=False)
    return text_request(native.input_data, dict(native.parameters)).messages


def test_instructions_developer_and_system_messages_make_one_leading_system_turn() -> None:
    body = request(
        instructions="Rules.",
        input=[
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Dev."}]},
            {"role": "user", "content": "Hi"},
            {"role": "system", "content": "Late system."},
        ],
    )
    messages = messages_of(body)
    assert [message["role"] for message in messages] == ["system", "user"]
    assert messages[0]["content"] == "Rules.\n\nDev.\n\nLate system."


def test_calls_and_their_outputs_replay_in_the_tool_protocol() -> None:
    body = request(
        input=[
            {"role": "user", "content": "Add"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sure."}]},
            {"type": "function_call", "call_id": "c1", "name": "add", "arguments": '{"a": 1}'},
            {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** Begin"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "type": "function_call_output",
                "call_id": "c1",
                "output": [{"type": "input_text", "text": "2"}],
            },
            {"type": "custom_tool_call_output", "call_id": "c2", "output": "done"},
        ],
        tools=[FUNCTION, CUSTOM],
    )
    messages = messages_of(body)
    assert [message["role"] for message in messages] == ["user", "assistant", "user", "user"]
    assert messages[1]["content"] == (
        'Sure.\n<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>\n'
        '<tool_call>{"name": "apply_patch", "arguments": {"input": "*** Begin"}}</tool_call>'
    )
    assert messages[2]["content"] == '<tool_result name="add">2</tool_result>'
    assert messages[3]["content"] == '<tool_result name="apply_patch">done</tool_result>'


def test_images_and_an_empty_input() -> None:
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    body = request(input=[{"role": "user", "content": [{"type": "input_text", "text": "What?"}, image]}])
    (message,) = messages_of(body)
    assert message["content"][1] == {"type": "image_url", "image_url": {"url": image["image_url"]}}
    assert messages_of(request(input=[], instructions="Probe")) == [
        {"role": "system", "content": "Probe"},
        {"role": "user", "content": ""},
    ]


@pytest.mark.parametrize(
    ("items", "param"),
    [
        ([{"role": "robot", "content": "x"}], "input[0].role"),
        ([{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}], "input[0].content"),
        (
            [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}],
            "input[0].content",
        ),
    ],
)
def test_bad_items_are_400s_naming_them(items: list[Any], param: str) -> None:
    with pytest.raises(BadRequestError) as found:
        messages_of(request(input=items))
    assert found.value.param == param


def test_input_limits_count_items_not_characters() -> None:
    long = "word " * 5000
    assert messages_of(request(input=long))[0]["content"] == long
    with pytest.raises(ValueError):
        request(input=[{"role": "user", "content": "x"}] * 4097)


def test_tools_built_ins_are_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        the_plan = tools.plan(
            request(tools=[FUNCTION, CUSTOM, NAMESPACE, {"type": "web_search"}, {"type": "local_shell"}])
        )
    assert the_plan.mode == "auto"
    assert [spec["function"]["name"] for spec in the_plan.tools.specs] == [
        "add",
        "apply_patch",
        "mcp_fs.read",
    ]
    assert the_plan.tools.lookup("mcp_fs.read") == tools.ToolName("function", "read", "mcp_fs")
    assert the_plan.tools.lookup("apply_patch").kind == "custom"
    assert "start: /x/" in the_plan.tools.spec("apply_patch")["function"]["description"]
    assert "'web_search'" in caplog.text and "'local_shell'" in caplog.text


def test_tool_choice_modes() -> None:
    assert tools.plan(request()).mode == "text"
    assert tools.plan(request(tools=[FUNCTION], tool_choice="none")).mode == "text"
    assert tools.plan(request(tools=[FUNCTION], tool_choice="required")).forced == "add"
    assert tools.plan(request(tools=[FUNCTION, CUSTOM], tool_choice="required")).mode == "required"
    forced = tools.plan(
        request(tools=[NAMESPACE], tool_choice={"type": "function", "name": "read", "namespace": "mcp_fs"})
    )
    assert (forced.mode, forced.forced) == ("forced", "mcp_fs.read")
    allowed = {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "add"}]}
    assert [
        spec["function"]["name"]
        for spec in tools.plan(request(tools=[FUNCTION, CUSTOM], tool_choice=allowed)).tools.specs
    ] == ["add"]
    with pytest.raises(BadRequestError):
        tools.plan(request(tools=[FUNCTION], tool_choice={"type": "function", "name": "nope"}))
    with pytest.raises(BadRequestError):
        tools.plan(request(tools=[FUNCTION], tool_choice="always"))


def test_parameters_of_forced_calls_and_text_formats() -> None:
    body = request(tools=[FUNCTION], tool_choice={"type": "function", "name": "add"}, max_output_tokens=9)
    found = dialect.parameters(body, tools.plan(body))
    assert found["json_schema"] == FUNCTION["parameters"] and found["max_tokens"] == 9
    schema = {"type": "object", "properties": {"x": {"type": "string"}}}
    body = request(text={"format": {"type": "json_schema", "name": "x", "schema": schema, "strict": True}})
    assert dialect.parameters(body, tools.plan(body))["json_schema"] == schema
    body = request(text={"format": {"type": "json_object"}})
    assert dialect.parameters(body, tools.plan(body))["json_schema"] == {"type": "object"}


def events(frames: list[bytes]) -> list[dict[str, Any]]:
    found = []
    for frame in frames:
        name, data = frame.decode().rstrip("\n").split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        found.append(event)
    return found


def test_the_builder_numbers_events_and_builds_the_object() -> None:
    builder = output.ResponseBuilder(request(tools=[FUNCTION]), "resp_1", stored=True)
    frames = (
        builder.start() + builder.message("Hi") + builder.call(tools.ToolName("function", "add"), {"a": 1})
    )
    frames += builder.call(tools.ToolName("custom", "apply_patch"), {"input": "raw"})
    frames += builder.finish({"prompt_tokens": 10, "completion_tokens": 3, "cached_tokens": 7}, "stop")
    found = events(frames)
    assert [event["sequence_number"] for event in found] == list(range(len(found)))
    assert [event["type"] for event in found][-5:] == [
        "response.output_item.added",
        "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done",
        "response.output_item.done",
        "response.completed",
    ]
    response = found[-1]["response"]
    message, call, custom = response["output"]
    assert message["content"][0]["text"] == "Hi" and message["status"] == "completed"
    assert call["arguments"] == '{"a": 1}' and call["call_id"].startswith("call_")
    assert custom["type"] == "custom_tool_call" and custom["input"] == "raw"
    assert response["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 7, "cache_write_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 13,
    }
    assert response["store"] is True and builder.response() == response


def test_a_cut_answer_is_incomplete_and_a_failure_marks_open_items() -> None:
    builder = output.ResponseBuilder(request(), "resp_1", stored=False)
    (last,) = events(builder.finish({}, "length"))
    assert last["type"] == "response.incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    builder = output.ResponseBuilder(request(), "resp_2", stored=False)
    builder.start(), builder.open_message(), builder.text_delta("par")
    (failed,) = events(builder.fail("binding_error", "boom"))
    assert failed["type"] == "response.failed" and failed["response"]["error"] == {
        "code": "binding_error",
        "message": "boom",
    }
    assert failed["response"]["output"][0]["status"] == "incomplete"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 11, 40])
def test_call_watch_shows_all_text_without_calls(size: int) -> None:
    text = "Use <tool or <tool_cal then </tool_call> and <tool_call> not a call <tool"
    watch = output.CallWatch()
    shown = "".join(watch.push(text[i : i + size]) for i in range(0, len(text), size))
    assert shown == text[: text.index("<tool_call>")]  # held back from the first opening on
    rest, calls = watch.end()
    assert calls == [] and shown + rest == text


@pytest.mark.parametrize("size", [1, 4, 7, 100])
def test_call_watch_keeps_calls_out_of_the_text(size: int) -> None:
    text = 'Sure. <tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'
    watch = output.CallWatch()
    shown = "".join(watch.push(text[i : i + size]) for i in range(0, len(text), size))
    assert shown == "Sure. "
    assert watch.end() == ("", [{"name": "add", "arguments": {"a": 1}}])


def test_the_writer_of_an_auto_turn() -> None:
    body = request(tools=[FUNCTION])
    builder = output.ResponseBuilder(body, "resp_1", stored=False)
    writer = output.Writer(builder, tools.plan(body))
    found = events(
        writer.push("Ok <tool_")
        + writer.push('call>{"name": "add", "arguments": {"a": 2}}</tool_call>')
        + writer.end()
    )
    assert [event["type"] for event in found] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    assert found[2]["delta"] == "Ok " and json.loads(found[8]["arguments"]) == {"a": 2}
