"""Prometheus metrics of one app (its own registry: no module-level state).

Requests by route template, method and status with latencies; tokens and generation seconds
by binding and API key name (never the key); and, read at scrape time from the pools'
snapshot, queue depth, active slots, waits, rejections and loaded models per pool, and each
device's memory ledger.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


ENGINE_COUNTERS = {
    "steps": "Decode steps of a model's batch engine.",
    "batch_sequences": "Sequences decoded, summed over the engine's steps (/ steps: batch size).",
    "batch_tokens": "Tokens decoded, summed over the engine's steps (prompt chunks included).",
    "batch_pieces": "Computes the engine's steps were split into (1 per step at best).",
    "decode_seconds": "Seconds the engine spent in the model's decode.",
    "sample_seconds": "Seconds the engine spent sampling and handling text after the decodes.",
    "deliver_seconds": "Seconds the engine spent handing each step's events to the server.",
    "shared_tokens": "Prompt tokens copied from another sequence's cache instead of computed.",
}


class PoolCollector(Collector):
    """Reads the pools' snapshot when Prometheus scrapes."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        state = self.snapshot()
        snapshot = state["pools"]
        gauges = {
            "queued": GaugeMetricFamily(
                "lollms_pool_queue_depth", "Requests waiting for a slot.", labels=["pool"]
            ),
            "active": GaugeMetricFamily("lollms_pool_active_slots", "Slots in use.", labels=["pool"]),
            "limit": GaugeMetricFamily("lollms_pool_slots", "Slots of the pool.", labels=["pool"]),
            "average_wait_seconds": GaugeMetricFamily(
                "lollms_pool_average_wait_seconds", "Average queue wait.", labels=["pool"]
            ),
            "max_wait_seconds": GaugeMetricFamily(
                "lollms_pool_max_wait_seconds", "Longest queue wait.", labels=["pool"]
            ),
            "memory_used_mb": GaugeMetricFamily(
                "lollms_pool_memory_used_mb", "Footprint of loaded models.", labels=["pool"]
            ),
        }
        counters = {
            "served": CounterMetricFamily("lollms_pool_served", "Slots granted.", labels=["pool"]),
            "rejected": CounterMetricFamily(
                "lollms_pool_rejected", "Requests refused: queue full.", labels=["pool"]
            ),
            "timed_out": CounterMetricFamily(
                "lollms_pool_timed_out", "Requests refused: queue timeout.", labels=["pool"]
            ),
        }
        loaded = GaugeMetricFamily("lollms_loaded_models", "Models resident in the pool.", labels=["pool"])
        footprint = GaugeMetricFamily(
            "lollms_model_footprint_mb", "Memory held by a loaded model.", labels=["pool", "binding", "model"]
        )
        host_up = GaugeMetricFamily(
            "lollms_pool_host_up",
            "1 when the worker process or Ray actor of a remote pool answers.",
            labels=["pool", "host"],
        )
        engine = {
            key: CounterMetricFamily(f"lollms_engine_{key}", text, labels=["pool", "binding", "model"])
            for key, text in ENGINE_COUNTERS.items()
        }
        for pool in snapshot:
            if "host_up" in pool:
                host_up.add_metric([pool["name"], pool["isolation"]], float(pool["host_up"]))
            for key, family in gauges.items():
                family.add_metric([pool["name"]], float(pool[key] or 0))
            for key, counter in counters.items():
                counter.add_metric([pool["name"]], float(pool[key]))
            loaded.add_metric([pool["name"]], float(len(pool["models"])))
            for model in pool["models"]:
                footprint.add_metric(
                    [pool["name"], model["binding"], model["model"]], float(model["footprint_mb"])
                )
                for key, value in (model.get("engine") or {}).items():
                    if key in engine:
                        engine[key].add_metric([pool["name"], model["binding"], model["model"]], float(value))
        yield from gauges.values()
        yield from counters.values()
        yield loaded
        yield footprint
        yield host_up
        yield from device_metrics(state.get("devices") or {})
        yield from engine.values()


def device_metrics(devices: dict[str, Any]) -> Iterator[Metric]:
    """The memory arbiters' ledgers (see ``DeviceArbiter.snapshot``): sizes in bytes, evictions
    by reason, waits for memory, refusals, and each model's measured / estimated footprint."""
    sizes = {
        key: GaugeMetricFamily(f"lollms_device_memory_{key}_bytes", text, labels=["device"])
        for key, text in (
            ("total", "Memory of the device (its cap when max_memory_mb is set)."),
            ("free", "What a new reservation may take now: min(ledger, probe) less the reserve."),
            ("reserved", "Memory the ledger hands to models."),
        )
    }
    evictions = CounterMetricFamily(
        "lollms_device_evictions", "Models evicted to make room, by reason.", labels=["device", "reason"]
    )
    waits = CounterMetricFamily(
        "lollms_device_memory_waits", "Loads that waited for memory.", labels=["device"]
    )
    wait_seconds = CounterMetricFamily(
        "lollms_device_memory_wait_seconds", "Seconds loads waited for memory.", labels=["device"]
    )
    rejections = CounterMetricFamily(
        "lollms_device_rejections",
        "Loads refused: memory (503 at the deadline) or too_large (422).",
        labels=["device", "reason"],
    )
    ratio = GaugeMetricFamily(
        "lollms_footprint_estimate_ratio",
        "Measured footprint / estimate of a loaded model (above 1: the estimate was short).",
        labels=["device", "binding", "model"],
    )
    for name, device in devices.items():
        total = device.get("limit_mb") if device.get("limit_mb") is not None else device.get("total_mb")
        for key, value in (
            ("total", total),
            ("free", device.get("free_mb")),
            ("reserved", device["reserved_mb"]),
        ):
            if value is not None:
                sizes[key].add_metric([name], float(value) * 2**20)
        for reason, count in device["evictions"].items():
            evictions.add_metric([name, reason], float(count))
        waits.add_metric([name], float(device["memory_waits"]))
        wait_seconds.add_metric([name], float(device["memory_wait_seconds"]))
        for reason, count in device["rejections"].items():
            rejections.add_metric([name, reason], float(count))
        for model in device["models"]:
            if model.get("measured_mb") is not None and model.get("estimate_mb"):
                ratio.add_metric(
                    [name, model["instance"], model["model"]],
                    float(model["measured_mb"]) / float(model["estimate_mb"]),
                )
    yield from sizes.values()
    yield from (evictions, waits, wait_seconds, rejections, ratio)


class Metrics:
    """The metrics of one app; ``render()`` gives the Prometheus text format."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lollms_requests", "HTTP requests.", ["route", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "lollms_request_seconds",
            "HTTP request latency.",
            ["route", "method"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.tokens = Counter(
            "lollms_tokens_generated", "Tokens generated.", ["binding", "key"], registry=self.registry
        )
        self.prompt_tokens = Counter(
            "lollms_prompt_tokens",
            "Prompt tokens of text generations; cache=hit: read from the binding's prompt cache "
            "(hit rate = hit / (hit + miss)).",
            ["binding", "cache"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "lollms_queue_wait_seconds",
            "Time a request waited for its pool slot.",
            ["pool", "key"],
            registry=self.registry,
            buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.rejections = Counter(
            "lollms_rejections",
            "Requests refused before a slot: queue_full, queue_timeout, rate_limit, concurrency.",
            ["pool", "reason"],
            registry=self.registry,
        )
        self.generation_seconds = Counter(
            "lollms_generation_seconds",
            "Seconds spent generating.",
            ["binding", "key", "generation_type"],
            registry=self.registry,
        )

        self.jobs = Counter(
            "lollms_jobs",
            "Async jobs by what happened to them here: submitted, succeeded, failed, cancelled.",
            ["generation_type", "event"],
            registry=self.registry,
        )

    def observe_job(self, generation_type: str, event: str) -> None:
        self.jobs.labels(generation_type, event).inc()

    def observe_admission(self, pool: str, key: str, wait_seconds: float) -> None:
        self.queue_wait.labels(pool, key).observe(max(wait_seconds, 0.0))

    def observe_rejection(self, pool: str, reason: str) -> None:
        self.rejections.labels(pool, reason).inc()

    def watch(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        """Report the pools of ``snapshot()`` (see ``PoolRegistry.snapshot``) at every scrape."""
        self.registry.register(PoolCollector(snapshot))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def observe_generation(
        self, binding: str, key: str, generation_type: str, seconds: float, tokens: int = 0
    ) -> None:
        self.generation_seconds.labels(binding, key, generation_type).inc(max(seconds, 0.0))
        if tokens:
            self.tokens.labels(binding, key).inc(tokens)

    def observe_prompt(self, binding: str, prompt_tokens: int, cached_tokens: int) -> None:
        if cached_tokens:
            self.prompt_tokens.labels(binding, "hit").inc(cached_tokens)
        if prompt_tokens > cached_tokens:
            self.prompt_tokens.labels(binding, "miss").inc(prompt_tokens - cached_tokens)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
