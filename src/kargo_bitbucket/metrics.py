"""Prometheus metrics, with label values drawn only from small fixed sets."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from kargo_bitbucket.core.events import HANDLED_EVENTS
from kargo_bitbucket.outcomes import Outcome, Result

KNOWN_EVENTS = HANDLED_EVENTS | {"diagnostics:ping"}
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BUCKET_LABELS = (*(repr(float(bound)) for bound in BUCKETS), "+Inf")

Family = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
ALERTED_REFRESHES = tuple(
    (kind, result)
    for kind in ("Warehouse", "Promotion")
    for result in (Outcome.REFRESHED, Outcome.GONE, Outcome.FAILED)
)
"""Refresh series shown from the start, at 0: an alert's ``increase()`` misses the first
count of a series that first appears at 1."""
ALERTED_DELIVERIES = tuple(
    (event, result)
    for event in sorted(HANDLED_EVENTS)
    for result in (Result.REFRESH_FAILED, Result.ERROR, Result.STORE_UNAVAILABLE)
)
"""Delivery series the failing-deliveries alert reads, shown from the start at 0 as
``ALERTED_REFRESHES`` are."""
SIGNATURE_REASONS = ("missing", "invalid")


def event_label(event_key: str) -> str:
    """The event key when it is one we know, else ``other`` (senders choose the header)."""
    key = event_key.strip().lower()
    return key if key in KNOWN_EVENTS else "other"


def _counter(
    name: str, documentation: str, labels: list[str], counts: Iterable[tuple[tuple[str, ...], int]]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for values, count in sorted(counts):
        family.add_metric(list(values), count)
    return family


class Metrics(Collector):
    """The process's metrics in a registry of their own.

    Deliveries are counted in plain dictionaries on the event loop (the only thread that
    answers them and serves ``/metrics``) and turned into metric families at scrape time:
    prometheus-client's own counters take a lock and a label lookup on every increment.
    """

    def __init__(
        self,
        sizes: Callable[[], Mapping[str, int]] = dict,
        restarts: Callable[[], Mapping[tuple[str, str], int]] = dict,
        api_failures: Callable[[], Mapping[tuple[str, str], int]] = dict,
        closed_connections: Callable[[], Iterable[tuple[str, int]]] = tuple,
        receivers: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        self.sizes = sizes
        self.restarts = restarts
        self.api_failures = api_failures
        self.closed_connections = closed_connections
        self.receivers = receivers
        """The configured receivers' ``namespace/name``: their signature failures are
        shown from the start, at 0, as ``ALERTED_REFRESHES`` are."""
        self.deliveries: Counter[tuple[str, str]] = Counter()
        self.refreshes: Counter[tuple[str, str]] = Counter()
        self.signature_failures: Counter[tuple[str, str]] = Counter()
        self.unknown_paths = 0
        self._buckets = [0] * (len(BUCKETS) + 1)
        self._duration_sum = 0.0
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

    def count_delivery(self, event: str, result: str, duration: float | None) -> None:
        """One answered delivery: its event and result, and how long it took from its body
        being read (None for a refusal before that: its sender chose how long it took)."""
        self.deliveries[event, result] += 1
        if duration is None:
            return
        self._buckets[bisect_left(BUCKETS, duration)] += 1
        self._duration_sum += duration

    def count_refresh(self, kind: str, result: str, count: int = 1) -> None:
        """Objects a delivery refreshed, found gone, or failed to refresh."""
        self.refreshes[kind, result] += count

    def count_signature_failure(self, reason: str, receiver: str) -> None:
        """One delivery refused for its signature (``missing`` or ``invalid``).

        ``receiver`` is a configured receiver's ``namespace/name``, never the request path.
        """
        self.signature_failures[reason, receiver] += 1

    def count_unknown_path(self) -> None:
        """One request to a path no receiver has (answered 404)."""
        self.unknown_paths += 1

    def collect(self) -> Iterable[Family]:
        """Every family, read at scrape time."""
        deliveries = dict.fromkeys(ALERTED_DELIVERIES, 0) | self.deliveries
        yield _counter(
            "kargo_bitbucket_deliveries",
            "Deliveries answered, by event key and result",
            ["event", "result"],
            deliveries.items(),
        )
        cumulative = 0
        buckets = []
        for label, count in zip(BUCKET_LABELS, self._buckets, strict=True):
            cumulative += count
            buckets.append((label, cumulative))
        yield HistogramMetricFamily(
            "kargo_bitbucket_delivery_duration_seconds",
            "Time from a delivery's body being read to its answer",
            buckets=buckets,
            sum_value=self._duration_sum,
        )
        refreshes = dict.fromkeys(ALERTED_REFRESHES, 0) | self.refreshes
        yield _counter(
            "kargo_bitbucket_refreshes",
            "Refresh patches, by kind and result (refreshed, gone, failed)",
            ["kind", "result"],
            refreshes.items(),
        )
        configured = ((r, n) for n in self.receivers() for r in SIGNATURE_REASONS)
        failures = dict.fromkeys(configured, 0) | self.signature_failures
        yield _counter(
            "kargo_bitbucket_signature_failures",
            "Deliveries refused for their signature (missing or invalid), by receiver",
            ["reason", "receiver"],
            failures.items(),
        )
        yield _counter(
            "kargo_bitbucket_unknown_path_requests",
            "Requests to a path no receiver has, answered 404 (no path label: scanners)",
            [],
            [((), self.unknown_paths)],
        )
        cache = GaugeMetricFamily(
            "kargo_bitbucket_cache_objects",
            "Objects held in the in-memory indexes",
            labels=["kind"],
        )
        for kind, count in self.sizes().items():
            cache.add_metric([kind], count)
        yield cache
        yield _counter(
            "kargo_bitbucket_watch_restarts",
            "Kubernetes watches restarted, by kind and reason (expired = 410 Gone)",
            ["kind", "reason"],
            self.restarts().items(),
        )
        yield _counter(
            "kargo_bitbucket_api_failures",
            "Kubernetes API requests failed and retried with backoff (list, watch, Secret, "
            "Lease, status), by kind and reason (forbidden, throttled, server_error, ...)",
            ["kind", "reason"],
            self.api_failures().items(),
        )
        yield _counter(
            "kargo_bitbucket_connections_closed",
            "Webhook connections the front door refused or closed, by reason "
            "(cap, idle-evicted, head-evicted, too-large, pipelined, header-timeout, "
            "body-timeout, write-timeout, keep-alive)",
            ["reason"],
            (((reason,), count) for reason, count in self.closed_connections()),
        )

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)
