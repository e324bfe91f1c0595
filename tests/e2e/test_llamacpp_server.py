"""End to end: a real ``lollms-server`` process serving a tiny GGUF through llamacpp_binding."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, AUTH, ServerProcess, running_server
from tests.e2e.sse import aiter_events, parse_events

pytestmark = pytest.mark.e2e

LLM = {"binding_name": "llm", "model_name": "tiny.gguf"}


def generate_body(prompt: str = "Hello there", stream: bool = False, **parameters: Any) -> dict[str, Any]:
    return {
        "input_data": [{"type": "text", "role": "user_prompt", "data": prompt}],
        "stream": stream,
        "parameters": {"max_tokens": 16, **parameters},
        **LLM,
    }


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory: pytest.TempPathFactory, models_folder: Path) -> Iterator[ServerProcess]:
    pools = {"default": {"limit": 1, "queue_size": 16, "queue_timeout": 60}}
    with running_server(
        tmp_path_factory.mktemp("llm-server"), models_folder, resource_manager={"pools": pools}
    ) as s:
        yield s


def status(server: ServerProcess) -> dict[str, Any]:
    response = httpx.get(server.url + "/api/v1/status", headers=AUTH, timeout=10)
    assert response.status_code == 200
    pool: dict[str, Any] = response.json()["pools"][0]
    return pool


def test_non_streamed_generation(llm_server: ServerProcess) -> None:
    response = httpx.post(
        llm_server.url + "/api/v1/generate", json=generate_body(seed=3), headers=AUTH, timeout=60
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["x-request-id"] == body["request_id"]
    [output] = body["output"]
    assert output["type"] == "text" and isinstance(output["data"], str) and output["data"]
    metadata = output["metadata"]
    assert metadata["binding"] == "llm" and metadata["model"] == "tiny.gguf"
    assert metadata["parameters"]["max_tokens"] == 16 and metadata["seed"] == 3
    assert set(metadata["timings"]) == {
        "queue_wait",
        "load",
        "compute",
        "total",
        "slot_granted_at",
        "compute_finished_at",
    }
    assert metadata["usage"]["completion_tokens"] >= 1  # may pass max_tokens to finish a UTF-8 char
    assert metadata["finish_reason"] in ("stop", "length")


def test_same_seed_same_text(llm_server: ServerProcess) -> None:
    texts = {
        httpx.post(
            llm_server.url + "/api/v1/generate",
            json=generate_body(seed=7, temperature=0.9),
            headers=AUTH,
            timeout=60,
        ).json()["output"][0]["data"]
        for _ in range(2)
    }
    assert len(texts) == 1


def test_sse_framing_and_event_order(llm_server: ServerProcess) -> None:
    response = httpx.post(
        llm_server.url + "/api/v1/generate",
        json=generate_body(stream=True, ignore_eos=True),
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_events(response.text)
    kinds = [event["type"] for event in events]
    assert kinds[0] == "info" and kinds[-1] == "final"
    assert set(kinds[1:-1]) == {"chunk"} and len(kinds) >= 3
    streamed = "".join(event["content"] for event in events if event["type"] == "chunk")
    [final] = events[-1]["content"]
    assert final["data"] == streamed and final["metadata"]["finish_reason"] == "length"
    assert final["metadata"]["usage"]["completion_tokens"] >= 16


def test_stop_sequence_and_max_tokens(llm_server: ServerProcess) -> None:
    body = generate_body(seed=1, max_tokens=40, ignore_eos=True, stream=True)
    events = parse_events(
        httpx.post(llm_server.url + "/api/v1/generate", json=body, headers=AUTH, timeout=60).text
    )
    pieces = [event["content"] for event in events if event["type"] == "chunk"]
    text = "".join(pieces)
    # a stop string that is one whole token, after a few tokens
    stop = next(piece for piece in pieces[3:] if piece.strip() and piece.isascii() and len(piece) >= 2)
    body["parameters"]["stop"] = [stop]
    body["stream"] = False
    stopped = httpx.post(llm_server.url + "/api/v1/generate", json=body, headers=AUTH, timeout=60).json()[
        "output"
    ][0]
    assert stop not in stopped["data"] and text.startswith(stopped["data"])
    assert len(stopped["data"]) < len(text)
    assert stopped["metadata"]["finish_reason"] == "stop"


def test_tokenize_round_trip(llm_server: ServerProcess) -> None:
    text = "Hello world! Grüße, ça va? こんにちは"
    tokens = httpx.post(
        llm_server.url + "/api/v1/tokenize", json={"text": text, **LLM}, headers=AUTH, timeout=30
    ).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0
    back = httpx.post(
        llm_server.url + "/api/v1/detokenize",
        json={"tokens": tokens["tokens"], **LLM},
        headers=AUTH,
        timeout=30,
    ).json()
    assert back["text"] == text
    count = httpx.post(
        llm_server.url + "/api/v1/count_tokens", json={"text": text, **LLM}, headers=AUTH, timeout=30
    )
    assert count.json() == {"count": tokens["count"]}
    bad = httpx.post(
        llm_server.url + "/api/v1/detokenize", json={"tokens": [10**9], **LLM}, headers=AUTH, timeout=30
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"


def test_model_listing_and_info(llm_server: ServerProcess) -> None:
    models = httpx.get(llm_server.url + "/api/v1/list_available_models/llm", headers=AUTH, timeout=30).json()
    assert {"tiny.gguf", "tiny2.gguf"} <= {model["name"] for model in models["models"]}
    scanned = httpx.get(llm_server.url + "/api/v1/list_models", headers=AUTH, timeout=30).json()
    assert scanned["models"]["llamacpp_binding"] == ["slow.gguf", "tiny.gguf", "tiny2.gguf", "tiny3.gguf"]
    httpx.post(llm_server.url + "/api/v1/generate", json=generate_body(), headers=AUTH, timeout=60)
    info = httpx.get(
        llm_server.url + "/api/v1/get_model_info/llm",
        params={"model_name": "tiny.gguf"},
        headers=AUTH,
        timeout=30,
    ).json()
    assert info["context_size"] == 4096 and info["loaded"] is True and info["has_chat_template"] is True


@pytest.mark.parametrize(
    ("change", "status_code", "param"),
    [
        ({"binding_name": "nope"}, 404, "binding_name"),
        ({"model_name": "missing.gguf"}, 404, "model_name"),
        ({"model_name": "../../etc/passwd"}, 400, "model_name"),
        ({"model_name": "/etc/passwd"}, 400, "model_name"),
        ({"model_name": "sub/../../tiny.gguf"}, 400, "model_name"),
    ],
)
def test_unknown_and_escaping_names(
    llm_server: ServerProcess, change: dict[str, str], status_code: int, param: str
) -> None:
    for stream in (False, True):
        body = {**generate_body(stream=stream), **change}
        response = httpx.post(llm_server.url + "/api/v1/generate", json=body, headers=AUTH, timeout=30)
        assert response.status_code == status_code, response.text
        assert response.json()["error"]["param"] == param
        assert "Traceback" not in response.text


async def test_concurrent_requests_are_served_fifo_one_at_a_time(llm_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=llm_server.url, headers=AUTH, timeout=120) as client:

        async def one(index: int) -> dict[str, Any]:
            # the first one runs long enough for the seven others to queue behind it
            tokens = 3000 if index == 0 else 32
            body = generate_body(prompt=f"request {index}", stream=True, max_tokens=tokens, ignore_eos=True)
            async with client.stream("POST", "/api/v1/generate", json=body) as response:
                assert response.status_code == 200
                async for event in aiter_events(response):
                    if event["type"] == "final":
                        timings: dict[str, Any] = event["content"][0]["metadata"]["timings"]
                        return timings
            raise AssertionError("stream ended without a final event")

        served_before = (await asyncio.to_thread(status, llm_server))["served"]
        tasks = []
        for index in range(8):
            tasks.append(asyncio.create_task(one(index)))
            # let this request reach the pool before the next is sent, so arrival order is known
            for _ in range(500):
                pool = await asyncio.to_thread(status, llm_server)
                if pool["served"] + pool["queued"] >= index + 1 + served_before:
                    break
                await asyncio.sleep(0.002)
        results = await asyncio.gather(*tasks)
    granted = [timings["slot_granted_at"] for timings in results]
    assert granted == sorted(granted), "slots were not granted in arrival (FIFO) order"
    for earlier, later in zip(results, results[1:], strict=False):
        assert earlier["compute_finished_at"] <= later["slot_granted_at"], "generations overlapped (limit 1)"
    assert all(timings["queue_wait"] > 0 for timings in results[1:]), "the later requests did not queue"


def test_disconnect_mid_stream_frees_slot(llm_server: ServerProcess) -> None:
    body = {**generate_body(stream=True, max_tokens=4000, ignore_eos=True), "model_name": "slow.gguf"}
    with httpx.Client(base_url=llm_server.url, headers=AUTH, timeout=60) as client:
        with client.stream("POST", "/api/v1/generate", json=body) as response:
            chunks = 0
            for line in response.iter_lines():
                if line.startswith("data: ") and '"chunk"' in line:
                    chunks += 1
                    if chunks == 3:
                        assert status(llm_server)["active"] == 1  # still generating
                        break  # leaving the stream closes the connection
    left = time.monotonic()
    while status(llm_server)["active"] != 0:
        assert time.monotonic() - left < 1.0, "slot not freed within a second"
        time.sleep(0.02)
    after = httpx.post(llm_server.url + "/api/v1/generate", json=generate_body(), headers=AUTH, timeout=60)
    assert after.status_code == 200


def test_disconnect_during_a_non_streamed_generation_frees_slot(llm_server: ServerProcess) -> None:
    body = {**generate_body(max_tokens=4000, ignore_eos=True), "model_name": "slow.gguf"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            llm_server.url + "/api/v1/generate", json=body, headers=AUTH, timeout=httpx.Timeout(60, read=1.0)
        )
    left = time.monotonic()
    while status(llm_server)["active"] != 0:
        assert time.monotonic() - left < 1.0, "slot not freed within a second"
        time.sleep(0.02)


def test_tool_call_through_llama_cpp_function_calling_format(
    tmp_path_factory: pytest.TempPathFactory, models_folder: Path
) -> None:
    from tests.conftest import TESTS

    llama = {
        "type": "llamacpp_binding",
        "n_ctx": 2048,
        "n_threads": 1,
        "chat_format": "chatml-function-calling",
    }
    with running_server(
        tmp_path_factory.mktemp("tools"),
        models_folder,
        paths={"functions_folder": str(TESTS / "fixtures" / "functions")},
        bindings={"echo": {"type": "scripted_binding"}, "llm_tools": llama},
        functions={"max_rounds": 2},
    ) as server:
        body = {
            "prompt": "add 2 and 3",
            "binding_name": "llm_tools",
            "model_name": "tiny.gguf",
            "functions": ["testfns.add"],
            "parameters": {"tool_choice": "testfns.add", "max_tokens": 256, "seed": 1},
        }
        response = httpx.post(server.url + "/api/v1/generate", json=body, headers=AUTH, timeout=120)
        assert response.status_code == 200, response.text
        metadata = response.json()["output"][0]["metadata"]
        first = metadata["function_calls"][0]
        assert first["name"] == "testfns.add" and first["ok"] is True, first
        assert first["result"] == first["arguments"]["a"] + first["arguments"]["b"]
        assert metadata["finish_reason"] in ("stop", "tool_calls_limit")
