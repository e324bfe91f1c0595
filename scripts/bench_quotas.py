"""Benchmark: the per-request cost of per-key quotas, in memory (one server process) against the
SQLite store the worker processes of a host share (``core/quota_store.py``).

One "request" is what ``GenerationService`` does for a key with all four limits set: admitting
(check, count it waiting), leaving the queue, started, its end, and its generated tokens. The same
loop runs on ``KeyQuotas`` and on ``SharedKeyQuotas`` (a file in a temp folder), then again on the
shared store while ``--contenders`` other processes run the same loop on the same file (the
``--workers N`` case): each at 200 requests per second (far more than a generation server
takes), then in a tight loop (the worst case: the file lock is almost never free). Prints the
mean, p50 and p99 microseconds per request and the mean's ratio to memory.

    python scripts/bench_quotas.py [--requests 3000] [--contenders 1]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

from lollms_server.core.quota_store import SharedKeyQuotas
from lollms_server.core.quotas import KeyQuotas
from lollms_server.core.security import KeyLimits, Principal

PRINCIPAL = Principal(
    name="bench",
    limits=KeyLimits(
        max_concurrent=10**6, max_queued=10**6, requests_per_minute=10**7, tokens_per_minute=10**9
    ),
)


def one_request(quotas: KeyQuotas) -> None:
    with quotas.admitting(PRINCIPAL) as queued:
        end = queued.started()
    quotas.add_tokens(PRINCIPAL, 16)
    end()


def timed(quotas: KeyQuotas, requests: int) -> list[float]:
    for _ in range(50):  # warm up
        one_request(quotas)
    costs = []
    for _ in range(requests):
        started = time.perf_counter()
        one_request(quotas)
        costs.append(time.perf_counter() - started)
    return costs


def contend(path: str, stop: multiprocessing.synchronize.Event, pause: float) -> None:  # type: ignore[name-defined]
    quotas = SharedKeyQuotas(Path(path))
    while not stop.is_set():
        one_request(quotas)
        if pause:
            time.sleep(pause)
    quotas.close()


def report(name: str, costs: list[float], baseline: float | None) -> float:
    mean = statistics.fmean(costs) * 1e6
    ordered = sorted(costs)
    p50, p99 = ordered[len(costs) // 2] * 1e6, ordered[int(0.99 * (len(costs) - 1))] * 1e6
    ratio = f"  x{mean / baseline:.1f} vs memory" if baseline else ""
    print(f"{name:<50} mean {mean:8.1f} us  p50 {p50:8.1f} us  p99 {p99:8.1f} us{ratio}")
    return mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--contenders", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "quotas.db"
        memory = report("in memory (1 process)", timed(KeyQuotas(), args.requests), None)
        shared = SharedKeyQuotas(path)
        report("shared store, alone", timed(shared, args.requests), memory)
        for label, pause in (("each at 200 requests/s", 0.005), ("each in a tight loop (worst case)", 0.0)):
            stop = multiprocessing.Event()
            others = [
                multiprocessing.Process(target=contend, args=(str(path), stop, pause))
                for _ in range(args.contenders)
            ]
            for process in others:
                process.start()
            time.sleep(1.0)
            try:
                name = f"shared, {args.contenders} other process(es) {label}"
                report(name, timed(shared, args.requests), memory)
            finally:
                stop.set()
                for process in others:
                    process.join()
        shared.close()


if __name__ == "__main__":
    main()
