"""The stop-list attack of hardening round 3 (T3-03): one streamed request with a huge stop list,
whose output keeps matching a stop's prefix, against a victim chatting with the same llama.cpp
model. Prints the victim's latency before, during and after the attack, the slowest /health
answer, and the attacker's status, as one JSON line per attack.

The attacks: ``finding`` (30,000 stops of 301 characters, as measured in the review: 9 MB of
JSON) and ``bounded`` (the most a request may now send: 16 stops of 128 characters). The
attacker biases one token (the first of "0123456789" in the model's vocabulary, whose text T
repeated makes every stop) and decodes greedily, so its output T T T... keeps matching a stop's
prefix and the held text grows toward the longest stop.

Run it from a checkout's root (the server it starts imports that checkout's code):

    python scripts/bench_stop_attack.py [--attack finding|bounded|both] [--during 12]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path.cwd()
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

KEY = "bench-key-0123456789"


def attacks(unit: str) -> dict[str, list[str]]:
    """The stop lists, made of the biased token's text ``unit`` repeated."""
    text = (unit * 400)[:300]
    return {
        "finding": 30_000 * ["x" + text] + [text + "Z"],
        "bounded": [f"{index:x}" + text[:126] for index in range(15)] + [text[:127] + "Z"],
    }


def victim(url: str) -> float:
    body = {
        "model": "llm",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 20,
        "temperature": 0,
    }
    started = time.monotonic()
    response = httpx.post(url + "/v1/chat/completions", json=body, headers={"X-API-Key": KEY}, timeout=300)
    response.raise_for_status()
    return round(time.monotonic() - started, 3)


class Health(threading.Thread):
    """GET /health every 50 ms; keeps the slowest answer."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.worst, self.running = url, 0.0, True

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while self.running:
                started = time.monotonic()
                client.get(self.url + "/health")
                self.worst = max(self.worst, time.monotonic() - started)
                time.sleep(0.05)


def attack(url: str, stops: list[str], token: int, during: float) -> dict[str, Any]:
    body = {
        "prompt": "hello",
        "binding_name": "llm",
        "stream": True,
        "parameters": {"stop": stops, "logit_bias": {str(token): 100}, "temperature": 0, "max_tokens": 400},
    }
    result: dict[str, Any] = {"before": [victim(url) for _ in range(3)]}
    health = Health(url)
    health.start()
    status: list[int] = []
    stop_attacker = threading.Event()

    def attacker() -> None:
        with httpx.Client(timeout=600) as client:
            with client.stream(
                "POST", url + "/api/v1/generate", json=body, headers={"X-API-Key": KEY}
            ) as answer:
                status.append(answer.status_code)
                for _ in answer.iter_raw():
                    if stop_attacker.is_set():
                        return

    thread = threading.Thread(target=attacker, daemon=True)
    thread.start()
    time.sleep(during)
    result["during"] = [victim(url) for _ in range(2)]
    stop_attacker.set()
    thread.join(60)
    time.sleep(2)
    result["after"] = [victim(url)]
    health.running = False
    health.join(30)
    result["attacker_status"] = status[0] if status else None
    result["health_worst_s"] = round(health.worst, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--attack", choices=("finding", "bounded", "both"), default="both")
    parser.add_argument("--during", type=float, default=12.0, help="seconds of attack before the victim asks")
    args = parser.parse_args()

    from tests.processes import start_lollms
    from tests.tiny_models import build_tiny_gguf

    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        build_tiny_gguf(workdir / "models" / "llamacpp_binding" / "tiny.gguf")
        config = {
            "server": {"auto_install_requirements": False, "max_request_bytes": 16 * 2**20},
            "paths": {"models_folder": str(workdir / "models")},
            "security": {"api_keys": [{"key": KEY, "name": "bench", "scopes": ["generate"]}]},
            "resource_manager": {"pools": {"default": {"limit": 4, "queue_size": 64, "queue_timeout": 300}}},
            "bindings": {
                "llm": {
                    "type": "llamacpp_binding",
                    "model_name": "tiny.gguf",
                    "n_ctx": 512,
                    "n_threads": 1,
                    "parallel": 4,
                }
            },
        }
        server = start_lollms(config, workdir, workdir / "server.log")
        try:
            headers = {"X-API-Key": KEY}
            tokens = httpx.post(
                server.url + "/api/v1/tokenize",
                json={"text": "0123456789", "binding_name": "llm"},
                headers=headers,
                timeout=60,
            ).json()["tokens"]
            unit = httpx.post(
                server.url + "/api/v1/detokenize",
                json={"tokens": tokens[:1], "binding_name": "llm"},
                headers=headers,
                timeout=60,
            ).json()["text"]
            lists = attacks(unit)
            names = ["finding", "bounded"] if args.attack == "both" else [args.attack]
            for name in names:
                measured = attack(server.url, lists[name], tokens[0], args.during)
                line = {"attack": name, "stops": len(lists[name]), "token_text": unit, **measured}
                print(json.dumps(line), flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
