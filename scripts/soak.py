"""Chaos soak: N concurrent clients mix well-behaved and hostile traffic against a lollms_server on
127.0.0.1 for a bounded time (and/or request count), then check that the server is still sound.

Traffic (weights: --mix): native /api/v1/generate JSON and streamed, /v1/chat/completions JSON
and streamed (over the tiny GGUF and the echo binding), images and speech at a lower rate, clients
that disconnect at random points (mid-wait, mid-stream), clients that stop reading a stream (a raw
socket with a small SO_RCVBUF and TCP_MAXSEG, so that the server's sends back up: read one event,
sleep without reading, close), malformed JSON, bodies over server.max_request_bytes, wrong or
missing keys. Attacks of the third hardening round: GBNF grammars nested past llama.cpp's parser
(a 400, not a segfault; also as jobs), stop lists past their bounds (400 on the native, /v1 and
Ollama routes) and at their bounds (answered), chats with an image to the llama.cpp model whose
client leaves early (the model's exclusive mode is left at once), settings changes persisted to
the config file (own server, admin key; a 409 when the instance kept generating for 10 s) and
durable jobs run to their end.

It prints the requests and counts per status code, unexpected 5xx (any 5xx but 503/504, in the
status line or in a stream's error event; 503s and 504s are counted separately), p50/p95/p99
latency per kind, the server's RSS and open file descriptors (the server process and its children,
from /proc) at start, after a warm-up and at the end, the pools' peaks during the soak and their
state at the end from GET /api/v1/status (admin key; the slowest answer of that endpoint, polled
every second, shows event-loop stalls), and a final one-line JSON summary (the last line of stdout).
Latencies count the answers that were as expected for their kind; a stalled reader's is the time
to its first event. At most --max-stalled readers stall at once (each holds a slot while it stalls).

Exit status 1 when a check fails:
  - unexpected 5xx > 0;
  - a response of the wrong class for its kind (a bad key not refused with 401/403, a malformed body
    not refused with 400/415/422, an oversized one not refused with 413, a good request refused),
    a good stream that ends without its final event, a good request that fails at the transport
    level (loopback: the server dropped it);
  - slots still held or requests still queued in any pool once the soak ends (it waits up to
    --drain-seconds, default generation_timeout + 10 s, for slots to drain);
  - --rss-check: RSS at the end above --rss-limit (default 1.10) x RSS after the warm-up. Default
    "auto": on for runs of 30 s or more, off for shorter ones (too short for the heap to settle);
  - the server it started exited.
Exit status 2: the soak could not start (server, models).

Without --url it starts its own server on tiny models built locally: a tiny GGUF (llama.cpp), the
echo `scripted_binding` of tests/fixtures/user_bindings and, when torch and diffusers are
installed, a tiny Stable Diffusion and a tiny VITS voice; its config sets a small
server.max_request_bytes (64 KiB) and resource_manager.generation_timeout (10 s).

    python scripts/soak.py --clients 32 --seconds 60
    python scripts/soak.py --clients 8 --seconds 10 --max-requests 400 --no-media
    python scripts/soak.py --url http://127.0.0.1:9601 --key KEY --admin-key ADMIN --pid PID \\
        --text-model local_llm/model.gguf --max-request-bytes 1048576 --generation-timeout 600
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from tests.processes import ServerProcess

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

KEY = "soak-generate-key-0123456789"
ADMIN_KEY = "soak-admin-key-0123456789"
OWN_MAX_REQUEST_BYTES = 64 * 1024
OWN_GENERATION_TIMEOUT = 10.0
OWN_QUEUE_TIMEOUT = 30.0
RSS_AUTO_MIN_SECONDS = 30.0
LONG_ECHO_WORDS = 16_000  # 32 KB of prompt, about 1 MB of events
LONG_TOKENS = 3500  # own server: n_ctx 4096
STALL_RCVBUF = 4096
STALL_MSS = 536  # small segments keep the server's send buffer small (loopback's MSS is 64 KB)

GOOD_KINDS = ("native", "native_stream", "chat", "chat_stream", "image", "speech")
DEFAULT_MIX = {
    "native": 12,
    "native_stream": 16,
    "chat": 12,
    "chat_stream": 16,
    "image": 3,
    "speech": 3,
    "disconnect": 10,
    "stall": 3,
    "malformed": 6,
    "oversized": 3,
    "bad_key": 6,
    "deep_grammar": 2,
    "long_stops": 2,
    "bounded_stops": 2,
    "image_disconnect": 2,
    "settings": 1,
    "job": 2,
    "job_poison": 1,
}
EXPECTED: dict[str, set[int | str]] = {
    **{kind: {200} for kind in GOOD_KINDS},
    "disconnect": {200, "cancelled"},
    "stall": {200},
    "malformed": {400, 415, 422},
    "oversized": {413},
    "bad_key": {401, 403},
    "deep_grammar": {400},
    "long_stops": {400},
    "bounded_stops": {200},
    "image_disconnect": {200, "cancelled"},
    "settings": {200, 409},  # 409: the instance kept generating for 10 s (a stalled reader's slot)
    "job": {200},  # the job succeeded
    "job_poison": {400},  # the job failed with a 400, and the server lives on
}
DEEP_GRAMMAR = "root ::= " + "(" * 20_000 + '"a"' + ")" * 20_000  # segfaulted llama.cpp (T3-01)
LONG_STOPS = ["x" + "0123456789" * 30] * 64  # past the bounds: 16 stops, 256 chars each
TINY_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFElEQVR4nGPkEpFjwAaYsIoOWgkANVwATIkpP+sAAAAASUVORK5CYII="
)
JOB_POLL_SECONDS = 0.25
ALLOWED_5XX = (503, 504)
WORDS = "the quick brown fox jumps over the lazy dog and says hello world again".split()


# ---------------------------------------------------------------- server processes (/proc)


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def resources(pid: int | None) -> dict[str, Any] | None:
    """RSS (MB) and open fds of the server process, and of it with its children."""
    if pid is None or rss_kb(pid) is None:
        return None
    tree = process_tree(pid)
    rss = [rss_kb(p) or 0 for p in tree]
    fds = [fd_count(p) or 0 for p in tree]
    return {
        "rss_mb": round(rss[0] / 1024, 1),
        "fds": fds[0],
        "tree_rss_mb": round(sum(rss) / 1024, 1),
        "tree_fds": sum(fds),
        "processes": len(tree),
    }


def listener_pid(port: int) -> int | None:
    """The process listening on ``port`` (through /proc/net/tcp*), for --url without --pid."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{parts[9]}]")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(entry.name)
        except OSError:
            continue
    return None


# ---------------------------------------------------------------- own server


def start_server(
    workdir: Path, with_media: bool, generation_timeout: float, max_request_bytes: int, overrides: list[str]
) -> ServerProcess:
    import toml

    from tests.processes import start_lollms
    from tests.tiny_models import build_tiny_gguf

    models = workdir / "models"
    build_tiny_gguf(models / "llamacpp_binding" / "tiny.gguf")
    pool = {"queue_size": 512, "queue_timeout": OWN_QUEUE_TIMEOUT}
    bindings: dict[str, Any] = {
        "llm": {"type": "llamacpp_binding", "model_name": "tiny.gguf", "n_threads": 1, "n_ctx": 4096},
        "echo": {"type": "scripted_binding", "pool": "echo"},
    }
    pools: dict[str, Any] = {"default": {"limit": 1, **pool}, "echo": {"limit": 8, **pool}}
    if with_media:
        from tests.tiny_media_models import build_tiny_stable_diffusion, build_tiny_vits

        build_tiny_stable_diffusion(models / "diffusers_binding" / "tiny-sd")
        build_tiny_vits(models / "transformers_audio_binding" / "tiny-vits")
        media = {"device": "cpu", "pool": "media"}
        bindings["images"] = {
            "type": "diffusers_binding",
            "default_steps": 2,
            "default_width": 64,
            "default_height": 64,
            **media,
        }
        bindings["speech"] = {"type": "transformers_audio_binding", **media}
        pools["media"] = {"limit": 1, **pool}
    config: dict[str, Any] = {
        "server": {"auto_install_requirements": False, "max_request_bytes": max_request_bytes},
        "logging": {"level": "INFO"},
        "paths": {
            "models_folder": str(models),
            "bindings_folder": str(REPO / "tests" / "fixtures" / "user_bindings"),
            "personalities_folder": str(workdir / "personalities"),
            "functions_folder": str(workdir / "functions"),
        },
        "security": {
            "api_keys": [
                {"key": KEY, "name": "soak", "scopes": ["generate"]},
                {"key": ADMIN_KEY, "name": "soak-admin", "scopes": ["admin"]},
            ]
        },
        "defaults": {"ttt_binding": "echo", "ttt_model": "echo"},
        "resource_manager": {"generation_timeout": generation_timeout, "pools": pools},
        "bindings": bindings,
    }
    for override in overrides:  # section.key=TOML value
        dotted, _, raw = override.partition("=")
        *sections, name = dotted.strip().split(".")
        table = config
        for section in sections:
            table = table.setdefault(section, {})
        table[name] = toml.loads(f"v = {raw}")["v"]
    return start_lollms(config, workdir, workdir / "server.log")


# ---------------------------------------------------------------- results


@dataclass
class Result:
    kind: str
    status: int | str  # HTTP status, "cancelled" (before any answer) or "transport:<error>"
    seconds: float
    request: str  # method, path and what the body was, for reports
    event_status: int | None = None  # status of a stream's error event
    complete: bool = True  # a 200 stream got its final event (or [DONE])
    request_id: str | None = None
    body: str = ""  # start of the answer, for reports
    accepted_transport: bool = False  # a transport error is an expected outcome here

    def unexpected_5xx(self) -> bool:
        for status in (self.status, self.event_status):
            if isinstance(status, int) and status >= 500 and status not in ALLOWED_5XX:
                return True
        return False

    def mismatched(self) -> bool:
        """A non-5xx answer of the wrong class for its kind."""
        if not isinstance(self.status, int) or self.status >= 500:
            return False
        if self.event_status is not None and self.event_status < 500:
            return True  # an error event in a good request's stream
        return self.status not in EXPECTED[self.kind]

    def incomplete(self) -> bool:
        return self.status == 200 and not self.complete

    def transport_failure(self) -> bool:
        return str(self.status).startswith("transport:") and not self.accepted_transport

    def failed(self) -> bool:
        return self.unexpected_5xx() or self.mismatched() or self.incomplete() or self.transport_failure()

    def good(self) -> bool:
        """The expected outcome, for the latency table."""
        return self.status in EXPECTED[self.kind] and self.complete and self.event_status is None


@dataclass
class Soak:
    url: str
    key: str
    admin_key: str
    text_models: list[str]
    image_model: str | None
    speech_model: str | None
    max_request_bytes: int | None
    request_timeout: float
    stall_seconds: float
    stall_models: list[str]
    max_stalled: int
    mix: dict[str, float]
    results: list[Result] = field(default_factory=list)
    deadline: float = 0.0
    budget: int | None = None
    issued: int = 0
    stalled: int = 0  # stalled readers now
    peaks: dict[str, dict[str, int]] = field(default_factory=dict)  # most active / queued per pool
    busy_at_end: str = ""  # the pools not idle at the end check's first look
    llama_model: str | None = None  # <instance>/<model> of a llama.cpp text model (grammar, images)
    settings_instance: str | None = None  # an instance whose settings the admin key may persist
    serial_settings: bool = True  # settings changes one at a time (see run_settings)
    settings_locks: dict[int, asyncio.Lock] = field(default_factory=dict)  # one per event loop
    slowest_status: float = 0.0  # longest GET /api/v1/status of the monitor (event loop stalls show)

    def more(self) -> bool:
        if time.monotonic() >= self.deadline or (self.budget is not None and self.issued >= self.budget):
            return False
        self.issued += 1
        return True

    def auth(self) -> dict[str, str]:
        return {"X-API-Key": self.key}


def short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def prompt_words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def text_body(
    soak: Soak, rng: random.Random, openai: bool, stream: bool, target: str | None = None, long: bool = False
) -> dict[str, Any]:
    """A native or a chat body for ``target`` (default: one of the text models); ``long``: an
    answer of hundreds of KB (thousands of events), to back up a reader that stops reading."""
    target = target or rng.choice(soak.text_models)
    instance, _, model = target.partition("/")
    if long and instance == "echo":  # the echo binding streams the prompt back, word by word
        prompt = " ".join(rng.choice("abcdefghij") for _ in range(LONG_ECHO_WORDS))
    else:
        prompt = prompt_words(rng, rng.randint(3, 40))
    max_tokens = LONG_TOKENS if long else rng.randint(8, 64)
    if openai:
        return {
            "model": target,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "stream": stream,
        }
    return {
        "input_data": [{"type": "text", "role": "user_prompt", "data": prompt}],
        "binding_name": instance,
        "model_name": model or None,
        "stream": stream,
        "parameters": {"max_tokens": max_tokens, "ignore_eos": True},
    }


def shortened(value: Any) -> Any:
    """``value`` with long strings and lists cut (a deep grammar or a stop list in a report)."""
    if isinstance(value, str):
        return short(value, 40)
    if isinstance(value, dict):
        return {key: shortened(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shortened(item) for item in value[:4]] + (
            [f"<{len(value) - 4} more>"] if len(value) > 4 else []
        )
    return value


def describe(method: str, path: str, body: Any) -> str:
    if isinstance(body, dict):
        summary = {k: shortened(v) for k, v in body.items() if k != "input_data"}
        if "input_data" in body:
            summary["input_data"] = f"<{len(json.dumps(body['input_data']))} bytes>"
        if "messages" in body:
            summary["messages"] = f"<{len(json.dumps(body['messages']))} bytes>"
        return f"{method} {path} {json.dumps(summary)}"
    return f"{method} {path} {body}"


# ---------------------------------------------------------------- the kinds of client


async def request_json(
    soak: Soak,
    http: httpx.AsyncClient,
    kind: str,
    path: str,
    body: dict[str, Any],
    seen: dict[str, Any],
) -> Result:
    started = time.monotonic()
    label = describe("POST", path, body)
    seen["request"] = label
    response = await http.post(path, json=body, headers=soak.auth())
    seen["status"] = response.status_code
    result = Result(kind, response.status_code, time.monotonic() - started, label)
    result.request_id = response.headers.get("x-request-id")
    if response.status_code != 200:
        result.body = short(response.text)
    elif kind == "speech" and path.startswith("/v1/"):
        result.complete = response.content[:4] == b"RIFF"
    else:
        try:
            answer = response.json()
        except ValueError:
            result.complete, result.body = False, short(response.text)
        else:
            result.complete = bool(answer.get("output") or answer.get("choices") or answer.get("data"))
            if not result.complete:
                result.body = short(response.text)
    return result


async def request_stream(
    soak: Soak,
    http: httpx.AsyncClient,
    kind: str,
    path: str,
    body: dict[str, Any],
    seen: dict[str, Any],
    stop_after_events: int | None = None,
) -> Result:
    """A streamed request read to its end (or cut after ``stop_after_events`` events)."""
    started = time.monotonic()
    label = describe("POST", path, body)
    seen["request"] = label
    openai = path.startswith("/v1/")
    async with http.stream("POST", path, json=body, headers=soak.auth()) as response:
        seen["status"] = response.status_code
        result = Result(kind, response.status_code, 0.0, label, complete=False)
        result.request_id = response.headers.get("x-request-id")
        if response.status_code != 200:
            result.body = short((await response.aread()).decode(errors="replace"))
            result.complete = True
            result.seconds = time.monotonic() - started
            return result
        events = 0
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            events += 1
            payload = line[6:]
            if openai and payload == "[DONE]":
                result.complete = True
                break
            try:
                event = json.loads(payload)
            except ValueError:
                result.body = short(payload)
                break
            if openai and "error" in event:
                result.event_status = int(event["error"].get("code") or 500)
                result.body = short(payload)
            elif not openai and event.get("type") == "final":
                result.complete = True
            elif not openai and event.get("type") == "error":
                result.event_status = int((event.get("metadata") or {}).get("status") or 500)
                result.body = short(payload)
                result.complete = True
            if stop_after_events is not None and events >= stop_after_events:
                result.complete = True  # cut on purpose
                break
        result.seconds = time.monotonic() - started
        return result


async def run_text(
    soak: Soak, http: httpx.AsyncClient, rng: random.Random, kind: str, seen: dict[str, Any], **kw: Any
) -> Result:
    openai = kind.startswith("chat")
    stream = kind.endswith("_stream")
    body = text_body(soak, rng, openai, stream)
    path = "/v1/chat/completions" if openai else "/api/v1/generate"
    if stream:
        return await request_stream(soak, http, kind, path, body, seen, **kw)
    return await request_json(soak, http, kind, path, body, seen)


async def run_image(soak: Soak, http: httpx.AsyncClient, rng: random.Random, seen: dict[str, Any]) -> Result:
    model = str(soak.image_model)
    prompt = prompt_words(rng, rng.randint(2, 8))
    if rng.random() < 0.5:
        body: dict[str, Any] = {
            "model": model,
            "prompt": prompt,
            "size": "64x64",
            "response_format": "b64_json",
        }
        return await request_json(soak, http, "image", "/v1/images/generations", body, seen)
    instance, _, name = model.partition("/")
    body = {
        "generation_type": "tti",
        "binding_name": instance,
        "model_name": name or None,
        "input_data": [{"type": "text", "role": "user_prompt", "data": prompt}],
        "parameters": {"width": 64, "height": 64, "steps": 2},
    }
    return await request_json(soak, http, "image", "/api/v1/generate", body, seen)


async def run_speech(soak: Soak, http: httpx.AsyncClient, rng: random.Random, seen: dict[str, Any]) -> Result:
    model = str(soak.speech_model)
    text = prompt_words(rng, rng.randint(2, 8))
    if rng.random() < 0.5:
        body: dict[str, Any] = {"model": model, "input": text, "response_format": "wav"}
        return await request_json(soak, http, "speech", "/v1/audio/speech", body, seen)
    instance, _, name = model.partition("/")
    body = {
        "generation_type": "tts",
        "binding_name": instance,
        "model_name": name or None,
        "input_data": [{"type": "text", "role": "user_prompt", "data": text}],
    }
    return await request_json(soak, http, "speech", "/api/v1/generate", body, seen)


async def run_good(
    soak: Soak, http: httpx.AsyncClient, rng: random.Random, kind: str, seen: dict[str, Any], **kw: Any
) -> Result:
    if kind == "image":
        return await run_image(soak, http, rng, seen)
    if kind == "speech":
        return await run_speech(soak, http, rng, seen)
    return await run_text(soak, http, rng, kind, seen, **kw)


def enabled_good_kinds(soak: Soak) -> list[str]:
    kinds = ["native", "native_stream", "chat", "chat_stream"]
    return kinds + (["image"] if soak.image_model else []) + (["speech"] if soak.speech_model else [])


async def run_disconnect(soak: Soak, http: httpx.AsyncClient, rng: random.Random) -> Result:
    """A good request whose client leaves at a random point: cancelled after a random delay (in
    the queue, mid-generation or mid-stream), or a stream closed after a few events."""
    inner = rng.choice(enabled_good_kinds(soak))
    seen: dict[str, Any] = {}
    started = time.monotonic()
    if inner.endswith("_stream") and rng.random() < 0.5:
        result = await run_good(soak, http, rng, inner, seen, stop_after_events=rng.randint(1, 6))
        result.kind = "disconnect"
        return result
    task = asyncio.ensure_future(run_good(soak, http, rng, inner, seen))
    done, _ = await asyncio.wait({task}, timeout=rng.uniform(0.0, 1.5))
    if task in done:
        result = task.result()
        result.kind = "disconnect"
        return result
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except httpx.HTTPError:
        pass
    status = seen.get("status", "cancelled")
    return Result("disconnect", status, time.monotonic() - started, str(seen.get("request", inner)))


async def run_stall(soak: Soak, rng: random.Random) -> Result:
    """A raw-socket client with a small receive buffer and small segments opens a long stream,
    reads up to its first event, then sleeps without reading (the server's sends back up once
    its socket buffers are full), then closes with unread data (a reset)."""
    parsed = urllib.parse.urlsplit(soak.url)
    openai = rng.random() < 0.5
    body = text_body(soak, rng, openai, stream=True, target=rng.choice(soak.stall_models), long=True)
    path = "/v1/chat/completions" if openai else "/api/v1/generate"
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {parsed.netloc}\r\nX-API-Key: {soak.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    label = describe("POST", path, body) + " (stalled reader)"
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALL_RCVBUF)  # before connect: small window
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, STALL_MSS)
    except (AttributeError, OSError):
        pass  # not on this system: the server buffers more before its sends block
    sock.setblocking(False)
    soak.stalled += 1
    started = time.monotonic()
    received = b""
    try:
        await asyncio.wait_for(
            loop.sock_connect(sock, (parsed.hostname or "127.0.0.1", parsed.port or 80)), 10
        )
        await loop.sock_sendall(sock, head.encode() + payload)
        while True:  # up to the end of the first event (or of the head of a refusal)
            head_end = received.find(b"\r\n\r\n")
            if head_end >= 0:
                if int(received.split(b" ", 2)[1]) != 200:
                    break
                first_event = received.find(b"data:", head_end)
                if first_event >= 0 and b"\n\n" in received[first_event:]:
                    break
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1024), soak.request_timeout)
            if not chunk:
                break
            received += chunk
        if b"\r\n\r\n" not in received:
            return Result("stall", "transport:closed", time.monotonic() - started, label)
        status = int(received.split(b" ", 2)[1])
        result = Result("stall", status, time.monotonic() - started, label)
        for line in received.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
            if line.lower().startswith(b"x-request-id:"):
                result.request_id = line.split(b":", 1)[1].strip().decode()
        if status == 200:  # mostly short stalls, some past the generation timeout
            longest = soak.stall_seconds if rng.random() < 0.3 else min(3.0, soak.stall_seconds)
            await asyncio.sleep(rng.uniform(0.5, longest))
        else:
            result.body = short(received.split(b"\r\n\r\n", 1)[1].decode(errors="replace"))
        return result
    except (OSError, TimeoutError, asyncio.TimeoutError, ValueError, IndexError) as exc:
        return Result("stall", f"transport:{type(exc).__name__}", time.monotonic() - started, label)
    finally:
        soak.stalled -= 1
        sock.close()


def malformed_bodies(rng: random.Random) -> tuple[bytes, str, str]:
    """(body, content type, what it is)."""
    variants: list[tuple[bytes, str, str]] = [
        (b'{"prompt": "hello", "stream": tr', "application/json", "truncated JSON"),
        (b"hello there", "application/json", "not JSON"),
        (b"", "application/json", "empty body"),
        (b"[1, 2, 3]", "application/json", "a JSON array"),
        (b'{"input_data": "x", "parameters": 5, "messages": 3}', "application/json", "wrong types"),
        (b'{"prompt": "\xff\xfe\xfa"}', "application/json", "invalid UTF-8"),
        (b"[" * 3000 + b"]" * 3000, "application/json", "nested 3000 deep"),
        (b'{"prompt": "hi", "prompt": {"a": NaN}}', "application/json", "NaN and duplicate keys"),
        (b'{"prompt": "hi"}', "text/plain", "JSON as text/plain"),
        (b'{"model": "x", "messages": [{"role": "user"}]}\x00', "application/json", "trailing NUL"),
    ]
    return rng.choice(variants)


async def run_malformed(soak: Soak, http: httpx.AsyncClient, rng: random.Random) -> Result:
    paths = ["/api/v1/generate", "/v1/chat/completions", "/api/v1/tokenize", "/v1/completions"]
    if soak.image_model:
        paths.append("/v1/images/generations")
    if soak.speech_model:
        paths.append("/v1/audio/speech")
    path = rng.choice(paths)
    content, content_type, what = malformed_bodies(rng)
    started = time.monotonic()
    label = f"POST {path} <{what}, {len(content)} bytes, {content_type}>"
    headers = {**soak.auth(), "Content-Type": content_type}
    response = await http.post(path, content=content, headers=headers)
    result = Result("malformed", response.status_code, time.monotonic() - started, label)
    result.request_id = response.headers.get("x-request-id")
    result.body = short(response.text)
    return result


async def run_oversized(soak: Soak, http: httpx.AsyncClient, rng: random.Random) -> Result:
    """A valid JSON body over max_request_bytes, with a Content-Length or chunked."""
    limit = int(soak.max_request_bytes or 0)
    size = int(limit * rng.uniform(1.05, 3.0))
    openai = rng.random() < 0.5
    body = text_body(soak, rng, openai, stream=rng.random() < 0.5)
    filler = "x" * size
    if openai:
        body["messages"][0]["content"] = filler
    else:
        body["input_data"][0]["data"] = filler
    path = "/v1/chat/completions" if openai else "/api/v1/generate"
    payload = json.dumps(body).encode()
    chunked = rng.random() < 0.5
    label = f"POST {path} <{len(payload)} bytes, {'chunked' if chunked else 'Content-Length'}>"
    headers = {**soak.auth(), "Content-Type": "application/json"}
    started = time.monotonic()

    async def pieces() -> Any:
        for offset in range(0, len(payload), 16384):
            yield payload[offset : offset + 16384]

    try:
        response = await http.post(path, content=pieces() if chunked else payload, headers=headers)
    except httpx.TransportError as exc:  # the server answered 413 and closed while we were sending
        result = Result("oversized", f"transport:{type(exc).__name__}", time.monotonic() - started, label)
        result.accepted_transport = True
        return result
    result = Result("oversized", response.status_code, time.monotonic() - started, label)
    result.request_id = response.headers.get("x-request-id")
    result.body = short(response.text)
    return result


async def run_bad_key(soak: Soak, http: httpx.AsyncClient, rng: random.Random) -> Result:
    variants = [
        ({"X-API-Key": "wrong-key-0123456789"}, "wrong X-API-Key"),
        ({}, "no key"),
        ({"Authorization": "Bearer wrong-key-0123456789"}, "wrong bearer"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "basic auth"),
        ({"X-API-Key": ""}, "empty key"),
        ({"X-API-Key": soak.key[:-1]}, "key minus one char"),
    ]
    if soak.admin_key != soak.key:
        variants.append(({"X-API-Key": soak.admin_key}, "admin-only key on generate"))
    headers, what = rng.choice(variants)
    targets: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/api/v1/generate", text_body(soak, rng, False, False)),
        ("POST", "/v1/chat/completions", text_body(soak, rng, True, rng.random() < 0.5)),
        ("POST", "/api/v1/generate", text_body(soak, rng, False, True)),
        ("GET", "/api/v1/list_bindings", None),
        ("GET", "/v1/models", None),
    ]
    if what != "admin-only key on generate":
        targets.append(("GET", "/api/v1/status", None))
    method, path, body = rng.choice(targets)
    started = time.monotonic()
    label = f"{method} {path} <{what}>"
    response = await http.request(method, path, json=body, headers=headers)
    result = Result("bad_key", response.status_code, time.monotonic() - started, label)
    result.request_id = response.headers.get("x-request-id")
    result.body = short(response.text)
    return result


# ---------------------------------------------------------------- hardening round 3 attacks


async def run_deep_grammar(soak: Soak, http: httpx.AsyncClient) -> Result:
    instance, _, model = str(soak.llama_model).partition("/")
    body = {"prompt": "x", "binding_name": instance, "model_name": model or None}
    body["parameters"] = {"grammar": DEEP_GRAMMAR, "max_tokens": 4}
    return await request_json(soak, http, "deep_grammar", "/api/v1/generate", body, {})


async def run_long_stops(soak: Soak, http: httpx.AsyncClient, rng: random.Random) -> Result:
    route = rng.choice(("native", "chat", "ollama"))
    target = rng.choice(soak.text_models)
    if route == "native":
        body = text_body(soak, rng, False, False, target)
        body["parameters"]["stop"] = LONG_STOPS
        return await request_json(soak, http, "long_stops", "/api/v1/generate", body, {})
    if route == "chat":
        body = {**text_body(soak, rng, True, False, target), "stop": LONG_STOPS}
        return await request_json(soak, http, "long_stops", "/v1/chat/completions", body, {})
    body = {
        "model": target,
        "messages": [{"role": "user", "content": prompt_words(rng, 5)}],
        "stream": False,
        "options": {"stop": LONG_STOPS, "num_predict": 8},
    }
    return await request_json(soak, http, "long_stops", "/api/chat", body, {})


async def run_bounded_stops(soak: Soak, http: httpx.AsyncClient, rng: random.Random) -> Result:
    """16 stops of 128 characters (the most a request may send), streamed: each token is matched
    against all of them."""
    body = text_body(soak, rng, False, True)
    body["parameters"]["stop"] = [f"{index:02d}" + "0123456789" * 12 + "Z" * 6 for index in range(16)]
    return await request_stream(soak, http, "bounded_stops", "/api/v1/generate", body, {})


async def run_image_disconnect(soak: Soak, http: httpx.AsyncClient, rng: random.Random) -> Result:
    """A chat with an image takes the llama.cpp model to exclusive mode; its client leaves early."""
    content = [
        {"type": "text", "text": prompt_words(rng, 4)},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + TINY_PNG}},
    ]
    body = {
        "model": soak.llama_model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": rng.randint(8, 64),
        "stream": rng.random() < 0.5,
    }
    seen: dict[str, Any] = {}
    started = time.monotonic()
    if body["stream"]:
        call = request_stream(soak, http, "image_disconnect", "/v1/chat/completions", body, seen)
    else:
        call = request_json(soak, http, "image_disconnect", "/v1/chat/completions", body, seen)
    task = asyncio.ensure_future(call)
    done, _ = await asyncio.wait({task}, timeout=rng.uniform(0.0, 1.0))
    if task in done:
        return task.result()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, httpx.HTTPError):
        pass
    label = describe("POST", "/v1/chat/completions", body)
    return Result("image_disconnect", seen.get("status", "cancelled"), time.monotonic() - started, label)


async def run_settings(soak: Soak, http: httpx.AsyncClient) -> Result:
    """An admin persists a settings change of an instance to the config file, while the traffic
    goes on. One at a time: concurrent persisted changes are finding T3-15, which answered 500s
    (tested where it is fixed); ``--concurrent-settings`` sends them at once."""
    path = f"/api/v1/bindings/{soak.settings_instance}/settings?persist=true"
    body = {"settings": {"delay": 0.0}}
    started = time.monotonic()
    if not soak.serial_settings:
        response = await http.put(path, json=body, headers={"X-API-Key": soak.admin_key})
    else:
        lock = soak.settings_locks.setdefault(id(asyncio.get_running_loop()), asyncio.Lock())
        async with lock:
            response = await http.put(path, json=body, headers={"X-API-Key": soak.admin_key})
    result = Result("settings", response.status_code, time.monotonic() - started, describe("PUT", path, body))
    result.request_id = response.headers.get("x-request-id")
    if response.status_code != 200:
        result.body = short(response.text)
    return result


async def run_job(soak: Soak, http: httpx.AsyncClient, rng: random.Random, poison: bool) -> Result:
    """A durable job, polled to its end: its status is 200 when it succeeded, else its error's
    (a poison job: a grammar that segfaulted llama.cpp, which must fail with a 400)."""
    kind = "job_poison" if poison else "job"
    target = str(soak.llama_model) if poison else rng.choice(soak.text_models)
    instance, _, model = target.partition("/")
    body: dict[str, Any] = {
        "prompt": prompt_words(rng, 6),
        "binding_name": instance,
        "model_name": model or None,
    }
    body["parameters"] = {"grammar": DEEP_GRAMMAR, "max_tokens": 4} if poison else {"max_tokens": 16}
    body["priority"] = "interactive"  # a batch job waits behind all the interactive traffic of the soak
    label = describe("POST", "/api/v1/jobs", body)
    started = time.monotonic()
    response = await http.post("/api/v1/jobs", json=body, headers=soak.auth())
    if response.status_code != 202:
        return Result(
            kind, response.status_code, time.monotonic() - started, label, body=short(response.text)
        )
    job_id = response.json()["job_id"]
    view: dict[str, Any] = {}
    while time.monotonic() - started < soak.request_timeout:
        await asyncio.sleep(JOB_POLL_SECONDS)
        polled = await http.get(f"/api/v1/jobs/{job_id}", headers=soak.auth())
        if polled.status_code != 200:
            return Result(
                kind, polled.status_code, time.monotonic() - started, label, body=short(polled.text)
            )
        view = polled.json()
        if view["status"] in ("succeeded", "failed", "cancelled"):
            break
    else:
        return Result(
            kind, "transport:job-unfinished", time.monotonic() - started, label, body=short(str(view))
        )
    error = view.get("error") or {}
    status = 200 if view["status"] == "succeeded" else int(error.get("status") or 500)
    return Result(kind, status, time.monotonic() - started, label, body=short(json.dumps(error)))


async def one_request(soak: Soak, http: httpx.AsyncClient, rng: random.Random, kind: str) -> Result:
    started = time.monotonic()
    seen: dict[str, Any] = {}
    try:
        if kind == "disconnect":
            return await run_disconnect(soak, http, rng)
        if kind == "stall":
            if soak.stalled < soak.max_stalled:
                return await run_stall(soak, rng)
            kind = rng.choice(("native_stream", "chat_stream"))  # enough stalled readers already
        if kind == "malformed":
            return await run_malformed(soak, http, rng)
        if kind == "oversized":
            return await run_oversized(soak, http, rng)
        if kind == "bad_key":
            return await run_bad_key(soak, http, rng)
        if kind == "deep_grammar":
            return await run_deep_grammar(soak, http)
        if kind == "long_stops":
            return await run_long_stops(soak, http, rng)
        if kind == "bounded_stops":
            return await run_bounded_stops(soak, http, rng)
        if kind == "image_disconnect":
            return await run_image_disconnect(soak, http, rng)
        if kind == "settings":
            return await run_settings(soak, http)
        if kind in ("job", "job_poison"):
            return await run_job(soak, http, rng, poison=kind == "job_poison")
        return await run_good(soak, http, rng, kind, seen)
    except httpx.HTTPError as exc:
        status = f"transport:{type(exc).__name__}"
        return Result(kind, status, time.monotonic() - started, str(seen.get("request", kind)), body=str(exc))


async def client_loop(soak: Soak, rng: random.Random, kinds: list[str], weights: list[float]) -> None:
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=2)
    async with httpx.AsyncClient(base_url=soak.url, timeout=soak.request_timeout, limits=limits) as http:
        while soak.more():
            kind = rng.choices(kinds, weights)[0]
            soak.results.append(await one_request(soak, http, rng, kind))


async def run_clients(soak: Soak, clients: int, seconds: float, budget: int | None, seed: int) -> float:
    kinds = [kind for kind, weight in soak.mix.items() if weight > 0]
    weights = [soak.mix[kind] for kind in kinds]
    soak.deadline = time.monotonic() + seconds
    soak.budget, soak.issued = budget, 0
    started = time.monotonic()
    monitor = asyncio.ensure_future(watch_pools(soak))
    try:
        await asyncio.gather(
            *(client_loop(soak, random.Random(seed * 1000 + i), kinds, weights) for i in range(clients))
        )
    finally:
        monitor.cancel()
        await asyncio.gather(monitor, return_exceptions=True)
    return time.monotonic() - started


async def watch_pools(soak: Soak) -> None:
    """The most active slots and queued requests each pool had (GET /api/v1/status every second)."""
    async with httpx.AsyncClient(base_url=soak.url, timeout=10) as http:
        while True:
            try:
                asked = time.monotonic()
                states = await pool_states(soak, http)
                soak.slowest_status = max(soak.slowest_status, time.monotonic() - asked)
                for pool in states:
                    peak = soak.peaks.setdefault(str(pool.get("name")), {"active": 0, "queued": 0})
                    for name in peak:
                        peak[name] = max(peak[name], int(pool.get(name) or 0))
            except (httpx.HTTPError, KeyError, ValueError):
                pass  # the end check reports a status endpoint that fails
            await asyncio.sleep(1.0)


async def warm_up(soak: Soak, clients: int, seconds: float, seed: int) -> list[Result]:
    """One of each good request (loads every model), then the full mix for ``seconds``."""
    rng = random.Random(seed)
    first: list[Result] = []
    async with httpx.AsyncClient(base_url=soak.url, timeout=soak.request_timeout) as http:
        for target in soak.text_models:
            for kind in ("native", "chat_stream"):
                single = replace(soak, text_models=[target], results=[])
                first.append(await one_request(single, http, rng, kind))
        for kind in enabled_good_kinds(soak)[4:]:
            first.append(await one_request(soak, http, rng, kind))
    await run_clients(soak, clients, seconds, None, seed + 1)
    results, soak.results = first + soak.results, []
    return results


# ---------------------------------------------------------------- the end check


async def pool_states(soak: Soak, http: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await http.get("/api/v1/status", headers={"X-API-Key": soak.admin_key})
    response.raise_for_status()
    return list(response.json()["pools"])


async def drain(soak: Soak, timeout: float) -> tuple[float, list[dict[str, Any]], str | None]:
    """Waits until every pool has no active slot and nothing queued (or ``timeout``)."""
    started = time.monotonic()
    pools: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=soak.url, timeout=10) as http:
        while True:
            try:
                pools = await pool_states(soak, http)
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                return time.monotonic() - started, pools, f"GET /api/v1/status failed: {exc!r}"
            busy = [pool for pool in pools if pool.get("active") or pool.get("queued")]
            if busy and not soak.busy_at_end:
                soak.busy_at_end = busy_text(busy)
            if not busy or time.monotonic() - started > timeout:
                return time.monotonic() - started, pools, None
            await asyncio.sleep(0.25)


def busy_text(pools: list[dict[str, Any]]) -> str:
    return ", ".join(f"{p.get('name')} active={p.get('active')} queued={p.get('queued')}" for p in pools)


# ---------------------------------------------------------------- report


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def latency_table(results: list[Result]) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for kind in DEFAULT_MIX:
        of_kind = [result for result in results if result.kind == kind]
        if not of_kind:
            continue
        latencies = [result.seconds for result in of_kind if result.good()]
        table[kind] = {
            "n": len(of_kind),
            "good": len(latencies),
            **{
                name: round(percentile(latencies, fraction) * 1000, 1)
                for name, fraction in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99))
            },
        }
    return table


def format_resources(sample: dict[str, Any] | None) -> str:
    if sample is None:
        return "n/a"
    text = f"RSS {sample['rss_mb']:.0f} MB, {sample['fds']} fds"
    if sample["processes"] > 1:
        text += (
            f" (with {sample['processes'] - 1} children: RSS {sample['tree_rss_mb']:.0f} MB,"
            f" {sample['tree_fds']} fds)"
        )
    return text


def server_log_excerpt(log: Path, request_ids: list[str], limit: int = 60) -> list[str]:
    """Lines of the server log about these requests, plus errors and tracebacks."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    picked: list[str] = []
    in_traceback = False
    for line in lines:
        if any(request_id in line for request_id in request_ids) or "ERROR" in line or "Traceback" in line:
            picked.append(line)
            in_traceback = "Traceback" in line or "ERROR" in line
        elif in_traceback and (line.startswith((" ", "\t")) or not line.strip() or "Error" in line):
            picked.append(line)
        else:
            in_traceback = False
    return picked[-limit:]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--clients", type=int, default=32, help="concurrent clients (default 32)")
    add("--seconds", type=float, default=60.0, help="length of the soak, warm-up excluded (default 60)")
    add("--max-requests", type=int, help="stop after this many requests (default: no limit)")
    add("--warmup-seconds", type=float, help="full-mix warm-up (default 15%% of --seconds, within 3-15 s)")
    add("--seed", type=int, default=0)
    add(
        "--mix",
        default="",
        help="kind=weight,... (defaults: " + ",".join(f"{k}={v}" for k, v in DEFAULT_MIX.items()) + ")",
    )
    add("--max-stalled", type=int, help="stalled readers at once (default clients / 10, at least 1)")
    add("--no-media", action="store_true", help="own server: text only (no image, no speech)")
    add("--url", help="target server (default: start one on tiny models)")
    add("--key", default=KEY, help="key with the generate scope (with --url)")
    add("--admin-key", help="key with the admin scope, for /api/v1/status (default --key)")
    add("--pid", type=int, help="server pid with --url (default: the process listening on its port)")
    add(
        "--text-model",
        action="append",
        help="<instance>/<model> for text, repeatable (own: llm/tiny.gguf, echo/echo)",
    )
    add(
        "--stall-model",
        action="append",
        help="text models stalled readers use (own: echo/echo 9 times in 10)",
    )
    add("--image-model", help="<instance>/<model> for images (own: images/tiny-sd)")
    add(
        "--llama-model",
        help="<instance>/<model> of a llama.cpp model for the grammar, image and poison-job attacks "
        "(own: llm/tiny.gguf; --url: none, those kinds off)",
    )
    add(
        "--concurrent-settings",
        action="store_true",
        help="send persisted settings changes concurrently (default: one at a time)",
    )
    add(
        "--settings-instance",
        help="instance whose 'delay' setting the admin key persists (own: echo; --url: none, off)",
    )
    add("--speech-model", help="<instance>/<model> for speech (own: speech/tiny-vits)")
    add(
        "--max-request-bytes",
        type=int,
        help="server.max_request_bytes (own: sets it, 64 KiB; --url: none, no oversized bodies)",
    )
    add(
        "--generation-timeout",
        type=float,
        help="generation_timeout (own: sets it, 10 s; --url: the server's, default 600 s)",
    )
    add("--stall-seconds", type=float, help="longest stalled read (default generation_timeout + 2 s)")
    add(
        "--drain-seconds",
        type=float,
        help="end-check wait for idle pools (default generation_timeout + 10 s)",
    )
    add(
        "--request-timeout",
        type=float,
        help="client timeout (default queue_timeout + generation_timeout + 10 s)",
    )
    add(
        "--rss-check",
        choices=("auto", "on", "off"),
        default="auto",
        help="auto (default): on when --seconds >= 30",
    )
    add("--rss-limit", type=float, default=1.10, help="largest end RSS / warm-up RSS (default 1.10)")
    add(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=TOML",
        help="own server: override a config key",
    )
    add("--keep", type=Path, help="own server: copy its config.toml and server.log into this folder")
    args = parser.parse_args()
    if args.url and not args.text_model:
        parser.error("--text-model is needed with --url")
    args.weights = {kind: float(weight) for kind, weight in DEFAULT_MIX.items()}
    for item in filter(None, args.mix.split(",")):
        kind, _, weight = item.partition("=")
        if kind not in args.weights:
            parser.error(f"unknown kind {kind!r} in --mix")
        args.weights[kind] = float(weight)
    return args


def media_available() -> bool:
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def configure(args: argparse.Namespace, process: ServerProcess | None, with_media: bool) -> Soak:
    """The soak's targets, from the server it started or from the command line."""
    if process is not None:
        url, key, admin_key = process.url, KEY, ADMIN_KEY
        text_models = args.text_model or ["llm/tiny.gguf", "echo/echo"]
        image_model = args.image_model or ("images/tiny-sd" if with_media else None)
        speech_model = args.speech_model or ("speech/tiny-vits" if with_media else None)
        max_bytes = args.max_request_bytes or OWN_MAX_REQUEST_BYTES
        args.generation_timeout = args.generation_timeout or OWN_GENERATION_TIMEOUT
        queue_timeout = OWN_QUEUE_TIMEOUT
    else:
        url, key, admin_key = args.url.rstrip("/"), args.key, args.admin_key or args.key
        text_models, image_model, speech_model = args.text_model, args.image_model, args.speech_model
        max_bytes = args.max_request_bytes
        args.generation_timeout = args.generation_timeout or 600.0
        queue_timeout = 60.0
    stall_models = args.stall_model or (
        ["echo/echo"] * 9 + [m for m in text_models if m != "echo/echo"][:1]
        if "echo/echo" in text_models
        else text_models
    )
    mix = dict(args.weights)
    if not max_bytes:
        mix["oversized"] = 0
    if urllib.parse.urlsplit(url).scheme != "http":
        mix["stall"] = 0  # the raw-socket reader speaks plain HTTP
    mix["image"] = mix["image"] if image_model else 0
    mix["speech"] = mix["speech"] if speech_model else 0
    # a llama.cpp model: the own server's, or the --llama-model named
    llama_model = args.llama_model or ("llm/tiny.gguf" if process is not None else None)
    for kind in ("deep_grammar", "image_disconnect", "job_poison"):
        mix[kind] = mix[kind] if llama_model else 0
    settings_instance = args.settings_instance or ("echo" if process is not None else None)
    mix["settings"] = mix["settings"] if settings_instance else 0
    return Soak(
        url=url,
        key=key,
        admin_key=admin_key,
        text_models=text_models,
        image_model=image_model,
        speech_model=speech_model,
        max_request_bytes=max_bytes,
        request_timeout=args.request_timeout or queue_timeout + args.generation_timeout + 10,
        stall_seconds=args.stall_seconds or args.generation_timeout + 2,
        stall_models=stall_models,
        max_stalled=args.max_stalled or max(1, args.clients // 10),
        mix=mix,
        llama_model=llama_model,
        settings_instance=settings_instance,
        serial_settings=not args.concurrent_settings,
    )


def report(
    args: argparse.Namespace,
    soak: Soak,
    process: ServerProcess | None,
    phases: dict[str, Any],
) -> bool:
    """Prints the results and the checks, then the one-line JSON summary; True when all pass."""
    results: list[Result] = phases["results"]
    warm: list[Result] = phases["warm"]
    pools: list[dict[str, Any]] = phases["pools"]
    samples: dict[str, dict[str, Any] | None] = phases["resources"]
    elapsed, drain_time = phases["elapsed"], phases["drain_time"]
    statuses = Counter(str(result.status) for result in results)
    event_statuses = Counter(str(r.event_status) for r in results if r.event_status is not None)
    unexpected = [result for result in results if result.unexpected_5xx()]
    mismatched = [result for result in results if result.mismatched()]
    incomplete = [result for result in results if result.incomplete()]
    transport = [result for result in results if result.transport_failure()]
    warm_failed = [result for result in warm if result.failed()]
    busy = [pool for pool in pools if pool.get("active") or pool.get("queued")]
    allowed = {code: statuses[str(code)] + event_statuses[str(code)] for code in ALLOWED_5XX}
    table = latency_table(results)

    print(
        f"soak: {args.clients} clients, {elapsed:.1f} s, {len(results)} requests "
        f"({len(results) / max(elapsed, 1e-9):.1f}/s) against {soak.url}; "
        f"warm-up {phases['warmup_seconds']:.0f} s, {len(warm)} requests"
    )
    print("  statuses: " + ", ".join(f"{code}={n}" for code, n in sorted(statuses.items())))
    if event_statuses:
        print(
            "  error events in 200 streams: "
            + ", ".join(f"{c}={n}" for c, n in sorted(event_statuses.items()))
        )
    print(
        f"  unexpected 5xx: {len(unexpected)}   503: {allowed[503]} (queue full or queue timeout)"
        f"   504: {allowed[504]} (generation timeout)"
    )
    print(
        f"  wrong status for the kind: {len(mismatched)}   cut short: {len(incomplete)}"
        f"   transport errors: {len(transport)}   warm-up failures: {len(warm_failed)}"
    )
    print(f"  {'kind':<14}{'n':>6}{'as expected':>12}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}")
    for kind, row in table.items():
        print(
            f"  {kind:<14}{row['n']:>6}{row['good']:>12}{row['p50_ms']:>9.0f}{row['p95_ms']:>9.0f}"
            f"{row['p99_ms']:>9.0f}"
        )
    pid = phases["pid"]
    print(f"  server at start:      {format_resources(samples['start'])}" + (f" (pid {pid})" if pid else ""))
    print(f"  server after warm-up: {format_resources(samples['after_warmup'])}")
    print(f"  server at the end:    {format_resources(samples['end'])}")
    if soak.peaks:
        print(
            "  pool peaks during the soak: "
            + ", ".join(f"{n} active={p['active']} queued={p['queued']}" for n, p in soak.peaks.items())
            + f"; slowest GET /api/v1/status {soak.slowest_status * 1000:.0f} ms"
        )
    if soak.busy_at_end:
        print(f"  not idle at the first look after the last client: {soak.busy_at_end}")
    print(
        f"  end check, {drain_time:.1f} s after the last client: "
        + ", ".join(
            f"{p.get('name')} active={p.get('active')} queued={p.get('queued')} served={p.get('served')} "
            f"rejected={p.get('rejected')} timed_out={p.get('timed_out')}"
            for p in pools
        )
    )

    failures: list[str] = []
    if unexpected:
        failures.append(f"{len(unexpected)} unexpected 5xx")
    if mismatched:
        failures.append(f"{len(mismatched)} answers with the wrong status for their kind")
    if incomplete:
        failures.append(f"{len(incomplete)} good answers cut short (a stream without its end, no output)")
    if transport:
        failures.append(f"{len(transport)} good requests failed at the transport level")
    if warm_failed:
        failures.append(f"{len(warm_failed)} warm-up requests failed")
    if phases["status_error"]:
        failures.append(phases["status_error"])
    if busy:
        failures.append(f"pools not idle {drain_time:.1f} s after the last client: {busy_text(busy)}")
    if process is not None and process.process.poll() is not None:
        failures.append(f"the server exited with {process.process.returncode}")
    rss_check = args.rss_check == "on" or (args.rss_check == "auto" and args.seconds >= RSS_AUTO_MIN_SECONDS)
    rss_ratio = None
    if samples["after_warmup"] and samples["end"]:
        rss_ratio = samples["end"]["tree_rss_mb"] / samples["after_warmup"]["tree_rss_mb"]
    if rss_check and rss_ratio is None:
        failures.append("RSS check on but the server's RSS could not be read (--pid)")
    elif rss_check and rss_ratio is not None and rss_ratio > args.rss_limit:
        failures.append(
            f"RSS at the end {rss_ratio:.2f} x the RSS after the warm-up (limit {args.rss_limit:.2f})"
        )
    ratio_text = f"{rss_ratio:.3f}" if rss_ratio is not None else "n/a"
    print(
        f"  RSS check {'on' if rss_check else 'off'}: end / after warm-up = {ratio_text}"
        f" (limit {args.rss_limit:.2f})"
    )

    if failures:
        print("FAILED: " + "; ".join(failures))
        shown = (unexpected + mismatched + incomplete + transport + warm_failed)[:12]
        for result in shown:
            print(
                f"  - [{result.kind}] {result.request} -> {result.status}"
                + (f", error event {result.event_status}" if result.event_status else "")
                + (", stream cut before its end" if result.incomplete() else "")
                + (f", request id {result.request_id}" if result.request_id else "")
                + (f"\n      answer: {result.body}" if result.body else "")
            )
        if process is not None:
            excerpt = server_log_excerpt(process.log_path, [r.request_id for r in shown if r.request_id])
            if excerpt:
                print("  server log excerpt:")
                for line in excerpt:
                    print("    " + line)
    else:
        print("OK: no unexpected 5xx, every answer as expected for its kind, every pool idle at the end")
    summary = {
        "ok": not failures,
        "failures": failures,
        "clients": args.clients,
        "seconds": round(elapsed, 2),
        "requests": len(results),
        "warmup_requests": len(warm),
        "statuses": dict(sorted(statuses.items())),
        "stream_error_events": dict(sorted(event_statuses.items())),
        "unexpected_5xx": len(unexpected),
        "status_503": allowed[503],
        "status_504": allowed[504],
        "mismatched": len(mismatched),
        "incomplete_streams": len(incomplete),
        "transport_errors": len(transport),
        "latency": table,
        "resources": samples,
        "rss_ratio": round(rss_ratio, 4) if rss_ratio is not None else None,
        "rss_check": rss_check,
        "pool_peaks": soak.peaks,
        "slowest_status_ms": round(soak.slowest_status * 1000, 1),
        "drain_seconds": round(drain_time, 2),
        "pools": [{name: pool.get(name) for name in POOL_FIELDS} for pool in pools],
    }
    print(json.dumps(summary, separators=(",", ":")))
    return not failures


POOL_FIELDS = ("name", "active", "queued", "served", "rejected", "timed_out")


def main() -> None:
    args = parse_args()
    warmup = (
        args.warmup_seconds if args.warmup_seconds is not None else max(3.0, min(15.0, 0.15 * args.seconds))
    )
    process = None
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    ok = False
    try:
        with_media = False
        if args.url is None:
            with_media = not args.no_media and media_available()
            if not args.no_media and not with_media:
                print("soak: torch or diffusers missing: text only")
            try:
                process = start_server(
                    workdir,
                    with_media,
                    args.generation_timeout or OWN_GENERATION_TIMEOUT,
                    args.max_request_bytes or OWN_MAX_REQUEST_BYTES,
                    args.set,
                )
            except Exception as exc:  # the server, the models or the config: exit 2
                print(f"soak: could not start the server: {exc}")
                sys.exit(2)
        soak = configure(args, process, with_media)
        pid = (
            process.process.pid
            if process
            else args.pid or listener_pid(urllib.parse.urlsplit(soak.url).port or 80)
        )
        at_start = resources(pid)
        warm = asyncio.run(warm_up(soak, args.clients, warmup, args.seed))
        after_warmup = resources(pid)
        elapsed = asyncio.run(run_clients(soak, args.clients, args.seconds, args.max_requests, args.seed + 7))
        drain_seconds = args.drain_seconds if args.drain_seconds is not None else args.generation_timeout + 10
        drain_time, pools, status_error = asyncio.run(drain(soak, drain_seconds))
        phases = {
            "results": soak.results,
            "warm": warm,
            "warmup_seconds": warmup,
            "elapsed": elapsed,
            "drain_time": drain_time,
            "pools": pools,
            "status_error": status_error,
            "pid": pid,
            "resources": {"start": at_start, "after_warmup": after_warmup, "end": resources(pid)},
        }
        ok = report(args, soak, process, phases)
    finally:
        if process is not None:
            process.stop()
            if args.keep is not None:
                args.keep.mkdir(parents=True, exist_ok=True)
                for name in ("config.toml", "server.log"):
                    if (workdir / name).exists():
                        shutil.copy(workdir / name, args.keep / name)
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
