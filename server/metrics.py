"""Prometheus metrics of one server (its own registry, so several apps can live in one process).

Per-adapter and per-team series are bounded: the first ``max_label_values`` adapters (and
teams) seen get their own label value, every later one is counted under ``other``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_GAP_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)
OTHER = "other"


class BoundedLabel:
    """Label values with a cap: the first ``limit`` distinct values pass, later ones are ``other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        """``value`` itself while it is (or can become) one of the ``limit`` kept values."""
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return OTHER


class ServerMetrics:
    """Requests, latency, tokens, queue depth, batch size, adapter cache and process metrics.

    Args:
        max_label_values: most distinct adapters (and, separately, teams) with their own
            label value; the rest share ``other`` (``serve.metrics_max_label_values``).
    """

    def __init__(self, max_label_values: int = 100) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, _cpu_seconds, _open_fds
        self.adapter_label = BoundedLabel(max_label_values)
        self.team_label = BoundedLabel(max_label_values)
        self.requests = Counter(
            "qlora_hub_requests",
            "HTTP requests by route and status; unknown paths count as route (unknown)",
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
        self.queue_time = Histogram(
            "qlora_hub_queue_seconds",
            "Time a generation request waited in the engine's queue before joining the batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "qlora_hub_inter_token_seconds",
            "Mean time between two generated tokens of a request (one observation per request)",
            buckets=TOKEN_GAP_BUCKETS,
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
        self.by_adapter = Counter(
            "qlora_hub_adapter_requests",
            "Generation requests by adapter, team and how they ended (bounded label values)",
            ["adapter", "team", "reason"],
            registry=r,
        )
        self.tokens_by_adapter = Counter(
            "qlora_hub_adapter_generated_tokens",
            "Generated tokens by adapter and team (bounded label values)",
            ["adapter", "team"],
            registry=r,
        )
        self.adapter_events = Counter(
            "qlora_hub_adapter_events",
            "Adapter cache: hit, miss, load, evict, refused",
            ["event"],
            registry=r,
        )
        self.rejected = Counter(
            "qlora_hub_rejected_requests",
            "Requests refused before any work: unauthorized, rate_limited, queue_full",
            ["reason"],
            registry=r,
        )
        self._refused = {
            reason: self.rejected.labels(reason)
            for reason in ("unauthorized", "rate_limited", "queue_full")
        }
        self.queue_depth = Gauge(
            "qlora_hub_queue_depth", "Requests waiting to join the batch", registry=r
        )
        self.active_rows = Gauge(
            "qlora_hub_active_rows", "Requests generating (decoding or prefilled)", registry=r
        )
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

    def refused(self, reason: str) -> None:
        """Count a request refused before any work (``unauthorized``, ``rate_limited`` or
        ``queue_full``; the children are bound once: a burst of refusals counts each in
        a dictionary lookup and an increment)."""
        self._refused[reason].inc()

    def observe_finish(self, req: Any, reason: str) -> None:
        """Count a request that left the engine (an ``Engine.on_finish`` callback; engine thread)."""
        tokens = len(req.generated)
        self.finished.labels(reason).inc()
        self.generated.labels(reason).inc(tokens)
        adapter, team = self.adapter_label(req.adapter), self.team_label(req.team or "-")
        self.by_adapter.labels(adapter, team, reason).inc()
        self.tokens_by_adapter.labels(adapter, team).inc(tokens)
        if req.joined_at is not None:
            self.queue_time.observe(max(0.0, req.joined_at - req.submitted))
        if tokens > 1 and req.first_token_at is not None and req.last_token_at is not None:
            self.inter_token.observe((req.last_token_at - req.first_token_at) / (tokens - 1))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
