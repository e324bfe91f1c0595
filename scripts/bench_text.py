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
clients stream at once through a server whose llama.cpp instance decodes them together; the
aggregate tokens/s and the worst time to first token are set against the *batched-decode limit*
measured in the same run (the same sequences decoded together with llama.cpp's low-level API and
nothing else), and the time to first token of a request sharing a 1,000-token prefix with the one
before is measured cold (cache_prompt off) and cached.

    python scripts/bench_text.py [--model PATH.gguf|mid] [--tokens 256] [--runs 5]
    python scripts/bench_text.py --model mid --clients 1,4,8 --threads 2 --tokens 128
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


def client_prompts(clients: int) -> list[str]:
    return [f"{PROMPT} Client {index} wants it told in its own way." for index in range(clients)]


def batched_limit(
    model: Path, clients: int, tokens: int, threads: int, n_ctx: int, gpu_layers: int = 0
) -> dict[str, float]:
    """The same sequences decoded together with llama.cpp's low-level API and nothing else: one
    batch with every prompt, then one token per sequence per ``llama_decode`` (greedy).
    ``gpu_layers``: layers offloaded to the GPU (-1: all; ``scripts/gpu_check.py``)."""
    import llama_cpp

    llama = llama_cpp.Llama(
        model_path=str(model), n_ctx=64, n_threads=threads, n_gpu_layers=gpu_layers, verbose=False
    )
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_seq_max, params.n_batch, params.n_ubatch = n_ctx * clients, clients, 512, 512
    params.n_threads = params.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(llama._model.model, params)
    vocab = llama._model.vocab
    batch = llama_cpp.llama_batch_init(512, 0, 1)
    samplers = [llama_cpp.llama_sampler_init_greedy() for _ in range(clients)]
    eog = {llama.token_eos()}
    prompts = [
        llama.tokenize(llama_chat_prompt(llama, text).encode(), add_bos=True, special=True)
        for text in client_prompts(clients)
    ]

    def add(token: int, position: int, seq: int, logits: bool) -> int:
        index = batch.n_tokens
        batch.token[index], batch.pos[index], batch.n_seq_id[index] = token, position, 1
        batch.seq_id[index][0], batch.logits[index] = seq, logits
        batch.n_tokens = index + 1
        return index

    def sample(seq: int, index: int) -> int:
        token = llama_cpp.llama_sampler_sample(samplers[seq], ctx, index)
        if token in eog:  # keep going, like ignore_eos: take the next token id instead
            token = (token + 1) % llama.n_vocab()
        llama_cpp.llama_detokenize(vocab, (llama_cpp.llama_token * 1)(token), 1, None, 0, False, False)
        return int(token)

    picked: dict[int, int] = {}
    outputs: dict[int, int] = {}

    def decode() -> None:  # then sample every sequence whose logits this batch computed
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        for seq, index in outputs.items():
            picked[seq] = sample(seq, index)
        outputs.clear()
        batch.n_tokens = 0

    started = time.perf_counter()
    batch.n_tokens = 0
    for seq, prompt in enumerate(prompts):  # every prompt, in batches of up to 512 tokens
        for position, token in enumerate(prompt):
            if batch.n_tokens == 512:
                decode()
            index = add(token, position, seq, position == len(prompt) - 1)
            if position == len(prompt) - 1:
                outputs[seq] = index
    decode()
    first = time.perf_counter() - started  # every sequence has its first token
    positions = [len(prompt) for prompt in prompts]
    produced = len(picked)
    for _step in range(tokens - 1):
        for seq, token in picked.items():
            outputs[seq] = add(token, positions[seq], seq, True)
            positions[seq] += 1
        decode()
        produced += len(picked)
    elapsed = time.perf_counter() - started
    for sampler in samplers:
        llama_cpp.llama_sampler_free(sampler)
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    llama.close()
    return {"tokens_per_s": produced / elapsed, "worst_ttft_ms": first * 1000}


def llama_chat_prompt(llama: Any, text: str) -> str:
    """The prompt the server builds from one user message (the model's chat template)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(
        template=llama.metadata["tokenizer.chat_template"],
        eos_token=llama._model.token_get_text(llama.token_eos()),
        bos_token=llama._model.token_get_text(llama.token_bos()),
    )
    return formatter(messages=[{"role": "user", "content": text}]).prompt  # type: ignore[arg-type]


async def bench_clients(url: str, model: str, clients: int, tokens: int) -> dict[str, float]:
    """``clients`` SSE streams at once through the server: aggregate tokens/s, worst TTFT."""
    bodies = [
        {
            "input_data": [{"type": "text", "role": "user_prompt", "data": prompt}],
            "stream": True,
            "binding_name": "llm",
            "model_name": model,
            "parameters": {"max_tokens": tokens, "ignore_eos": True, "seed": index, "cache_prompt": False},
        }
        for index, prompt in enumerate(client_prompts(clients))
    ]
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=600) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(sse_stream(client, url, body, False) for body in bodies))
        elapsed = time.perf_counter() - started
    return {
        "tokens_per_s": sum(count for _, _, count in results) / elapsed,
        "worst_ttft_ms": max(first for first, _, _ in results) * 1000,
    }


async def bench_prefix(url: str, model: str, runs: int) -> tuple[float, float]:
    """TTFT of a request whose ~1,000-token prefix the previous request read: cold, cached."""
    words = "the quick brown fox jumps over the lazy dog near the river bank".split()
    history = " ".join(words[index % len(words)] for index in range(1000))
    colds, cacheds = [], []
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=600) as client:
        for run in range(runs + 1):
            prefix = f"Conversation {run}: {history}"
            times = []
            for question, cache in (("first?", False), ("second?", True)):
                body = {
                    "input_data": [{"type": "text", "role": "user_prompt", "data": f"{prefix} {question}"}],
                    "stream": True,
                    "binding_name": "llm",
                    "model_name": model,
                    "parameters": {"max_tokens": 2, "ignore_eos": True, "cache_prompt": cache},
                }
                first, _, _ = await sse_stream(client, url, body, False)
                times.append(first)
            if run:  # the first round warms up
                colds.append(times[0])
                cacheds.append(times[1])
    return statistics.median(colds) * 1000, statistics.median(cacheds) * 1000


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main_clients(model: Path, counts: list[int], tokens: int, runs: int, threads: int) -> None:
    n_ctx = 2048
    print(
        f"model {model.name} ({model.stat().st_size / 2**20:.1f} MB), {tokens} tokens per client, "
        f"{threads} thread(s)\n"
    )
    parallel = max(counts)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = start_server(
            model,
            workdir,
            threads,
            settings={"parallel": parallel, "n_ctx": n_ctx},
            resource_manager={"pools": {"default": {"limit": parallel, "queue_size": 64}}},
        )
        url = server.url + "/api/v1/generate"
        try:
            asyncio.run(bench_clients(url, model.name, 1, 8))  # warm-up (model load)
            rows = []
            for clients in counts:  # alternated runs, medians: this machine's noise hits both alike
                limits, serveds = [], []
                for _ in range(runs):
                    limits.append(batched_limit(model, clients, tokens, threads, n_ctx))
                    serveds.append(asyncio.run(bench_clients(url, model.name, clients, tokens)))
                rows.append((clients, medians(serveds), medians(limits)))
            cold, cached = asyncio.run(bench_prefix(url, model.name, runs))
        finally:
            server.stop()
    single_ttft = rows[0][1]["worst_ttft_ms"] if counts[0] == 1 else None
    header = (
        "clients",
        "served tok/s",
        "limit tok/s",
        "ratio",
        "worst TTFT ms",
        "limit TTFT ms",
        "TTFT/1 client",
    )
    print(
        " ".join(f"{name:>{width}}" for name, width in zip(header, (7, 13, 12, 6, 14, 14, 14), strict=True))
    )
    for clients, served, limit in rows:
        versus_one = f"{served['worst_ttft_ms'] / single_ttft:13.2f}x" if single_ttft else " " * 14
        print(
            f"{clients:>7} {served['tokens_per_s']:>13.1f} {limit['tokens_per_s']:>12.1f} "
            f"{served['tokens_per_s'] / limit['tokens_per_s']:>5.2f}x {served['worst_ttft_ms']:>14.1f} "
            f"{limit['worst_ttft_ms']:>14.1f} {versus_one}"
        )
    print(
        f"\n1,000-token shared prefix: TTFT cold {cold:.1f} ms, cached {cached:.1f} ms "
        f"({cold / cached:.1f}x faster)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="GGUF file, or mid (default: build the tiny test model)")
    parser.add_argument("--clients", help="continuous batching: client counts, e.g. 1,4,8")
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
