"""Benchmark: fair share across API keys against strict FIFO, on a pool of limit 1.

Runs a ``ResourceManager`` in this process (no server, no model: a held slot is a real
``asyncio.sleep``) and, in the same run:
  (a) the flood: one key keeps 20 requests of ``--flood-hold`` seconds queued (each one sent
      again as soon as it is served), while two light keys send a request of ``--light-hold``
      seconds every ``--interval`` seconds. The same load runs at the same time on a ``fifo``
      pool and on a ``fair`` pool; it prints the p50/p95 queue wait of the light keys under
      each policy and their ratio (fifo / fair: higher means fair serves the light keys sooner),
      and the flood key's share of the slot;
  (b) the weights: three keys of weights 1, 2 and 4, always backlogged on a ``fair`` pool, and
      the share of slot-seconds each got against its weight's share (1.00 is exact).

    python scripts/bench_fairness.py [--duration 15] [--flood-hold 0.2] [--light-hold 0.05]
                                     [--interval 1.0] [--weights-duration 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import defaultdict
from typing import Literal

from lollms_server.core.config import PoolConfig, ResourceManagerConfig
from lollms_server.core.resource_manager import ResourceManager, Ticket

LIGHT_KEYS = ("light-1", "light-2")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


class Load:
    """Queue waits per key on one pool (every request sent), and slot-seconds per key (of the
    grants before ``until``: the backlog that drains after it would blur the shares)."""

    def __init__(self, manager: ResourceManager, pool: str, until: float) -> None:
        self.manager = manager
        self.pool = pool
        self.until = until
        self.waits: dict[str, list[float]] = defaultdict(list)
        self.held: dict[str, float] = defaultdict(float)
        self.grants: dict[str, int] = defaultdict(int)

    async def request(self, ticket: Ticket, hold: float) -> None:
        started = time.perf_counter()
        async with self.manager.slot(self.pool, ticket):
            granted = time.perf_counter()
            self.waits[ticket.key].append(granted - started)
            await asyncio.sleep(hold)
            if granted < self.until:
                self.grants[ticket.key] += 1
                self.held[ticket.key] += time.perf_counter() - granted

    async def backlog(self, ticket: Ticket, hold: float, concurrency: int, until: float) -> None:
        """Keep ``concurrency`` requests of ``ticket`` in the pool until ``until``."""

        async def loop() -> None:
            while time.perf_counter() < until:
                await self.request(ticket, hold)

        await asyncio.gather(*(loop() for _ in range(concurrency)))

    async def periodic(
        self, ticket: Ticket, hold: float, interval: float, start: float, until: float
    ) -> None:
        """One request of ``ticket`` every ``interval`` seconds (not waiting for the previous)."""
        tasks = []
        await asyncio.sleep(start)
        while time.perf_counter() < until:
            tasks.append(asyncio.create_task(self.request(ticket, hold)))
            await asyncio.sleep(interval)
        await asyncio.gather(*tasks)

    def shares(self) -> dict[str, float]:
        total = sum(self.held.values()) or 1.0
        return {key: held / total for key, held in self.held.items()}


def manager_for(policies: dict[str, Literal["fair", "fifo"]]) -> ResourceManager:
    pools = {
        name: PoolConfig(limit=1, queue_size=1000, queue_timeout=600, policy=policy)
        for name, policy in policies.items()
    }
    return ResourceManager(ResourceManagerConfig(pools=pools, default_pool=next(iter(pools))))


async def flood(args: argparse.Namespace) -> None:
    manager = manager_for({"fifo": "fifo", "fair": "fair"})
    until = time.perf_counter() + args.duration
    loads = {policy: Load(manager, policy, until) for policy in ("fifo", "fair")}
    work = []
    for load in loads.values():
        work.append(load.backlog(Ticket("flood"), args.flood_hold, 20, until))
        for index, key in enumerate(LIGHT_KEYS):  # the light keys start once the flood is queued
            offset = 0.5 + index * args.interval / len(LIGHT_KEYS)
            work.append(load.periodic(Ticket(key), args.light_hold, args.interval, offset, until))
    await asyncio.gather(*work)

    print(
        f"(a) flood: 20 queued requests of {args.flood_hold:g} s from one key, a {args.light_hold:g} s "
        f"request every {args.interval:g} s from each of {len(LIGHT_KEYS)} light keys, {args.duration:g} s"
    )
    print(f"{'policy':<8}{'light requests':>16}{'p50 wait ms':>14}{'p95 wait ms':>14}{'flood share':>14}")
    figures: dict[str, tuple[float, float]] = {}
    for policy, load in loads.items():
        waits = [wait for key in LIGHT_KEYS for wait in load.waits[key]]
        p50, p95 = statistics.median(waits), percentile(waits, 0.95)
        figures[policy] = (p50, p95)
        share = load.shares().get("flood", 0.0)
        print(f"{policy:<8}{len(waits):>16}{p50 * 1000:14.1f}{p95 * 1000:14.1f}{share:14.2f}")
    (fifo50, fifo95), (fair50, fair95) = figures["fifo"], figures["fair"]
    print(
        f"light-key wait fifo / fair: p50 {fifo50 / max(fair50, 1e-9):.1f}x, "
        f"p95 {fifo95 / max(fair95, 1e-9):.1f}x"
    )
    for policy in loads:
        pool = manager.pool(policy)
        print(
            f"{policy:<8}served {pool.served} in all, now queued {pool.queued}, "
            f"keys remembered {len(pool.usage())} (idle window)"
        )


async def weights(args: argparse.Namespace) -> None:
    manager = manager_for({"fair": "fair"})
    weights = {"w1": 1.0, "w2": 2.0, "w4": 4.0}
    until = time.perf_counter() + args.weights_duration
    load = Load(manager, "fair", until)
    await asyncio.gather(
        *(load.backlog(Ticket(key, weight), args.light_hold, 4, until) for key, weight in weights.items())
    )
    shares = load.shares()
    total = sum(weights.values())
    grants = sum(load.grants.values())
    print(
        f"\n(b) weights: three keys always backlogged (4 requests each of {args.light_hold:g} s), "
        f"{args.weights_duration:g} s, {grants} grants"
    )
    print(f"{'key':<8}{'weight':>8}{'grants':>8}{'share':>8}{'target':>8}{'share/target':>14}")
    for key, weight in weights.items():
        target = weight / total
        share = shares.get(key, 0.0)
        print(f"{key:<8}{weight:8g}{load.grants[key]:8d}{share:8.3f}{target:8.3f}{share / target:13.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of the flood scenario")
    parser.add_argument("--flood-hold", type=float, default=0.2, help="seconds each flood request holds")
    parser.add_argument("--light-hold", type=float, default=0.05, help="seconds each light request holds")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between a light key's requests")
    parser.add_argument("--weights-duration", type=float, default=8.0, help="seconds of the weights scenario")
    args = parser.parse_args()
    asyncio.run(flood(args))
    asyncio.run(weights(args))


if __name__ == "__main__":
    main()
