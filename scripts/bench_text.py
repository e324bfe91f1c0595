"""Benchmark: llama.cpp text through lollms_server versus llama-cpp-python called directly.

On the same GGUF and prompt it measures time to first token (TTFT) and tokens/s of
  (a) ``llama_cpp.Llama`` called directly: streamed ``create_chat_completion`` (what an
      application would write) and the non-streamed call (no per-token work at all),
  (b) lollms_server's SSE stream (a real server process on 127.0.0.1),
  (c) 8 concurrent SSE streams through lollms_server (decoded together: pool limit and the
      instance's ``parallel`` set to ``--concurrent``),
  (d) llama-cpp-python's own OpenAI server as a peer, when ``llama-cpp-python[server]`` is installed,
and prints the ratios against the direct calls. Without ``--model`` it builds the tiny random
GGUF the tests use (per-token overhead dominates there, which is what this measures);
``--model mid`` builds (once, cached) a mid-size random GGUF (Llama, hidden 768, 12 layers,
~300 MB f32) where the model's compute dominates.

With ``--clients 1,4,8`` it measures continuous batching instead: for each count, that many
identical chats (temperature 0) stream at once through a server whose llama.cpp instance decodes
them together, on a fresh server (*cold*: nothing of the prompt cached) and after one chat alone
and earlier rounds (*warm*: the prompt in the prefix cache). Aggregate tokens/s, the worst time to
first token and the server process's CPU milliseconds per token are set against the
*like-for-like limit* measured alternately in the same run: the served prompt's exact token count
(read from the server's usage), every sequence prefilled together, ``tokens - 1`` decodes of one
token of each, greedy sampling in C, one KV stream per sequence, with llama.cpp's low-level API
and nothing else. Last, the time to first token of a request whose ~1,000-word prefix a request
*still generating* holds: computed (cache_prompt off) and copied from the busy sequence's cells.

When the environment variable ``LLAMA_SERVER`` names a ``llama-server`` binary (llama.cpp's own
server; a benchmark peer only, never a dependency of the project), each repetition also runs it,
alternated with ours and the limit, on the same work: the same GGUF, ``-t THREADS``, ``-np C``
slots with ``-c n_ctx*C`` (each slot gets n_ctx), ``--cont-batching``, one KV stream per slot and
flash attention off (as the binding's default and the limit), the same prompt and ``max_tokens``
through its streaming ``/v1/chat/completions`` (temperature 0, ``ignore_eos``, ``cache_prompt``
as ours), cold (a fresh server's first round) and warm (after one chat alone, then rounds). A
second table gives its aggregate tokens/s, worst time to first token and process CPU ms per
token, and ours / llama-server. llama-server sends no text until it is valid UTF-8: on a random-
weight model (byte tokens) its first text comes tokens late, which the table's note reports (how
many, from its ``timings_per_token``); compare times to first token on a real model (``--model``).

    python scripts/bench_text.py [--model PATH.gguf|mid] [--tokens 256] [--runs 5]
    python scripts/bench_text.py --model mid --clients 1,4,8 --threads 2 --tokens 128
    LLAMA_SERVER=/path/to/llama-server python scripts/bench_text.py --clients 1,4,8 --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from tests.processes import ServerProcess


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
KEY = "bench-key-0123456789"
PROMPT = "Tell me a long story about a quick brown fox."
RAW = {"on": False}
"""Set for a model without a chat template (Gemma 3 270M's GGUF): every peer completes the
prompt text as written (ours: ``raw_prompt``; llama-server: ``/completion``; the limit: the text's
tokens), so all of them read the same tokens."""


def summary(name: str, ttfts: list[float], rates: list[float]) -> dict[str, float]:
    result = {"ttft_ms": statistics.median(ttfts) * 1000, "tokens_per_s": statistics.median(rates)}
    print(f"{name:<44} TTFT {result['ttft_ms']:8.2f} ms   {result['tokens_per_s']:9.1f} tokens/s")
    return result


def bench_direct(
    model: Path, tokens: int, runs: int, threads: int
) -> tuple[dict[str, float], dict[str, float], dict[str, float], int]:
    import llama_cpp

    llama = llama_cpp.Llama(model_path=str(model), n_ctx=4096, n_threads=threads, verbose=False)
    messages = [{"role": "user", "content": PROMPT}]
    no_eos = {llama.token_eos(): -1e9}
    llama.create_chat_completion(messages, max_tokens=8)  # warm-up
    ttfts, rates = [], []
    for _ in range(runs):
        started = time.perf_counter()
        first = None
        count = 0
        for part in llama.create_chat_completion(
            messages, max_tokens=tokens, stream=True, logit_bias=no_eos, seed=1
        ):
            if part["choices"][0]["delta"].get("content"):
                count += 1
                first = first or time.perf_counter() - started
        elapsed = time.perf_counter() - started
        ttfts.append(first or elapsed)
        rates.append(tokens / elapsed)
    streamed = summary("direct llama_cpp (stream=True)", ttfts, rates)
    ttfts, rates = [], []
    for _ in range(runs):
        started = time.perf_counter()
        result = llama.create_chat_completion(messages, max_tokens=tokens, logit_bias=no_eos, seed=1)
        elapsed = time.perf_counter() - started
        ttfts.append(elapsed)  # the whole answer is the first thing a caller sees
        rates.append(result["usage"]["completion_tokens"] / elapsed)
    whole = summary("direct llama_cpp (not streamed)", ttfts, rates)
    ttfts, rates = [], []
    prompt_tokens = llama.tokenize(PROMPT.encode(), add_bos=True, special=True)
    for _ in range(runs):  # the raw token loop: the floor any server built on llama-cpp-python pays
        started = time.perf_counter()
        first = None
        count = 0
        for token in llama.generate(prompt_tokens, temp=0.8, logits_processor=None):
            if token == llama.token_eos():
                continue
            llama.detokenize([token])
            count += 1
            first = first or time.perf_counter() - started
            if count >= tokens:
                break
        elapsed = time.perf_counter() - started
        ttfts.append(first or elapsed)
        rates.append(tokens / elapsed)
    raw = summary("direct llama_cpp (raw Llama.generate loop)", ttfts, rates)
    eos = llama.token_eos()
    llama.close()
    return streamed, whole, raw, eos


async def sse_stream(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], openai: bool
) -> tuple[float, float, int]:
    started = time.perf_counter()
    first = None
    count = 0
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if openai:
                text = event["choices"][0]["delta"].get("content") if event.get("choices") else None
            else:
                text = event["content"] if event["type"] == "chunk" else None
                if event["type"] == "final":
                    count = event["content"][0]["metadata"]["usage"]["completion_tokens"]
            if text:
                first = first or time.perf_counter() - started
                if openai:
                    count += 1
    elapsed = time.perf_counter() - started
    return first or elapsed, elapsed, count


async def bench_http(
    name: str, url: str, body: dict[str, Any], tokens: int, runs: int, openai: bool
) -> dict[str, float]:
    async with httpx.AsyncClient(
        headers={"X-API-Key": KEY, "Authorization": f"Bearer {KEY}"}, timeout=600
    ) as client:
        await sse_stream(client, url, body, openai)  # warm-up (model load)
        ttfts, rates = [], []
        for _ in range(runs):
            first, elapsed, _count = await sse_stream(client, url, body, openai)
            ttfts.append(first)
            rates.append(tokens / elapsed)
        return summary(name, ttfts, rates)


async def bench_concurrent(url: str, body: dict[str, Any], tokens: int, streams: int) -> dict[str, float]:
    async with httpx.AsyncClient(
        headers={"X-API-Key": KEY, "Authorization": f"Bearer {KEY}"}, timeout=600
    ) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(sse_stream(client, url, body, False) for _ in range(streams)))
        elapsed = time.perf_counter() - started
    total = streams * tokens
    result = {"ttft_ms": statistics.median(r[0] for r in results) * 1000, "tokens_per_s": total / elapsed}
    print(
        f"{f'lollms_server, {streams} concurrent SSE streams':<44} TTFT {result['ttft_ms']:8.2f} ms "
        f"  {result['tokens_per_s']:9.1f} tokens/s (aggregate)"
    )
    return result


def start_server(
    model: Path,
    workdir: Path,
    threads: int,
    isolation: str = "inprocess",
    settings: dict[str, Any] | None = None,
    **sections: Any,
) -> ServerProcess:
    """A lollms_server serving ``model`` as binding ``llm`` (``settings`` add instance settings,
    ``sections`` config sections)."""
    from tests.processes import start_lollms

    config = {
        "server": {"auto_install_requirements": False},
        "logging": {"level": "WARNING"},
        "paths": {"models_folder": str(model.parent.parent), "runtime_folder": str(workdir / "run")},
        "security": {"api_keys": [KEY]},
        "resource_manager": {"pools": {"default": {"limit": 1, "queue_size": 64, "isolation": isolation}}},
        "bindings": {
            "llm": {
                "type": "llamacpp_binding",
                "n_ctx": 4096,
                "n_threads": threads,
                "models_folder": str(model.parent),
                **(settings or {}),
            }
        },
        **sections,
    }
    return start_lollms(config, workdir)


def start_peer(model: Path, threads: int) -> ServerProcess | None:
    from tests.processes import ServerProcess, free_port

    try:
        import llama_cpp.server.app  # noqa: F401
    except ImportError:
        print("(llama-cpp-python[server] not installed: peer server skipped)")
        return None
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--port",
        str(port),
        "--n_ctx",
        "4096",
        "--n_threads",
        str(threads),
        "--verbose",
        "false",
        "--api_key",
        KEY,
    ]
    peer = ServerProcess(command, url, url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    peer.wait_ready(120)
    return peer


def start_llama_server(
    binary: str, model: Path, threads: int, clients: int, n_ctx: int, workdir: Path
) -> ServerProcess:
    """llama.cpp's own ``llama-server`` (the ``LLAMA_SERVER`` binary) doing the engine's work:
    ``clients`` slots of ``n_ctx`` tokens each, continuous batching, one KV stream per slot, flash
    attention off (the binding's default)."""
    from tests.processes import ServerProcess, free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        binary,
        "-m",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-t",
        str(threads),
        "-np",
        str(clients),
        "-c",
        str(n_ctx * clients),
        "--cont-batching",
        "--no-kv-unified",
        "-fa",
        "off",
        "--api-key",
        KEY,
    ]
    server = ServerProcess(command, url, url + "/health", workdir / "llama-server.log")
    try:
        server.wait_ready(120)
    except BaseException:
        server.stop()
        raise
    return server


MID_MODEL = Path.home() / ".cache" / "lollms_server" / "bench" / "llamacpp_binding" / "mid.gguf"


def mid_model() -> Path:
    """The mid-size random GGUF (built on first use, then cached)."""
    if not MID_MODEL.exists():
        from tests.tiny_models import build_tiny_gguf

        print(f"building {MID_MODEL} (once)...")
        partial = MID_MODEL.with_suffix(".part")
        build_tiny_gguf(partial, hidden=768, intermediate=2048, layers=12, heads=12, kv_heads=4)
        partial.replace(MID_MODEL)
    return MID_MODEL


def batched_limit(
    model: Path, clients: int, prompt_tokens: int, tokens: int, threads: int, n_ctx: int, gpu_layers: int = 0
) -> dict[str, float]:
    """The served work done with llama.cpp's low-level API and nothing else: ``clients``
    sequences of ``prompt_tokens`` tokens (the served prompt's exact count) prefilled together,
    then ``tokens - 1`` decodes of one token of every sequence, greedy sampling in C, one KV
    stream per sequence (as the engine). ``gpu_layers``: layers offloaded to the GPU (-1: all;
    ``scripts/gpu_check.py``)."""
    import llama_cpp

    llama = llama_cpp.Llama(
        model_path=str(model), n_ctx=64, n_threads=threads, n_gpu_layers=gpu_layers, verbose=False
    )
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_seq_max, params.n_batch, params.n_ubatch = n_ctx * clients, clients, 512, 512
    params.n_threads = params.n_threads_batch = threads
    params.kv_unified = False
    params.flash_attn_type = 0  # the binding's default
    ctx = llama_cpp.llama_init_from_model(llama._model.model, params)
    batch = llama_cpp.llama_batch_init(512, 0, 1)
    sampler = llama_cpp.llama_sampler_init_greedy()
    eog = {llama.token_eos()}
    prompt = llama.tokenize(llama_chat_prompt(llama, PROMPT).encode(), add_bos=True, special=True)
    prompt = (prompt * (prompt_tokens // len(prompt) + 1))[:prompt_tokens]

    def add(token: int, position: int, seq: int, logits: bool) -> int:
        index = batch.n_tokens
        batch.token[index], batch.pos[index], batch.n_seq_id[index] = token, position, 1
        batch.seq_id[index][0], batch.logits[index] = seq, logits
        batch.n_tokens = index + 1
        return index

    picked: dict[int, int] = {}
    outputs: dict[int, int] = {}

    def decode() -> None:  # then sample every sequence whose logits this batch computed
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        for seq, index in outputs.items():
            token = int(llama_cpp.llama_sampler_sample(sampler, ctx, index))
            picked[seq] = token if token not in eog else (token + 1) % llama.n_vocab()  # as ignore_eos
        outputs.clear()
        batch.n_tokens = 0

    started, cpu_started = time.perf_counter(), time.process_time()
    batch.n_tokens = 0
    for seq in range(clients):  # every prompt, in batches of up to 512 tokens
        for position, token in enumerate(prompt):
            if batch.n_tokens == 512:
                decode()
            index = add(token, position, seq, position == len(prompt) - 1)
            if position == len(prompt) - 1:
                outputs[seq] = index
    decode()
    first = time.perf_counter() - started  # every sequence has its first token
    produced = len(picked)
    for step in range(tokens - 1):
        for seq, token in picked.items():
            outputs[seq] = add(token, len(prompt) + step, seq, True)
        decode()
        produced += len(picked)
    elapsed = time.perf_counter() - started
    cpu_ms = (time.process_time() - cpu_started) * 1000 / produced
    llama_cpp.llama_sampler_free(sampler)
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    llama.close()
    return {"tokens_per_s": produced / elapsed, "worst_ttft_ms": first * 1000, "cpu_ms": cpu_ms}


def has_chat_template(model: Path) -> bool:
    import llama_cpp

    llama = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)
    try:
        return bool(llama.metadata.get("tokenizer.chat_template"))
    finally:
        llama.close()


def llama_chat_prompt(llama: Any, text: str) -> str:
    """The prompt the server builds from one user message (the model's chat template)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    if RAW["on"]:
        return text
    formatter = Jinja2ChatFormatter(
        template=llama.metadata["tokenizer.chat_template"],
        eos_token=llama._model.token_get_text(llama.token_eos()),
        bos_token=llama._model.token_get_text(llama.token_bos()),
    )
    return formatter(messages=[{"role": "user", "content": text}]).prompt  # type: ignore[arg-type]


def chat_body(model: str, prompt: str, tokens: int, stream: bool = True, **parameters: Any) -> dict[str, Any]:
    return {
        "input_data": [{"type": "text", "role": "user_prompt", "data": prompt}],
        "stream": stream,
        "binding_name": "llm",
        "model_name": model,
        "parameters": {
            "max_tokens": tokens,
            "ignore_eos": True,
            "temperature": 0,
            **({"raw_prompt": True} if RAW["on"] else {}),
            **parameters,
        },
    }


async def usage_stream(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], started_event: asyncio.Event | None = None
) -> tuple[float, float, dict[str, int]]:
    """One native SSE stream: time to first token, total time, its usage."""
    started = time.perf_counter()
    first = None
    usage: dict[str, int] = {}
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "chunk" and event["content"] and first is None:
                first = time.perf_counter() - started
                if started_event is not None:
                    started_event.set()
            elif event["type"] == "final":
                usage = event["content"][0]["metadata"]["usage"]
            elif event["type"] == "error":
                raise RuntimeError(event)
    elapsed = time.perf_counter() - started
    return first or elapsed, elapsed, usage


def peer_path() -> str:
    """llama-server's route for the work: its chat completions, or ``/completion`` in raw mode."""
    return "/completion" if RAW["on"] else "/v1/chat/completions"


def openai_body(prompt: str, tokens: int, **parameters: Any) -> dict[str, Any]:
    """:func:`chat_body` for an OpenAI-compatible server (llama-server's extra fields); in raw
    mode, llama-server's own ``/completion`` body."""
    if RAW["on"]:
        return {
            "prompt": prompt,
            "n_predict": tokens,
            "stream": True,
            "temperature": 0,
            "ignore_eos": True,
            "cache_prompt": parameters.pop("cache_prompt", True),
            "timings_per_token": True,
            **parameters,
        }
    return {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "ignore_eos": True,
        "cache_prompt": True,
        "timings_per_token": True,  # tells how many tokens a chunk's text waited for
        **parameters,
    }


async def openai_usage_stream(
    client: httpx.AsyncClient, url: str, body: dict[str, Any]
) -> tuple[float, float, dict[str, int]]:
    """:func:`usage_stream` for an OpenAI chat completions stream; ``usage["held"]``: the tokens
    llama-server had generated when it sent the first text (it holds back incomplete UTF-8)."""
    started = time.perf_counter()
    first = None
    usage: dict[str, int] = {}
    held = 0
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(event)
            if "choices" not in event and "content" in event:  # /completion (raw mode)
                if event["content"] and first is None:
                    first = time.perf_counter() - started
                    held = event.get("timings", {}).get("predicted_n", 1)
                if event.get("stop"):
                    usage = {
                        "prompt_tokens": event.get("tokens_evaluated", 0),
                        "completion_tokens": event.get("tokens_predicted", 0),
                    }
                continue
            choices = event.get("choices") or [{}]
            if choices[0].get("delta", {}).get("content") and first is None:
                first = time.perf_counter() - started
                held = event.get("timings", {}).get("predicted_n", 1)
            if event.get("usage"):
                usage = event["usage"]
    elapsed = time.perf_counter() - started
    return first or elapsed, elapsed, {**usage, "held": held}


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def served_round(
    server: ServerProcess, model: str, clients: int, tokens: int, openai: bool = False
) -> dict[str, float]:
    """:func:`bench_round`, with the server process's CPU milliseconds per generated token (a
    measure the other users of a busy machine disturb far less than the wall clock); ``openai``:
    through ``/v1/chat/completions`` (llama-server)."""
    before = process_cpu_seconds(server.process.pid)
    path = peer_path() if openai else "/api/v1/generate"
    result = asyncio.run(bench_round(server.url + path, model, clients, tokens, openai))
    result["cpu_ms"] = (process_cpu_seconds(server.process.pid) - before) * 1000 / result["completion_tokens"]
    return result


async def bench_round(
    url: str, model: str, clients: int, tokens: int, openai: bool = False
) -> dict[str, float]:
    """``clients`` identical chats at once (temperature 0): aggregate tokens/s, worst time to
    first token, and the prompt's token count the server reported (``openai``: an OpenAI chat
    completions ``url``)."""
    body = openai_body(PROMPT, tokens) if openai else chat_body(model, PROMPT, tokens)
    stream = openai_usage_stream if openai else usage_stream
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=600) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(stream(client, url, body) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    completion = sum(usage["completion_tokens"] for _, _, usage in results)
    if not completion:
        raise RuntimeError(f"{url} generated no tokens: {results[0][2]}")
    return {
        "tokens_per_s": completion / elapsed,
        "worst_ttft_ms": max(first for first, _, _ in results) * 1000,
        "prompt_tokens": results[0][2]["prompt_tokens"],
        "completion_tokens": completion,
        "held": max(usage.get("held", 1) for _, _, usage in results),
    }


async def bench_shared_prefix(url: str, model: str, runs: int) -> tuple[float, float, int]:
    """Time to first token of a request whose ~1,000-token prefix a request *still generating*
    holds: computed (cache_prompt off) and copied from the busy sequence's cells."""
    words = "the quick brown fox jumps over the lazy dog near the river bank".split()
    history = " ".join(words[index % len(words)] for index in range(1000))
    colds, shareds, cached = [], [], 0
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=600) as client:
        for run in range(runs + 1):
            times = []
            for label, cache in (("computed", False), ("shared", True)):
                prefix = f"Conversation {run} {label}: {history}"
                generating = asyncio.Event()
                holder = asyncio.create_task(
                    usage_stream(client, url, chat_body(model, f"{prefix} first?", 48), generating)
                )
                await generating.wait()  # the first user's answer is streaming
                first, _, usage = await usage_stream(
                    client, url, chat_body(model, f"{prefix} second?", 2, cache_prompt=cache)
                )
                await holder
                times.append(first)
                cached = max(cached, usage.get("cached_tokens", 0)) if cache else cached
            if run:  # the first round warms up
                colds.append(times[0])
                shareds.append(times[1])
    return statistics.median(colds) * 1000, statistics.median(shareds) * 1000, cached


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main_clients(model: Path, counts: list[int], tokens: int, runs: int, threads: int) -> None:
    """Per client count and repetition, alternated: a fresh server's first round (cold: the model
    loaded by an unrelated request, nothing of the prompt cached), then one chat alone and two
    more rounds (warm: the prompt cached in the slots); the like-for-like limit; and, when
    ``LLAMA_SERVER`` names a binary, the same cold and warm rounds through llama-server."""
    n_ctx = 2048
    RAW["on"] = not has_chat_template(model)
    llama_server = os.environ.get("LLAMA_SERVER")
    if llama_server:
        print(f"llama-server peer: {llama_server}")
    print(
        f"model {model.name} ({model.stat().st_size / 2**20:.1f} MB), {tokens} tokens per client, "
        f"{threads} thread(s); load average {load_average()}"
        + ("; no chat template: raw completions of the prompt text" if RAW["on"] else "")
        + "\n"
    )
    parallel = max(counts)
    rows = []
    peer_rows: list[tuple[int, dict[str, float], dict[str, float]]] = []
    shared = None
    with tempfile.TemporaryDirectory() as tmp:
        for clients in counts:
            limits, colds, warms, peer_colds, peer_warms = [], [], [], [], []
            for repetition in range(runs):
                workdir = Path(tmp) / f"c{clients}r{repetition}"
                workdir.mkdir()
                server = start_server(
                    model,
                    workdir,
                    threads,
                    settings={"parallel": parallel, "n_ctx": n_ctx},
                    resource_manager={"pools": {"default": {"limit": parallel, "queue_size": 64}}},
                )
                url = server.url + "/api/v1/generate"
                try:
                    asyncio.run(bench_round_text(url, model.name, "Hi.", 1))  # loads the model
                    colds.append(served_round(server, model.name, clients, tokens))
                    asyncio.run(bench_round(url, model.name, 1, tokens))  # one chat alone
                    warm = [served_round(server, model.name, clients, tokens) for _ in range(2)]
                    warms.append(medians(warm))
                    if shared is None and clients == counts[-1] and repetition == runs - 1:
                        shared = asyncio.run(bench_shared_prefix(url, model.name, runs))
                finally:
                    server.stop()
                prompt_tokens = int(colds[-1]["prompt_tokens"])
                limits.append(batched_limit(model, clients, prompt_tokens, tokens, threads, n_ctx))
                if llama_server:
                    peer = start_llama_server(llama_server, model, threads, clients, n_ctx, workdir)
                    try:
                        url = peer.url + peer_path()
                        hello = openai_body("Hi.", 1, cache_prompt=False)  # as ours: a first request
                        asyncio.run(bench_round_openai(url, hello))
                        peer_colds.append(served_round(peer, model.name, clients, tokens, openai=True))
                        asyncio.run(bench_round(url, model.name, 1, tokens, openai=True))  # one alone
                        rounds = [served_round(peer, model.name, clients, tokens, True) for _ in range(2)]
                        peer_warms.append(medians(rounds))
                    finally:
                        peer.stop()
            rows.append((clients, medians(colds), medians(warms), medians(limits)))
            if llama_server:
                peer_rows.append((clients, medians(peer_colds), medians(peer_warms)))
    print(f"load average after: {load_average()}\n")
    header = (
        "clients",
        "round",
        "served tok/s",
        "limit tok/s",
        "ratio",
        "worst TTFT ms",
        "limit TTFT ms",
        "CPU ms/tok",
        "limit CPU",
        "CPU ratio",
    )
    widths = (7, 6, 13, 12, 6, 14, 14, 11, 10, 10)
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, widths, strict=True)))
    for clients, cold, warm, limit in rows:
        for label, served in (("cold", cold), ("warm", warm)):
            print(
                f"{clients:>7} {label:>6} {served['tokens_per_s']:>13.1f} {limit['tokens_per_s']:>12.1f} "
                f"{served['tokens_per_s'] / limit['tokens_per_s']:>5.2f}x {served['worst_ttft_ms']:>14.1f} "
                f"{limit['worst_ttft_ms']:>14.1f} {served['cpu_ms']:>11.2f} {limit['cpu_ms']:>10.2f} "
                f"{limit['cpu_ms'] / served['cpu_ms']:>9.2f}x"
            )
    print(
        f"(prompt {int(rows[0][1]['prompt_tokens'])} tokens; medians of {runs} alternated repetitions; "
        "ratio = served / limit tokens/s; CPU ratio = limit / served CPU ms per token)"
    )
    if peer_rows:
        print_llama_server(rows, peer_rows)
    if shared is not None:
        computed, copied, cached = shared
        print(
            f"\n~1,000-token prefix held by a request still generating: TTFT computed {computed:.1f} ms, "
            f"copied {copied:.1f} ms ({computed / copied:.1f}x faster; {cached} tokens cached)"
        )


def print_llama_server(
    rows: list[tuple[int, dict[str, float], dict[str, float], dict[str, float]]],
    peer_rows: list[tuple[int, dict[str, float], dict[str, float]]],
) -> None:
    """llama-server's rounds beside ours and the limit (same client counts, cold and warm)."""
    header = (
        "clients",
        "round",
        "llama-server",
        "/ limit",
        "ours/it",
        "its worst TTFT",
        "ours/it",
        "its CPU ms/tok",
        "ours/it",
    )
    widths = (7, 6, 13, 8, 8, 15, 8, 15, 8)
    print("\nllama-server (tok/s, ms) beside ours:")
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, widths, strict=True)))
    for (clients, cold, warm, limit), (_, peer_cold, peer_warm) in zip(rows, peer_rows, strict=True):
        for label, ours, peer in (("cold", cold, peer_cold), ("warm", warm, peer_warm)):
            print(
                f"{clients:>7} {label:>6} {peer['tokens_per_s']:>13.1f} "
                f"{peer['tokens_per_s'] / limit['tokens_per_s']:>7.2f}x "
                f"{ours['tokens_per_s'] / peer['tokens_per_s']:>7.2f}x {peer['worst_ttft_ms']:>15.1f} "
                f"{ours['worst_ttft_ms'] / peer['worst_ttft_ms']:>7.2f}x {peer['cpu_ms']:>15.2f} "
                f"{ours['cpu_ms'] / peer['cpu_ms']:>7.2f}x"
            )
    print(
        f"(llama-server's prompt {int(peer_rows[0][1]['prompt_tokens'])} tokens; ours/it: tokens/s higher "
        "is better, TTFT and CPU ms per token lower is better)"
    )
    held = max(int(peer["held"]) for _, cold, warm in peer_rows for peer in (cold, warm))
    if held > 1:
        print(
            f"(llama-server sent its first text only after up to {held} tokens: it holds back incomplete "
            "UTF-8, which a random-weight model's byte tokens are; its TTFT is not its engine's here)"
        )


async def bench_round_openai(url: str, body: dict[str, Any]) -> None:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=600) as client:
        await openai_usage_stream(client, url, body)


async def bench_round_text(url: str, model: str, prompt: str, tokens: int) -> None:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=600) as client:
        await usage_stream(client, url, chat_body(model, prompt, tokens, cache_prompt=False))


async def ceiling_stream(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> int:
    """One stream, its events counted without parsing them (the client stays cheap)."""
    events = 0
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for data in response.aiter_raw():
            events += data.count(b"data: ")
    return events


def main_ceiling(streams: int, tokens: int, runs: int) -> None:
    """What one server process can emit when the model costs nothing: ``streams`` concurrent
    streams of a scripted binding that yields ``tokens`` tokens at once, natively and on /v1;
    aggregate tokens/s (the client shares the machine) and the server's CPU ms per token."""
    print(f"{streams} streams x {tokens} tokens, scripted instant binding; load average {load_average()}")
    config_bindings = {"echo": {"type": "scripted_binding", "model_name": "echo", "instant": True}}
    native = {
        "input_data": [{"type": "text", "role": "user_prompt", "data": "go"}],
        "stream": True,
        "binding_name": "echo",
        "model_name": "echo",
        "parameters": {"max_tokens": tokens},
    }
    openai = {
        "model": "echo",
        "messages": [{"role": "user", "content": "go"}],
        "stream": True,
        "max_tokens": tokens,
    }
    from tests.processes import start_lollms

    with tempfile.TemporaryDirectory() as tmp:
        config = {
            "server": {"auto_install_requirements": False},
            "logging": {"level": "WARNING"},
            "paths": {"bindings_folder": str(REPO / "tests" / "fixtures" / "user_bindings")},
            "security": {"api_keys": [KEY]},
            "resource_manager": {"pools": {"default": {"limit": streams, "queue_size": 2 * streams}}},
            "bindings": config_bindings,
        }
        server = start_lollms(config, Path(tmp))
        results: dict[str, list[tuple[float, float]]] = {"native": [], "/v1": []}
        try:

            async def burst(url: str, body: dict[str, Any]) -> tuple[int, float]:
                limits = httpx.Limits(max_connections=streams + 4)
                async with httpx.AsyncClient(
                    headers={"Authorization": f"Bearer {KEY}"}, timeout=600, limits=limits
                ) as client:
                    started = time.perf_counter()
                    counts = await asyncio.gather(
                        *(ceiling_stream(client, url, body) for _ in range(streams))
                    )
                    return sum(counts), time.perf_counter() - started

            routes = {
                "native": (server.url + "/api/v1/generate", native),
                "/v1": (server.url + "/v1/chat/completions", openai),
            }
            for url, body in routes.values():  # warm-up
                asyncio.run(burst(url, body))
            for _ in range(runs):
                for name, (url, body) in routes.items():
                    before = process_cpu_seconds(server.process.pid)
                    events, elapsed = asyncio.run(burst(url, body))
                    cpu = process_cpu_seconds(server.process.pid) - before
                    results[name].append((streams * tokens / elapsed, cpu * 1000 / (streams * tokens)))
                    assert events >= streams * tokens, (name, events)
        finally:
            server.stop()
    print(f"load average after: {load_average()}")
    for name, values in results.items():
        rate = statistics.median(value[0] for value in values)
        cpu_ms = statistics.median(value[1] for value in values)
        print(
            f"{name:>7}: {rate:9.0f} tokens/s aggregate, server {cpu_ms * 1000:6.1f} CPU us per token "
            f"(ceiling ~{1000 / cpu_ms:,.0f} tokens/s per core)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="GGUF file, or mid (default: build the tiny test model)")
    parser.add_argument("--clients", help="continuous batching: client counts, e.g. 1,4,8")
    parser.add_argument(
        "--ceiling", type=int, metavar="STREAMS", help="the server's own token ceiling with this many streams"
    )
    parser.add_argument("--tokens", type=int, default=256, help="tokens per generation")
    parser.add_argument("--runs", type=int, default=5, help="runs per measurement (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    parser.add_argument("--concurrent", type=int, default=8, help="concurrent streams")
    parser.add_argument(
        "--isolation",
        choices=["inprocess", "process"],
        default="inprocess",
        help="run the pool in the server process or in a worker process",
    )
    args = parser.parse_args()
    if args.ceiling:
        main_ceiling(args.ceiling, args.tokens, args.runs)
        return
    if args.clients:
        model_path = mid_model() if args.model in (None, "mid") else Path(args.model).resolve()
        counts = sorted({int(count) for count in args.clients.split(",")})
        main_clients(model_path, counts, args.tokens, args.runs, args.threads)
        return

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = mid_model() if args.model == "mid" else Path(args.model) if args.model else None
        if model is None:
            from tests.tiny_models import build_tiny_gguf

            model = build_tiny_gguf(workdir / "models" / "llamacpp_binding" / "tiny.gguf")
        model = model.resolve()
        print(
            f"model {model.name} ({model.stat().st_size / 2**20:.1f} MB), {args.tokens} tokens, "
            f"{args.runs} runs, {args.threads} thread(s)\n"
        )
        direct_stream, direct_whole, direct_raw, eos = bench_direct(
            model, args.tokens, args.runs, args.threads
        )

        lollms = start_server(
            model,
            workdir,
            args.threads,
            args.isolation,
            settings={"parallel": args.concurrent},
            resource_manager={
                "pools": {
                    "default": {"limit": args.concurrent, "queue_size": 64, "isolation": args.isolation}
                }
            },
        )
        url = lollms.url
        try:
            body = {
                "input_data": [{"type": "text", "role": "user_prompt", "data": PROMPT}],
                "stream": True,
                "binding_name": "llm",
                "model_name": model.name,
                "parameters": {"max_tokens": args.tokens, "ignore_eos": True, "seed": 1},
            }
            server = asyncio.run(
                bench_http(
                    f"lollms_server SSE ({args.isolation})",
                    url + "/api/v1/generate",
                    body,
                    args.tokens,
                    args.runs,
                    openai=False,
                )
            )
            concurrent = asyncio.run(
                bench_concurrent(url + "/api/v1/generate", body, args.tokens, args.concurrent)
            )
        finally:
            lollms.stop()

        peer = None
        peer_server = start_peer(model, args.threads)
        if peer_server is not None:
            peer_url = peer_server.url
            try:
                no_eos = {"logit_bias": {str(eos): -100}}
                peer_body = {
                    "messages": [{"role": "user", "content": PROMPT}],
                    "max_tokens": args.tokens,
                    "stream": True,
                    "seed": 1,
                    **no_eos,
                }
                peer = asyncio.run(
                    bench_http(
                        "llama-cpp-python server (peer)",
                        peer_url + "/v1/chat/completions",
                        peer_body,
                        args.tokens,
                        args.runs,
                        openai=True,
                    )
                )
            finally:
                peer_server.stop()

    print("\nratios (higher is better for tokens/s, lower for TTFT)")
    bases = (
        ("direct stream", direct_stream),
        ("direct not streamed", direct_whole),
        ("direct raw loop", direct_raw),
    )
    for label, base in bases:
        print(
            f"  lollms_server / {label:<20} tokens/s {server['tokens_per_s'] / base['tokens_per_s']:6.2f}x"
            f"   TTFT {server['ttft_ms'] / base['ttft_ms']:6.2f}x"
        )
        print(
            f"  {args.concurrent} concurrent / {label:<18} tokens/s "
            f"{concurrent['tokens_per_s'] / base['tokens_per_s']:6.2f}x"
        )
        if peer is not None:
            print(
                f"  peer server / {label:<22} tokens/s {peer['tokens_per_s'] / base['tokens_per_s']:6.2f}x"
                f"   TTFT {peer['ttft_ms'] / base['ttft_ms']:6.2f}x"
            )


if __name__ == "__main__":
    main()
