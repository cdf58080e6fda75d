"""Prometheus metrics, with label values drawn only from small fixed sets."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kargo_bitbucket.core.events import HANDLED_EVENTS

KNOWN_EVENTS = HANDLED_EVENTS | {"diagnostics:ping"}
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def event_label(event_key: str) -> str:
    """The event key when it is one we know, else ``other`` (senders choose the header)."""
    key = event_key.strip().lower()
    return key if key in KNOWN_EVENTS else "other"


class _Live(Collector):
    """Gauges and counters read at scrape time from the running store."""

    def __init__(
        self,
        sizes: Callable[[], Mapping[str, int]],
        restarts: Callable[[], Mapping[tuple[str, str], int]],
    ) -> None:
        self.sizes = sizes
        self.restarts = restarts

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        cache = GaugeMetricFamily(
            "kargo_bitbucket_cache_objects",
            "Objects held in the in-memory indexes",
            labels=["kind"],
        )
        for kind, count in self.sizes().items():
            cache.add_metric([kind], count)
        yield cache
        restarts = CounterMetricFamily(
            "kargo_bitbucket_watch_restarts",
            "Kubernetes watches restarted, by kind and reason (expired = 410 Gone)",
            labels=["kind", "reason"],
        )
        for (kind, reason), count in self.restarts().items():
            restarts.add_metric([kind, reason], count)
        yield restarts


class Metrics:
    """The process's metrics in a registry of their own."""

    def __init__(
        self,
        sizes: Callable[[], Mapping[str, int]] = dict,
        restarts: Callable[[], Mapping[tuple[str, str], int]] = dict,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.deliveries = Counter(
            "kargo_bitbucket_deliveries",
            "Deliveries answered, by event key and result",
            ["event", "result"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "kargo_bitbucket_delivery_duration_seconds",
            "Time from a delivery's body being read to its answer",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.refreshes = Counter(
            "kargo_bitbucket_refreshes",
            "Refresh patches, by kind and result (refreshed, gone, failed)",
            ["kind", "result"],
            registry=self.registry,
        )
        self.signature_failures = Counter(
            "kargo_bitbucket_signature_failures",
            "Deliveries refused for their signature (missing or invalid)",
            ["reason"],
            registry=self.registry,
        )
        self.registry.register(_Live(sizes, restarts))
        self._delivery_children: dict[tuple[str, str], Any] = {}

    def count_delivery(self, event: str, result: str, duration: float) -> None:
        """One answered delivery (label children are looked up once, then reused)."""
        child = self._delivery_children.get((event, result))
        if child is None:
            child = self._delivery_children[(event, result)] = self.deliveries.labels(event, result)
        child.inc()
        self.duration.observe(duration)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)
