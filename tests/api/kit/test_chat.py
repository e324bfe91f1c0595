"""The one chat-turns mapping every family goes through (``api.kit.chat``)."""

from __future__ import annotations

from lollms_server.api.kit.chat import Image, ToolCall, Turn, native_inputs


def test_roles_images_and_the_last_user_turn() -> None:
    inputs = native_inputs(
        [
            Turn("system", "Be brief."),
            Turn("user", "first", images=[Image("aGk=", "image/jpeg")]),
            Turn("assistant", "ok"),
            Turn("user", "second"),
        ]
    )
    assert [(item.type, item.role, item.data) for item in inputs] == [
        ("text", "system_context", "Be brief."),
        ("text", "user", "first"),
        ("image", "input_image", "aGk="),
        ("text", "assistant", "ok"),
        ("text", "user_prompt", "second"),
    ]
    assert inputs[2].mime_type == "image/jpeg"


def test_a_tool_result_finds_its_call_by_id_then_name_then_order() -> None:
    calls = [ToolCall("a", {"x": 1}, id="c1"), ToolCall("b", {}, id="c2"), ToolCall("c", {})]
    inputs = native_inputs(
        [
            Turn("user", "go"),
            Turn("assistant", "", tool_calls=calls),
            Turn("tool", "B", call_id="c2"),  # by id, out of order
            Turn("tool", "C", tool_name="c"),  # by its own name
            Turn("tool", "A", ok=False),  # the first call not answered yet
        ]
    )
    assert inputs[1].data.splitlines() == [
        '<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>',
        '<tool_call>{"name": "b", "arguments": {}}</tool_call>',
        '<tool_call>{"name": "c", "arguments": {}}</tool_call>',
    ]
    assert [item.data for item in inputs[2:]] == [
        '<tool_result name="b">B</tool_result>',
        '<tool_result name="c">C</tool_result>',
        '<tool_result name="a" error="true">A</tool_result>',
    ]
    assert all(item.role == "user" for item in inputs[2:])


def test_images_of_other_turns_are_dropped() -> None:
    inputs = native_inputs([Turn("system", "s", images=[Image("aGk=")]), Turn("user", "u")])
    assert [item.type for item in inputs] == ["text", "text"]
