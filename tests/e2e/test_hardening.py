"""End to end, from the triggers of the hardening findings: no request can freeze, starve or
exhaust the server."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import AUTH, ServerProcess, running_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("hardening")
    with running_server(
        folder,
        None,
        server={"send_timeout": 1.0},
        resource_manager={
            "generation_timeout": 6,
            "pools": {"default": {"limit": 2}, "p1": {"limit": 1, "queue_size": 4, "queue_timeout": 1}},
        },
        bindings={
            "echo": {"type": "scripted_binding"},
            "p1_echo": {"type": "scripted_binding", "pool": "p1", "model_name": "echo"},
        },
    ) as process:
        yield process


def pool_status(server: ServerProcess, name: str) -> dict[str, Any]:
    pools = httpx.get(server.url + "/api/v1/status", headers=AUTH, timeout=10).json()["pools"]
    found: dict[str, Any] = next(pool for pool in pools if pool["name"] == name)
    return found


def stalled_stream(server: ServerProcess, body: dict[str, Any]) -> socket.socket:
    """Send a streamed generation on a raw socket with a tiny receive buffer, and never read."""
    address = urlsplit(server.url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((address.hostname, address.port))
    payload = json.dumps(body).encode()
    head = (
        f"POST /api/v1/generate HTTP/1.1\r\nHost: {address.netloc}\r\nX-API-Key: {AUTH['X-API-Key']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    return sock


def test_a_client_that_stops_reading_gives_its_slot_back(server: ServerProcess) -> None:
    words = " ".join(f"w{index}" for index in range(100_000))  # megabytes of events
    sock = stalled_stream(server, {"prompt": words, "binding_name": "p1_echo", "stream": True})
    try:
        deadline = time.monotonic() + 10
        while pool_status(server, "p1")["active"] == 0:  # the stream starts and holds the slot
            assert time.monotonic() < deadline, "the stream never started"
            time.sleep(0.05)
        started = time.monotonic()
        while pool_status(server, "p1")["active"] != 0:
            assert time.monotonic() - started < 5, "a client that stopped reading still holds the slot"
            time.sleep(0.1)
        # the pool serves others again, while the stalled socket is still open
        answer = httpx.post(
            server.url + "/api/v1/generate",
            json={"prompt": "after the stall", "binding_name": "p1_echo"},
            headers=AUTH,
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
    finally:
        sock.close()
