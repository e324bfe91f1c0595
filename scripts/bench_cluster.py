"""Benchmark: the Ray path (``[cluster] mode = "ray"``) against local mode, side by side.

On the tiny random GGUF (per-request and per-token costs dominate there, which is what this
measures) it starts, in the same run:
  (a) a lollms_server in local mode (the pool in the server process),
  (b) a local two-node Ray cluster (``ray.cluster_utils.Cluster``: a head and a node with a fake
      GPU) and a lollms_server gateway whose pool is a Ray actor placed on that node,
and measures for each: a streamed generation (TTFT, tokens/s) and the latency of short
non-streamed requests (1 token), whose difference is the per-request overhead of the Ray path.

    python scripts/bench_cluster.py [--tokens 256] [--runs 5] [--requests 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from bench_text import KEY, PROMPT, bench_http, start_server

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def body(model: Path, tokens: int, stream: bool) -> dict[str, Any]:
    return {
        "input_data": [{"type": "text", "role": "user_prompt", "data": PROMPT}],
        "stream": stream,
        "binding_name": "llm",
        "model_name": model.name,
        "parameters": {"max_tokens": tokens, "ignore_eos": True, "seed": 1},
    }


def short_requests(url: str, model: Path, count: int) -> float:
    """Median latency (ms) of ``count`` sequential 1-token requests."""
    latencies = []
    with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=120) as client:
        client.post("/api/v1/generate", json=body(model, 1, False)).raise_for_status()  # warm-up
        for _ in range(count):
            started = time.perf_counter()
            client.post("/api/v1/generate", json=body(model, 1, False)).raise_for_status()
            latencies.append(time.perf_counter() - started)
    median = statistics.median(latencies) * 1000
    print(f"{'':<44} short request (1 token): {median:7.2f} ms median of {count}")
    return median


def measure(name: str, url: str, model: Path, args: argparse.Namespace) -> dict[str, float]:
    stream = asyncio.run(
        bench_http(
            name, url + "/api/v1/generate", body(model, args.tokens, True), args.tokens, args.runs, False
        )
    )
    return {**stream, "request_ms": short_requests(url, model, args.requests)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=256, help="tokens per streamed generation")
    parser.add_argument("--runs", type=int, default=5, help="streamed runs (median reported)")
    parser.add_argument("--requests", type=int, default=50, help="short requests (median reported)")
    args = parser.parse_args()
    from ray.cluster_utils import Cluster

    from tests.tiny_models import build_tiny_gguf

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = build_tiny_gguf(workdir / "models" / "llamacpp_binding" / "tiny.gguf").resolve()
        print(f"model {model.name}, {args.tokens} tokens, {args.runs} runs, 1 thread\n")
        (workdir / "local").mkdir()
        server = start_server(model, workdir / "local", 1)
        try:
            local = measure("local mode (pool in the server process)", server.url, model, args)
        finally:
            server.stop()

        store = 80 * 2**20
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 2, "object_store_memory": store, "include_dashboard": False},
        )
        try:
            cluster.add_node(num_cpus=2, num_gpus=1, resources={"gpu0": 1}, object_store_memory=store)
            (workdir / "ray").mkdir()
            ray_section = {
                "mode": "ray",
                "address": cluster.address,
                "pools": {"default": {"num_gpus": 1, "resources": {"gpu0": 1}}},
            }
            gateway = start_server(model, workdir / "ray", 1, cluster=ray_section)
            try:
                ray = measure("ray mode (pool actor on another node)", gateway.url, model, args)
            finally:
                gateway.stop()
        finally:
            cluster.shutdown()

    print("\nray mode against local mode")
    print(f"  TTFT            {ray['ttft_ms']:8.2f} ms vs {local['ttft_ms']:8.2f} ms")
    print(
        f"  tokens/s        {ray['tokens_per_s']:8.1f}    vs {local['tokens_per_s']:8.1f}"
        f"    ({ray['tokens_per_s'] / local['tokens_per_s']:.2f}x)"
    )
    overhead = ray["request_ms"] - local["request_ms"]
    print(f"  short request   {ray['request_ms']:8.2f} ms vs {local['request_ms']:8.2f} ms")
    per_token = (1 / ray["tokens_per_s"] - 1 / local["tokens_per_s"]) * 1e6
    print(f"  per-request overhead of the Ray path: {overhead:.2f} ms; per token: {per_token:.1f} us")


if __name__ == "__main__":
    main()
