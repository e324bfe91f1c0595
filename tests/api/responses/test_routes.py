"""The /v1/responses routes in process, on the scripted echo binding."""

from __future__ import annotations

from typing import Any

from tests.conftest import AUTH, GOOD_KEY


async def test_without_jobs_nothing_is_stored(app_client: Any) -> None:
    async with app_client(jobs={"enabled": False}) as client:
        answer = await client.post("/v1/responses", json={"model": "echo", "input": "a b"}, headers=AUTH)
        assert answer.status_code == 200 and answer.json()["store"] is False
        response_id = answer.json()["id"]
        assert (await client.get(f"/v1/responses/{response_id}", headers=AUTH)).status_code == 404
        follow = {"model": "echo", "input": "c", "previous_response_id": response_id}
        refused = await client.post("/v1/responses", json=follow, headers=AUTH)
        assert refused.status_code == 404 and refused.json()["error"]["param"] == "previous_response_id"


async def test_stored_responses_belong_to_their_key(app_client: Any) -> None:
    async with app_client() as client:
        answer = (
            await client.post("/v1/responses", json={"model": "echo", "input": "a b"}, headers=AUTH)
        ).json()
        assert answer["store"] is True and answer["output"][0]["content"][0]["text"] == "a b "
        got = await client.get(f"/v1/responses/{answer['id']}", headers=AUTH)
        assert got.status_code == 200 and got.json() == answer
        other = {"X-API-Key": GOOD_KEY}
        assert (await client.get(f"/v1/responses/{answer['id']}", headers=other)).status_code == 404
        assert (await client.delete(f"/v1/responses/{answer['id']}", headers=other)).status_code == 404
        deleted = await client.delete(f"/v1/responses/{answer['id']}", headers=AUTH)
        assert deleted.json() == {"id": answer["id"], "object": "response", "deleted": True}
        assert (await client.get(f"/v1/responses/{answer['id']}", headers=AUTH)).status_code == 404


async def test_a_background_response_needs_the_jobs_store_and_no_stream(app_client: Any) -> None:
    async with app_client(jobs={"enabled": False}) as client:
        body = {"model": "echo", "input": "a", "background": True}
        refused = await client.post("/v1/responses", json=body, headers=AUTH)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "background"
    async with app_client() as client:
        for extra in ({"stream": True}, {"store": False}):
            refused = await client.post("/v1/responses", json={**body, **extra}, headers=AUTH)
            assert refused.status_code == 400 and refused.json()["error"]["type"] == "invalid_request_error"


def tokens_of(metrics: str, key: str) -> float:
    line = f'lollms_tokens_generated_total{{binding="echo",key="{key}"}} '
    return sum(float(row[len(line) :]) for row in metrics.splitlines() if row.startswith(line))


async def test_tool_turns_count_their_tokens_like_every_generation(app_client: Any) -> None:
    """An auto turn (the tool loop's single turn) is in the metrics and the key's token quota."""
    async with app_client() as client:
        tools = [{"type": "function", "name": "f", "parameters": {"type": "object"}}]
        before = tokens_of((await client.get("/metrics", headers=AUTH)).text, "admin")
        body = {"model": "echo", "input": "one two three", "tools": tools}
        answer = await client.post("/v1/responses", json=body, headers=AUTH)
        assert answer.status_code == 200 and answer.json()["usage"]["output_tokens"] == 3
        after = tokens_of((await client.get("/metrics", headers=AUTH)).text, "admin")
        assert after - before == 3
