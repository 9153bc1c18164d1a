"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServerMetrics:
    """Requests, latency, tokens, queue depth, batch size and adapter cache events."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "qlora_hub_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "qlora_hub_request_seconds",
            "Request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "qlora_hub_time_to_first_token_seconds",
            "Time to first token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("qlora_hub_tokens", "Tokens in and out", ["kind"], registry=r)
        self.batch_rows = Histogram(
            "qlora_hub_batch_rows",
            "Rows per forward pass",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.finished = Counter(
            "qlora_hub_finished_requests",
            "Generation requests by how they ended (stop, length, cancelled, timeout, error)",
            ["reason"],
            registry=r,
        )
        self.generated = Counter(
            "qlora_hub_generated_tokens",
            "Tokens the engine generated, by how their request ended",
            ["reason"],
            registry=r,
        )
        self.adapter_events = Counter(
            "qlora_hub_adapter_events",
            "Adapter loads, evictions and refusals",
            ["event"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "qlora_hub_queue_depth", "Requests waiting to join the batch", registry=r
        )
        self.active_rows = Gauge("qlora_hub_active_rows", "Rows decoding", registry=r)
        self.resident = Gauge(
            "qlora_hub_adapters_resident", "Resident adapter versions", registry=r
        )
        self.resident_bytes = Gauge(
            "qlora_hub_adapters_resident_bytes", "Bytes of resident adapters", registry=r
        )

    def bind(
        self,
        queue_depth: Callable[[], float],
        active_rows: Callable[[], float],
        resident: Callable[[], float],
        resident_bytes: Callable[[], float],
    ) -> None:
        """Read live gauges from the engine and cache at scrape time."""
        self.queue_depth.set_function(queue_depth)
        self.active_rows.set_function(active_rows)
        self.resident.set_function(resident)
        self.resident_bytes.set_function(resident_bytes)

    def observe_finish(self, reason: str, completion_tokens: int) -> None:
        """Count a request that left the engine and the tokens it generated (engine thread)."""
        self.finished.labels(reason).inc()
        self.generated.labels(reason).inc(completion_tokens)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
