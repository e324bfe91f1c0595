"""Replays of the exact requests Continue and Open WebUI send to an Ollama server, at start-up
and for one chat turn, against a running lollms_server; every one must be answered in the way
the client's code reads it.

Written from their public source:
- Continue: ``core/llm/llms/Ollama.ts`` (continuedev/continue): the constructor's
  ``POST api/show {"name": model}`` (it parses ``parameters`` line by line with
  ``/^(\\S+)\\s+((?:".*")|\\S+)$/`` and looks for ``.Suffix`` in ``template`` to decide on
  fill-in-the-middle), ``listModels`` (``GET api/tags``, ``models[].name``), ``_streamChat``
  (``POST api/chat`` with ``options`` from ``_getModelFileParams``, ``keep_alive: 1800``; with
  tools ``stream: false``), ``_streamComplete`` (``POST api/generate`` with ``raw``) and
  ``_embed`` (``POST api/embed {"model", "input": [...]}``, ``embeddings``). The key travels
  as ``Authorization: Bearer``.
- Open WebUI: ``backend/open_webui/routers/ollama.py`` (open-webui/open-webui):
  ``verify_connection`` (``GET /api/version``, the version parsed by
  ``re.sub(r"^v|-.*", "", version)``), ``get_all_models`` (``GET /api/tags``, ``models[].model``,
  then ``GET /api/ps`` whose ``expires_at`` goes through ``datetime.fromisoformat``),
  ``generate_chat_completion`` (a name without ``:`` gets ``:latest``; ``POST /api/chat`` with
  ``GenerateChatCompletionForm`` fields, NDJSON relayed), ``unload_model``
  (``POST /api/generate {"model", "keep_alive": 0, "prompt": ""}``) and ``send_post_request``
  (an error answer's JSON ``error`` is shown to the user). The key: ``Authorization: Bearer``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.e2e.ollama_server import BEARER, ollama_test_server

pytestmark = pytest.mark.e2e

JSON = {**BEARER, "Content-Type": "application/json"}
CONTINUE_PARAMETER_LINE = re.compile(r'^(\S+)\s+((?:".*")|\S+)$')


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_folder: Path) -> Iterator[ServerProcess]:
    with ollama_test_server(tmp_path_factory, models_folder) as process:
        yield process


def post(server: ServerProcess, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + path, content=json.dumps(body), headers=JSON, timeout=120)


def ndjson(server: ServerProcess, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream(
        "POST", server.url + path, content=json.dumps(body), headers=JSON, timeout=120
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(text) for text in response.iter_lines() if text.strip()]


def test_continue_start_up_and_one_chat_turn(server: ServerProcess) -> None:
    model = "llm/tiny.gguf"
    # start-up: the constructor asks for the model's parameters and template
    shown = post(server, "/api/show", {"name": model})
    assert shown.status_code == 200, shown.text
    body = shown.json()
    for line in body["parameters"].split("\n"):
        assert CONTINUE_PARAMETER_LINE.match(line), line  # Continue throws on a line that does not match
    assert int(CONTINUE_PARAMETER_LINE.match(body["parameters"]).group(2)) == 2048  # type: ignore[union-attr]
    assert ".Suffix" not in body["template"]  # no FIM for this model: autocomplete uses raw generate
    # "AUTODETECT" lists the models
    tags = httpx.get(server.url + "/api/tags", headers=JSON, timeout=30)
    assert tags.status_code == 200 and model + ":latest" in [item["name"] for item in tags.json()["models"]]

    # one chat turn (streamed)
    options = {"temperature": 0.7, "top_k": 40, "num_predict": 8, "stop": ["<|im_end|>"], "num_ctx": 2048}
    lines = ndjson(
        server,
        "/api/chat",
        {
            "model": model,
            "messages": [
                {"role": "system", "content": "You are a coding assistant."},
                {"role": "user", "content": "Write hello world"},
            ],
            "options": options,
            "keep_alive": 1800,
            "stream": True,
        },
    )
    assert all("error" not in item and item["message"]["role"] == "assistant" for item in lines)
    assert lines[-1]["done"] is True and all(item["done"] is False for item in lines[:-1])

    # the same turn with tools: Continue sends stream false and reads message.tool_calls
    call = '<tool_call>{"name": "read_file", "arguments": {"filepath": "a.py"}}</tool_call>'
    tool = {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file",
            "parameters": {"type": "object", "properties": {"filepath": {"type": "string"}}},
        },
    }
    answer = post(
        server,
        "/api/chat",
        {
            "model": "echo/echo",
            "messages": [{"role": "user", "content": call}],
            "options": options,
            "keep_alive": 1800,
            "stream": False,
            "tools": [tool],
        },
    )
    assert answer.status_code == 200, answer.text
    [tool_call] = answer.json()["message"]["tool_calls"]
    assert tool_call["function"] == {"index": 0, "name": "read_file", "arguments": {"filepath": "a.py"}}

    # autocomplete without FIM, and embeddings for the codebase index
    completion = ndjson(
        server,
        "/api/generate",
        {
            "model": model,
            "prompt": "def main(",
            "raw": True,
            "options": options,
            "keep_alive": 1800,
            "stream": True,
        },
    )
    assert all("response" in item for item in completion) and completion[-1]["done"]
    embedded = post(server, "/api/embed", {"model": "hf/tiny-embedder", "input": ["def a(): pass", "b = 1"]})
    assert embedded.status_code == 200 and len(embedded.json()["embeddings"]) == 2


def test_open_webui_start_up_and_one_chat_turn(server: ServerProcess) -> None:
    # start-up: the connection check, the model list and the loaded models
    version = httpx.get(server.url + "/api/version", headers=JSON, timeout=30)
    assert version.status_code == 200
    assert all(part.isdigit() for part in re.sub(r"^v|-.*", "", version.json()["version"]).split("."))
    tags = httpx.get(server.url + "/api/tags", headers=JSON, timeout=30).json()
    models = {item["model"]: item for item in tags["models"]}
    assert "llm:latest" in models and "llm/tiny.gguf:latest" in models
    post(server, "/api/generate", {"model": "llm:latest", "prompt": "", "stream": False})  # load one
    loaded = httpx.get(server.url + "/api/ps", headers=JSON, timeout=30).json()["models"]
    expires = {item["name"]: datetime.fromisoformat(item["expires_at"]) for item in loaded}
    assert "llm/tiny.gguf:latest" in expires and all(when.tzinfo is not None for when in expires.values())

    # one chat turn: the name picked from the list (Open WebUI adds ":latest" to a bare name)
    lines = ndjson(
        server,
        "/api/chat",
        {
            "model": "llm:latest",
            "messages": [{"role": "user", "content": "Hello!"}],
            "stream": True,
            "options": {"temperature": 0.8, "num_predict": 8, "seed": 1},
        },
    )
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] >= 1
    assert {"total_duration", "load_duration", "prompt_eval_count", "eval_duration"} <= set(lines[-1])
    # its title generation: the same route, not streamed
    title = post(
        server,
        "/api/chat",
        {"model": "llm:latest", "messages": [{"role": "user", "content": "Title?"}], "stream": False},
    )
    assert title.status_code == 200 and isinstance(title.json()["message"]["content"], str)

    # an unknown model: the error text is shown to the user
    missing = post(
        server, "/api/chat", {"model": "ghost:latest", "messages": [{"role": "user", "content": "x"}]}
    )
    assert missing.status_code == 404 and "ghost" in missing.json()["error"]
    # the model menu's "unload"
    unloaded = post(server, "/api/generate", {"model": "llm:latest", "keep_alive": 0, "prompt": ""})
    assert unloaded.status_code == 200 and unloaded.json()["done_reason"] == "unload"
    loaded = httpx.get(server.url + "/api/ps", headers=JSON, timeout=30).json()["models"]
    assert "llm/tiny.gguf:latest" not in {item["name"] for item in loaded}
