"""Benchmark: the per-request cost of per-key quotas, in memory (one server process) against the
file the worker processes of a host share (``core/quota_store.py``) and, with ``--ray``, the
quota actor every gateway of a Ray cluster shares (``core/quota_cluster.py``).

One "request" is what ``GenerationService`` does for a key with all four limits set: admitting
(check, count it waiting), leaving the queue, started, its end, and its generated tokens. The same
loop runs on ``KeyQuotas`` and on ``SharedKeyQuotas`` (a file in a temp folder), then again on the
shared store while ``--contenders`` other processes run the same loop on the same file (the
``--workers N`` case): each at 200 requests per second (far more than a generation server
takes), then in a tight loop (the worst case: the file lock is almost never free). Prints the
mean, p50 and p99 microseconds per request and the mean's ratio to memory.

``--ray`` then runs the awaited path (``async with quotas.admit``, ``await queued.start()``, as
``GenerationService`` does) on ``KeyQuotas`` and on ``ClusterKeyQuotas`` against the quota actor
of a local Ray instance (started here: run it where Ray may listen, e.g. in a network namespace
with only loopback, ``unshare -n``), side by side, alternating rounds of each so that both see
the same machine (and, through the actor, a key with requests and tokens per minute only:
nothing to hold there), at 200 requests per second then in a tight loop (where the calls sent without
waiting pile up in the actor ahead of the next admission); the ratio is to the in-memory
awaited path.

    python scripts/bench_quotas.py [--requests 3000] [--contenders 1] [--ray [--ray-requests 1000]]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

from lollms_server.core.quota_store import SharedKeyQuotas
from lollms_server.core.quotas import KeyQuotas, Quotas
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


RATES_ONLY = Principal(name="rates", limits=KeyLimits(requests_per_minute=10**7, tokens_per_minute=10**9))
"""A key with requests and tokens per minute only: nothing to hold in the cluster's actor."""


async def one_awaited_request(quotas: Quotas, principal: Principal = PRINCIPAL) -> None:
    async with quotas.admit(principal) as queued:
        end = await queued.start()
    quotas.add_tokens(principal, 16)
    end()


async def timed_awaited(
    stores: dict[str, tuple[Quotas, Principal]], requests: int, pause: float, rounds: int = 10
) -> dict[str, list[float]]:
    """Per store (and key), the cost of ``requests`` awaited requests, in alternating rounds,
    ``pause`` seconds apart (not timed)."""
    for quotas, principal in stores.values():
        for _ in range(50):  # warm up
            await one_awaited_request(quotas, principal)
    costs: dict[str, list[float]] = {name: [] for name in stores}
    for _ in range(rounds):
        for name, (quotas, principal) in stores.items():
            for _ in range(requests // rounds):
                started = time.perf_counter()
                await one_awaited_request(quotas, principal)
                costs[name].append(time.perf_counter() - started)
                if pause:
                    await asyncio.sleep(pause)
    return costs


def bench_ray(requests: int) -> None:
    import ray

    from lollms_server.core.config import ClusterConfig
    from lollms_server.core.pools.ray_cluster import connect
    from lollms_server.core.quota_cluster import QUOTA_ACTOR, ClusterKeyQuotas

    cluster = ClusterConfig(mode="ray", namespace="lollms-bench-quotas")
    connect(cluster)  # a local Ray instance, joined from this thread
    ray_quotas = ClusterKeyQuotas(cluster, KeyQuotas())
    paces = (("at 200 requests/s", 0.005), ("in a tight loop (worst case)", 0.0))

    async def run() -> dict[str, dict[str, list[float]]]:
        async with ray_quotas.admit(PRINCIPAL):  # starts the actor
            pass
        assert ray_quotas._actor is not None, "the quota actor did not answer"
        results = {}
        for label, pause in paces:
            stores: dict[str, tuple[Quotas, Principal]] = {
                "memory": (KeyQuotas(), PRINCIPAL),
                "ray": (ray_quotas, PRINCIPAL),
                "ray, rates only": (ray_quotas, RATES_ONLY),
            }
            results[label] = await timed_awaited(stores, requests, pause)
        actor, trips, sends = ray_quotas._actor, [], []
        for _ in range(300):  # what a request is made of: round trips and calls sent without waiting
            started = time.perf_counter()
            await actor.ready.remote()
            trips.append(time.perf_counter() - started)
            started = time.perf_counter()
            actor.ready.remote()
            sends.append(time.perf_counter() - started)
            await asyncio.sleep(0.005)
        results["parts"] = {"one round trip to the actor": trips, "one call sent without waiting": sends}
        await asyncio.sleep(0.5)  # the last ends reach the actor
        await ray_quotas.refresh()
        usage = ray_quotas.usage()
        assert usage["bench"]["running"] == usage["rates"]["running"] == 0, usage
        return results

    try:
        results = asyncio.run(run())
        parts = results.pop("parts")
        for label, costs in results.items():
            memory = report(f"awaited path, in memory, {label}", costs["memory"], None)
            report(f"awaited path, quota actor (local Ray), {label}", costs["ray"], memory)
            report(f"  the same, a key with rates only, {label}", costs["ray, rates only"], memory)
        for name, part in parts.items():
            report(name, part, None)
    finally:
        ray.kill(ray.get_actor(QUOTA_ACTOR, namespace=cluster.namespace))
        ray.shutdown()


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
    print(f"{name:<60} mean {mean:8.1f} us  p50 {p50:8.1f} us  p99 {p99:8.1f} us{ratio}")
    return mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--contenders", type=int, default=1)
    parser.add_argument("--ray", action="store_true", help="also the quota actor of a local Ray instance")
    parser.add_argument("--ray-requests", type=int, default=1000)
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
    if args.ray:
        bench_ray(args.ray_requests)


if __name__ == "__main__":
    main()
