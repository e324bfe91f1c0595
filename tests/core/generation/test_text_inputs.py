"""Text inputs: chat messages from input items and the TextRequest a binding receives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lollms_server.core.errors import BadRequestError
from lollms_server.core.generation.text_inputs import build_messages, text_request
from lollms_server.core.personalities import Personality, PersonalityConfig
from lollms_server.core.types import CHAT_ROLES, IMAGE_ROLES, SYSTEM_ROLES, InputData


def text(data: str, role: str = "user_prompt") -> InputData:
    return InputData(type="text", role=role, data=data)


def image(data: str = "aW1n", role: str = "input_image", mime_type: str | None = None) -> InputData:
    return InputData(type="image", role=role, data=data, mime_type=mime_type)


def personality(**fields: Any) -> Personality:
    return Personality(folder_name="p", folder=Path("p"), config=PersonalityConfig(name="P", **fields))


# ---- build_messages ---------------------------------------------------------------------------
@pytest.mark.parametrize(("role", "chat_role"), sorted(CHAT_ROLES.items()))
def test_every_chat_role_becomes_its_chat_turn(role: str, chat_role: str) -> None:
    messages = build_messages([text("hello", role), text("question")], None)
    assert messages[0] == {"role": chat_role, "content": "hello"}
    assert messages[-1] == {"role": "user", "content": "question"}


def test_turns_keep_their_order() -> None:
    inputs = [text("q1"), text("a1", "assistant"), text("q2", "user")]
    assert build_messages(inputs, None) == [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]


@pytest.mark.parametrize("role", sorted(SYSTEM_ROLES))
def test_system_roles_are_merged_into_one_first_system_message(role: str) -> None:
    inputs = [text("q"), text("context one", role), text("a", "assistant"), text("context two", role)]
    messages = build_messages(inputs, "base system")
    assert messages[0] == {"role": "system", "content": "base system\n\ncontext one\n\ncontext two"}
    assert [message["role"] for message in messages] == ["system", "user", "assistant"]


def test_system_message_alone_is_the_system_turn() -> None:
    assert build_messages([text("q")], "be brief")[0] == {"role": "system", "content": "be brief"}


def test_no_system_message_without_system_parts() -> None:
    assert build_messages([text("q")], None) == [{"role": "user", "content": "q"}]
    assert build_messages([text("q")], "") == [{"role": "user", "content": "q"}], "an empty one is none"


def test_unknown_roles_and_non_text_items_are_left_out() -> None:
    inputs = [text("q"), text("?", "narrator"), InputData(type="audio", role="input_audio", data="YXVk")]
    assert build_messages(inputs, None) == [{"role": "user", "content": "q"}]


@pytest.mark.parametrize("role", sorted(IMAGE_ROLES))
def test_images_join_the_last_user_turn_as_data_urls(role: str) -> None:
    inputs = [text("first"), text("answer", "assistant"), text("look"), image("AAAA", role, "image/jpeg")]
    messages = build_messages(inputs, None)
    assert messages[0] == {"role": "user", "content": "first"}, "earlier user turns stay plain text"
    assert messages[-1] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
        ],
    }


def test_images_before_the_user_text_still_join_the_last_user_turn() -> None:
    messages = build_messages([image("AAAA"), image("BBBB"), text("q"), text("a", "assistant")], None)
    user = messages[0]
    assert user["role"] == "user" and [part["type"] for part in user["content"]] == [
        "text",
        "image_url",
        "image_url",
    ]
    assert messages[1] == {"role": "assistant", "content": "a"}, "images never join an assistant turn"


def test_image_without_mime_type_is_sent_as_png() -> None:
    messages = build_messages([text("q"), image("AAAA")], None)
    assert messages[0]["content"][1]["image_url"]["url"] == "data:image/png;base64,AAAA"


def test_image_item_with_a_non_image_role_is_ignored() -> None:
    messages = build_messages([text("q"), image("AAAA", role="user_prompt")], None)
    assert messages == [{"role": "user", "content": "q"}]


def test_images_and_system_parts_together() -> None:
    messages = build_messages([text("ctx", "system_context"), text("q"), image("AAAA")], "sys")
    assert messages[0] == {"role": "system", "content": "sys\n\nctx"}
    assert messages[1]["content"][0] == {"type": "text", "text": "q"}


@pytest.mark.parametrize(
    "inputs",
    [
        [],
        [text("only context", "system_context")],
        [text("only an answer", "assistant")],
        [image("AAAA")],
    ],
)
def test_without_a_user_turn_is_a_400(inputs: list[InputData]) -> None:
    with pytest.raises(BadRequestError, match="role 'user_prompt'") as excinfo:
        build_messages(inputs, "sys")
    assert excinfo.value.status_code == 400
    assert excinfo.value.param == "input_data"


# ---- text_request ---------------------------------------------------------------------------
def test_plain_request_has_messages_and_no_prompt() -> None:
    request = text_request([text("q")], {"temperature": 0.5})
    assert request.messages == [{"role": "user", "content": "q"}]
    assert request.parameters == {"temperature": 0.5}
    assert request.prompt is None and request.prompt_format == {}


def test_system_message_parameter_becomes_the_system_turn_and_leaves_the_parameters() -> None:
    request = text_request([text("q")], {"system_message": "be brief", "top_k": 2})
    assert request.messages[0] == {"role": "system", "content": "be brief"}
    assert request.parameters == {"top_k": 2}, "system_message is not a binding parameter"


def test_personality_conditioning_is_the_system_message() -> None:
    request = text_request([text("q")], {}, personality(personality_conditioning="You are P."))
    assert request.messages[0] == {"role": "system", "content": "You are P."}


def test_request_system_message_wins_over_the_personality_conditioning() -> None:
    request = text_request(
        [text("q")], {"system_message": "request wins"}, personality(personality_conditioning="You are P.")
    )
    assert request.messages[0] == {"role": "system", "content": "request wins"}
    assert "You are P." not in str(request.messages)


def test_personality_without_conditioning_adds_no_system_turn() -> None:
    assert text_request([text("q")], {}, personality()).messages == [{"role": "user", "content": "q"}]


def test_personality_gives_the_prompt_format() -> None:
    tuned = personality(user_message_prefix="### User:", ai_message_prefix="### AI:", link_text="\n\n")
    request = text_request([text("q")], {}, tuned)
    assert request.prompt_format == {"user_prefix": "### User:", "ai_prefix": "### AI:", "link_text": "\n\n"}


def test_default_prompt_format_of_a_personality() -> None:
    assert text_request([text("q")], {}, personality()).prompt_format == {
        "user_prefix": "",
        "ai_prefix": "",
        "link_text": "\n",
    }


def test_raw_prompt_is_the_text_as_written() -> None:
    inputs = [text("Once upon "), text("a time", "user"), image("AAAA")]
    request = text_request(inputs, {"raw_prompt": True, "max_tokens": 3})
    assert request.prompt == "Once upon a time"
    assert request.messages == [{"role": "user", "content": "Once upon a time"}]
    assert request.parameters == {"max_tokens": 3}, "raw_prompt is not a binding parameter"


def test_raw_prompt_ignores_system_message_and_personality() -> None:
    request = text_request(
        [text("text")],
        {"raw_prompt": True, "system_message": "sys"},
        personality(personality_conditioning="You are P.", user_message_prefix="U:"),
    )
    assert request.prompt == "text" and request.messages == [{"role": "user", "content": "text"}]
    assert request.prompt_format == {}, "a raw completion uses no chat template"
    assert request.parameters == {}


def test_raw_prompt_false_builds_chat_messages() -> None:
    request = text_request([text("q")], {"raw_prompt": False})
    assert request.prompt is None and request.parameters == {}


def test_text_request_needs_a_user_turn() -> None:
    with pytest.raises(BadRequestError):
        text_request([text("ctx", "system_context")], {})


@pytest.mark.parametrize(
    "parameters",
    [
        {"seed": 2**80},
        {"seed": -1},
        {"temperature": float("nan")},
        {"min_p": float("nan")},
        {"min_p": 2.0},
        {"presence_penalty": 5.0},
        {"custom_float": float("inf")},
    ],
)
def test_text_parameters_out_of_range_or_not_finite_are_a_400(parameters: dict[str, Any]) -> None:
    """Finding #26: a seed of 2**80 crashed torch (500); NaN passed through to the samplers."""
    from lollms_server.core.generation.text_inputs import validate_text_parameters

    with pytest.raises(BadRequestError) as excinfo:
        validate_text_parameters(parameters)
    assert excinfo.value.param == f"parameters.{next(iter(parameters))}"
