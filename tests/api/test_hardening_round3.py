"""Hardening round 3 (issue 26, part B), in process: bodies that answered 500 (T3-16, deep tool
arguments, a string ``tool_choice`` function), job rows that kept their requests and the per-key
request quota (T3-08), job event stream caps (T3-19), ``/docs`` beyond loopback (T3-22)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_KEY, AUTH, GOOD_KEY

USER = {"X-API-Key": GOOD_KEY}


def deep_arguments(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"a": value}
    return value


def replayed_call(arguments: Any) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "1", "content": "done"},
        {"role": "user", "content": "thanks"},
    ]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": replayed_call(deep_arguments(5000))}),
        ("/v1/chat/completions", {"messages": replayed_call(nested(500))}),
        (
            "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"name": "name", "parameters": {}}}],
                "tool_choice": {"type": "function", "function": "name"},
            },
        ),
        ("/v1/videos", {"prompt": "a cat", "model": "a" * 300}),
    ],
    ids=["deep-argument-string", "deep-argument-object", "tool-choice-function-string", "videos-long-model"],
)
async def test_schema_valid_bodies_that_answered_500_get_400(
    app_client: Any, path: str, body: dict[str, Any]
) -> None:
    async with app_client(defaults={"ttt_binding": "echo", "ttt_model": "echo", "ttv_model": "x"}) as client:
        response = await client.post(path, json={"model": "echo", **body}, headers=AUTH)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"]
        fine = await client.post(
            "/v1/chat/completions",
            json={"model": "echo", "messages": replayed_call(deep_arguments(20))},
            headers=AUTH,
        )
        assert fine.status_code == 200, fine.text  # a reasonable depth is still accepted


async def test_ollama_chat_with_deep_tool_arguments_is_400(app_client: Any) -> None:
    async with app_client() as client:
        messages = [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "f", "arguments": nested(500)}}],
            },
            {"role": "user", "content": "thanks"},
        ]
        response = await client.post(
            "/api/chat", json={"model": "echo", "messages": messages, "stream": False}, headers=AUTH
        )
        assert response.status_code == 400, response.text
        assert "deep" in response.json()["error"]


def request_json_of(database: Path, job_id: str) -> str:
    with sqlite3.connect(database) as connection:
        (value,) = connection.execute(
            "select request_json from lollms_jobs where id = ?", (job_id,)
        ).fetchone()
    return str(value)


async def wait_finished(client: Any, job_id: str) -> dict[str, Any]:
    for _ in range(400):
        view: dict[str, Any] = (await client.get(f"/api/v1/jobs/{job_id}", headers=USER)).json()
        if view["status"] not in ("queued", "running"):
            return view
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


async def test_a_finished_job_keeps_no_request_and_unfinished_requests_have_a_quota(
    app_client: Any, tmp_path: Path
) -> None:
    """T3-08: jobs that fail when run once kept their whole request (uploads included) for
    ``result_ttl_hours``, and nothing counted request bytes."""
    upload = {"type": "image", "role": "input_image", "data": "A" * 400_000}
    failing = {
        "input_data": [{"type": "text", "role": "user_prompt", "data": "hi"}, upload],
        "binding_name": "echo",
        "parameters": {"fail_after": 0},  # the echo binding fails when the job runs
    }
    async with app_client(
        jobs={"poll_seconds": 0.1, "max_request_mb_per_key": 1.0, "concurrency": 1}
    ) as client:
        job_id = (await client.post("/api/v1/jobs", json=failing, headers=USER)).json()["job_id"]
        view = await wait_finished(client, job_id)
        assert view["status"] == "failed", view
        assert len(request_json_of(tmp_path / "jobs.db", job_id)) < 100  # dropped once finished

        # a slow job runs; two more wait behind it with their uploads
        slow = {"prompt": "w " * 40, "binding_name": "echo", "parameters": {"delay": 0.25}}
        running = (await client.post("/api/v1/jobs", json=slow, headers=USER)).json()["job_id"]
        waiting = {"prompt": "x", "binding_name": "echo", "input_data": [upload]}
        accepted = [await client.post("/api/v1/jobs", json=waiting, headers=USER) for _ in range(2)]
        assert [response.status_code for response in accepted] == [202, 202]
        refused = await client.post("/api/v1/jobs", json=waiting, headers=USER)
        assert refused.status_code == 429, refused.text
        assert "max_request_mb_per_key" in refused.json()["error"]["message"]
        other_key = await client.post("/api/v1/jobs", json=waiting, headers={"X-API-Key": ADMIN_KEY})
        assert other_key.status_code == 202  # another key's requests do not count
        whole = {**waiting, "input_data": [{**upload, "data": "A" * 1_200_000}]}
        too_big = await client.post("/api/v1/jobs", json=whole, headers=USER)
        assert too_big.status_code == 413, too_big.text

        await client.delete(f"/api/v1/jobs/{running}", headers=USER)
        for response in accepted:
            await wait_finished(client, response.json()["job_id"])
        again = await client.post("/api/v1/jobs", json=waiting, headers=USER)
        assert again.status_code == 202, again.text  # finished jobs hold no request any more
        await wait_finished(client, again.json()["job_id"])


async def test_docs_are_served_by_default_only_on_loopback(app_client: Any) -> None:
    """T3-22: the OpenAPI pages mapped every route of a server listening on all interfaces."""
    async with app_client(server={"host": "0.0.0.0", "auto_install_requirements": False}) as client:
        assert (await client.get("/docs")).status_code in (401, 404)
        assert (await client.get("/openapi.json")).status_code in (401, 404)
    async with app_client(
        server={"host": "0.0.0.0", "docs": True, "auto_install_requirements": False}
    ) as client:
        assert (await client.get("/openapi.json")).status_code == 200
    async with app_client(server={"host": "127.0.0.1", "auto_install_requirements": False}) as client:
        assert (await client.get("/openapi.json")).status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/messages",
            {
                "max_tokens": 4,
                "messages": [
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": nested(500)}],
                    },
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}],
                    },
                ],
            },
        ),
        (
            "/v1/responses",
            {
                "input": [
                    {"role": "user", "content": "hi"},
                    {
                        "type": "function_call",
                        "call_id": "c1",
                        "name": "f",
                        "arguments": deep_arguments(5000),
                    },
                    {"type": "function_call_output", "call_id": "c1", "output": "ok"},
                ]
            },
        ),
    ],
    ids=["anthropic-tool-use-input", "responses-function-call-arguments"],
)
async def test_deep_replayed_tool_calls_of_the_agent_families_are_400(
    app_client: Any, path: str, body: dict[str, Any]
) -> None:
    async with app_client(defaults={"ttt_binding": "echo", "ttt_model": "echo"}) as client:
        response = await client.post(path, json={"model": "echo", **body}, headers=AUTH)
        assert response.status_code == 400, response.text
        assert "levels deep" in response.text
