"""Benchmark: llama.cpp text through lollms_server versus llama-cpp-python called directly.

On the same GGUF and prompt it measures time to first token (TTFT) and tokens/s of
  (a) ``llama_cpp.Llama`` called directly: streamed ``create_chat_completion`` (what an
      application would write) and the non-streamed call (no per-token work at all),
  (b) lollms_server's SSE stream (a real server process on 127.0.0.1),
  (c) 8 concurrent SSE streams through lollms_server (one pool slot: served one after another),
  (d) llama-cpp-python's own OpenAI server as a peer, when ``llama-cpp-python[server]`` is installed,
and prints the ratios against the direct calls. Without ``--model`` it builds the tiny random
GGUF the tests use (per-token overhead dominates there, which is what this measures).

    python scripts/bench_text.py [--model PATH.gguf] [--tokens 256] [--runs 5]
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
    model: Path, workdir: Path, threads: int, isolation: str = "inprocess", **sections: Any
) -> ServerProcess:
    """A lollms_server serving ``model`` as binding ``llm`` (``sections`` add config sections)."""
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="GGUF file (default: build the tiny test model)")
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

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = args.model
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

        lollms = start_server(model, workdir, args.threads, args.isolation)
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
