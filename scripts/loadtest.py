"""Bounded load test: concurrent clients mixing streamed text and media requests against a
lollms_server on 127.0.0.1; reports throughput, latency percentiles, errors and server RSS.

Without --url it starts its own server on the tiny test models (a llama.cpp GGUF and, when
torch and diffusers are installed, a tiny Stable Diffusion).

    python scripts/loadtest.py --clients 32 --duration 120 [--media-share 0.2]
    python scripts/loadtest.py --url http://127.0.0.1:9601 --key KEY --pid PID --text-model llm/x.gguf
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
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
KEY = "loadtest-key-0123456789"


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_server(workdir: Path, with_media: bool) -> ServerProcess:
    from tests.processes import start_lollms
    from tests.tiny_models import build_tiny_gguf

    build_tiny_gguf(workdir / "models" / "llamacpp_binding" / "tiny.gguf")
    bindings: dict[str, Any] = {"llm": {"type": "llamacpp_binding", "n_threads": 1, "n_ctx": 2048}}
    if with_media:
        from tests.tiny_media_models import build_tiny_stable_diffusion

        build_tiny_stable_diffusion(workdir / "models" / "diffusers_binding" / "tiny-sd")
        bindings["images"] = {"type": "diffusers_binding", "device": "cpu", "pool": "gpu"}
    config = {
        "server": {"auto_install_requirements": False},
        "logging": {"level": "WARNING"},
        "paths": {"models_folder": str(workdir / "models")},
        "security": {"api_keys": [KEY]},
        "resource_manager": {
            "pools": {
                "default": {"limit": 1, "queue_size": 256, "queue_timeout": 300},
                "gpu": {"limit": 1, "queue_size": 256, "queue_timeout": 300},
            }
        },
        "bindings": bindings,
    }
    return start_lollms(config, workdir)


async def client_loop(
    client: httpx.AsyncClient,
    deadline: float,
    media_share: float,
    text_model: str,
    image_model: str | None,
    results: list[tuple[str, float, bool, int]],
) -> None:
    rng = random.Random()
    while time.monotonic() < deadline:
        media = image_model is not None and rng.random() < media_share
        started = time.monotonic()
        tokens = 0
        try:
            if media:
                instance, _, model = str(image_model).partition("/")
                response = await client.post(
                    "/api/v1/generate",
                    json={
                        "generation_type": "tti",
                        "binding_name": instance,
                        "model_name": model,
                        "input_data": [{"type": "text", "role": "user_prompt", "data": "a red cat"}],
                        "parameters": {"width": 64, "height": 64, "steps": 2},
                    },
                )
                ok = response.status_code == 200
            else:
                instance, _, model = text_model.partition("/")
                body = {
                    "prompt": "Tell me a story",
                    "binding_name": instance,
                    "model_name": model or None,
                    "stream": True,
                    "parameters": {"max_tokens": 64, "ignore_eos": True},
                }
                ok = False
                async with client.stream("POST", "/api/v1/generate", json=body) as response:
                    async for line in response.aiter_lines():
                        if line.startswith('data: {"type":"final"'):
                            ok = True
                            tokens = 64
                        elif line.startswith('data: {"type":"error"'):
                            ok = False
        except httpx.HTTPError:
            ok = False
        results.append(("media" if media else "text", time.monotonic() - started, ok, tokens))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


async def run(
    url: str,
    key: str,
    clients: int,
    duration: float,
    media_share: float,
    text_model: str,
    image_model: str | None,
) -> list[tuple[str, float, bool, int]]:
    results: list[tuple[str, float, bool, int]] = []
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(
        base_url=url, headers={"X-API-Key": key}, timeout=600, limits=limits
    ) as client:
        deadline = time.monotonic() + duration
        await asyncio.gather(
            *(
                client_loop(client, deadline, media_share, text_model, image_model, results)
                for _ in range(clients)
            )
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds")
    parser.add_argument("--media-share", type=float, default=0.2, help="share of image requests")
    parser.add_argument("--url", help="target server (default: start one on tiny models)")
    parser.add_argument("--key", default=KEY)
    parser.add_argument("--pid", type=int, help="server pid, for RSS (with --url)")
    parser.add_argument("--text-model", default="llm/tiny.gguf", help="<instance>/<model> for streamed text")
    parser.add_argument(
        "--image-model", default=None, help="<instance>/<model> for images (default: tiny SD)"
    )
    args = parser.parse_args()
    process = None
    with tempfile.TemporaryDirectory() as tmp:
        image_model = args.image_model
        if args.url is None:
            try:
                import diffusers  # noqa: F401

                with_media = args.media_share > 0
            except ImportError:
                with_media = False
            process = start_server(Path(tmp), with_media)
            url, pid = process.url, process.process.pid
            image_model = image_model or ("images/tiny-sd" if with_media else None)
        else:
            url, pid = args.url, args.pid  # type: ignore[assignment]
        try:
            # warm-up: load every model once, so RSS growth below means growth under load
            asyncio.run(
                run(url, args.key, 2, 0.01, 1.0 if image_model else 0.0, args.text_model, image_model)
            )
            asyncio.run(run(url, args.key, 1, 0.01, 0.0, args.text_model, image_model))
            before = rss_mb(pid)
            started = time.monotonic()
            results = asyncio.run(
                run(
                    url, args.key, args.clients, args.duration, args.media_share, args.text_model, image_model
                )
            )
            elapsed = time.monotonic() - started
            after = rss_mb(pid)
        finally:
            if process is not None:
                process.stop()
    errors = sum(1 for result in results if not result[2])
    print(
        f"{args.clients} clients, {elapsed:.0f} s, {len(results)} requests, {errors} errors, "
        f"{len(results) / elapsed:.1f} req/s, {sum(r[3] for r in results) / elapsed:.0f} tokens/s"
    )
    for kind in ("text", "media"):
        latencies = [result[1] for result in results if result[0] == kind and result[2]]
        if latencies:
            p50, p95, p99 = (percentile(latencies, fraction) * 1000 for fraction in (0.5, 0.95, 0.99))
            print(
                f"  {kind:<6} n={len(latencies):<6} p50 {p50:8.0f} ms  p95 {p95:8.0f} ms  p99 {p99:8.0f} ms"
                f"  mean {statistics.mean(latencies) * 1000:8.0f} ms"
            )
    if before is not None and after is not None:
        print(f"  server RSS {before:.0f} MB -> {after:.0f} MB ({after - before:+.0f} MB)")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
