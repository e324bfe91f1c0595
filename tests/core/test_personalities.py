"""Personalities: discovery, broken examples, overrides, precedence, workflows."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lollms_server.core.config import config_from_dict
from lollms_server.core.personalities import PersonalityManager
from tests.conftest import AUTH, TESTS

PERSONALITIES = TESTS / "fixtures" / "personalities"
FUNCTIONS = TESTS / "fixtures" / "functions"


def manager(**extra: Any) -> PersonalityManager:
    return PersonalityManager(
        config_from_dict({"paths": {"personalities_folder": str(PERSONALITIES)}, **extra}, environ={})
    )


def test_zoo_and_user_folder_load_and_broken_ones_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    personalities = manager().personalities
    assert {"lollms", "artbot", "streamer", "failing", "valid_plain", "echo_tuned"} <= set(personalities)
    for broken in ("broken_yaml", "no_name", "escaping"):
        assert broken not in personalities
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "broken_yaml" in messages and "no_name" in messages and "escaping" in messages
    plain = personalities["valid_plain"]
    assert plain.config.model_extra == {"custom_field": "kept"}
    assert personalities["artbot"].scripted and not personalities["lollms"].scripted


def test_config_can_disable_and_override() -> None:
    personalities = manager(
        personalities_config={"lollms": {"enabled": False}, "valid_plain": {"model_temperature": 0.1}}
    ).personalities
    assert "lollms" not in personalities
    assert personalities["valid_plain"].parameter_defaults() == {"temperature": 0.1}


async def test_precedence_and_anti_prompts_reach_the_binding(app_client: Any) -> None:
    async with app_client(
        paths={"personalities_folder": str(PERSONALITIES)},
        defaults={"parameters": {"temperature": 0.9, "top_p": 0.5, "max_tokens": 10}},
    ) as client:
        body = {"prompt": "hi", "personality": "echo_tuned", "parameters": {"echo_request": True, "top_k": 3}}
        response = await client.post("/api/v1/generate", json=body, headers=AUTH)
        assert response.status_code == 200, response.text
        assert response.json()["personality"] == "echo_tuned"
        seen = json.loads(response.json()["output"][0]["data"])
        parameters = seen["parameters"]
        # server defaults < personality < request
        assert (
            parameters["top_p"] == 0.5 and parameters["temperature"] == 0.3 and parameters["max_tokens"] == 77
        )
        assert parameters["top_k"] == 3 and parameters["stop"] == ["STOPWORD"]
        assert seen["messages"][0] == {"role": "system", "content": "PERSONALITY CONDITIONING"}
        body["parameters"]["system_message"] = "REQUEST SYSTEM"
        seen = json.loads(
            (await client.post("/api/v1/generate", json=body, headers=AUTH)).json()["output"][0]["data"]
        )
        assert seen["messages"][0] == {"role": "system", "content": "REQUEST SYSTEM"}
        stopped = await client.post(
            "/api/v1/generate",
            json={"prompt": "one two STOPWORD three", "personality": "echo_tuned"},
            headers=AUTH,
        )
        assert stopped.json()["output"][0]["data"] == "one two "


async def test_personality_endpoints_and_unknown(app_client: Any) -> None:
    async with app_client(paths={"personalities_folder": str(PERSONALITIES)}) as client:
        listed = (await client.get("/api/v1/list_personalities", headers=AUTH)).json()["personalities"]
        assert listed["artbot"]["scripted"] is True and listed["lollms"]["welcome_message"]
        unknown = await client.post(
            "/api/v1/generate", json={"prompt": "x", "personality": "ghost"}, headers=AUTH
        )
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "personality"


async def test_streaming_and_failing_workflows(app_client: Any) -> None:
    from tests.e2e.sse import parse_events

    async with app_client(paths={"personalities_folder": str(PERSONALITIES)}) as client:
        streamed = await client.post(
            "/api/v1/generate", json={"prompt": "go", "personality": "streamer", "stream": True}, headers=AUTH
        )
        events = parse_events(streamed.text)
        assert [event["type"] for event in events] == ["info", "chunk", "chunk", "chunk", "info", "final"]
        assert events[-1]["content"][0]["data"] == "alpha beta gamma "
        whole = await client.post(
            "/api/v1/generate", json={"prompt": "go", "personality": "streamer"}, headers=AUTH
        )
        assert whole.json()["output"][0]["data"] == "alpha beta gamma "
        failed = await client.post(
            "/api/v1/generate", json={"prompt": "go", "personality": "failing"}, headers=AUTH
        )
        assert failed.status_code == 500 and "failing" in failed.json()["error"]["message"]
        assert "secret" not in failed.text
        failed_stream = await client.post(
            "/api/v1/generate", json={"prompt": "go", "personality": "failing", "stream": True}, headers=AUTH
        )
        kinds = [event["type"] for event in parse_events(failed_stream.text)]
        assert kinds == ["info", "error"] and "secret" not in failed_stream.text


async def test_tool_loop_calls_a_function_and_stops_at_the_round_limit(app_client: Any) -> None:
    from tests.e2e.sse import parse_events

    call = '<tool_call>{"name": "testfns.add", "arguments": {"a": 2, "b": 3}}</tool_call>'
    async with app_client(paths={"functions_folder": str(FUNCTIONS)}, functions={"max_rounds": 3}) as client:
        listed = {
            item["name"]
            for item in (await client.get("/api/v1/list_functions", headers=AUTH)).json()["functions"]
        }
        assert {"testfns.add", "testfns.again", "utilities.calculate"} <= listed
        assert (
            "testfns.not_async" not in listed
            and "testfns.TODAY" not in listed
            and "testfns._private" not in listed
        )
        body = {"prompt": call, "functions": ["testfns.add"]}
        response = await client.post("/api/v1/generate", json=body, headers=AUTH)
        assert response.status_code == 200, response.text
        output = response.json()["output"][0]
        assert output["data"].strip() == '<tool_result name="testfns.add">5</tool_result>', output["metadata"]
        assert output["metadata"]["function_calls"] == [
            {"round": 1, "name": "testfns.add", "arguments": {"a": 2, "b": 3}, "ok": True, "result": 5}
        ]
        streamed = parse_events(
            (await client.post("/api/v1/generate", json={**body, "stream": True}, headers=AUTH)).text
        )
        assert [event["type"] for event in streamed] == ["info", "function_call", "chunk", "final"]
        looping = await client.post(
            "/api/v1/generate",
            json={
                "prompt": '<tool_call>{"name": "testfns.again", "arguments": {}}</tool_call>',
                "functions": ["testfns.again"],
            },
            headers=AUTH,
        )
        metadata = looping.json()["output"][0]["metadata"]
        assert metadata["finish_reason"] == "tool_calls_limit" and len(metadata["function_calls"]) == 3
        refused = await client.post(
            "/api/v1/generate", json={"prompt": call, "functions": ["utilities.calculate"]}, headers=AUTH
        )
        record = refused.json()["output"][0]["metadata"]["function_calls"][0]
        assert record["ok"] is False and "not available" in record["result"]
        unknown = await client.post(
            "/api/v1/generate", json={"prompt": "x", "functions": ["nope.nothing"]}, headers=AUTH
        )
        assert unknown.status_code == 404


async def test_function_arguments_are_validated_and_time_limited() -> None:
    from lollms_server.core.functions import FunctionManager

    functions = FunctionManager([FUNCTIONS], call_timeout=0.05)
    assert await functions.safe_call("testfns.add", {"a": 1, "b": 2}) == (True, 3)
    ok, message = await functions.safe_call("testfns.add", {"a": "x", "b": 2})
    assert not ok and "Invalid arguments" in message
    ok, message = await functions.safe_call("testfns.slow", {})
    assert not ok and "did not finish" in message
