"""Metrics counted per delivery read back as Prometheus would scrape them."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from kargo_bitbucket.metrics import Metrics, event_label


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.exposition().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def test_deliveries_are_counted_by_event_and_result() -> None:
    metrics = Metrics()
    metrics.count_delivery("repo:push", "refreshed", 0.002)
    metrics.count_delivery("repo:push", "refreshed", 0.003)
    metrics.count_delivery("other", "ignored", 0.0001)
    assert (
        value(metrics, "kargo_bitbucket_deliveries_total", event="repo:push", result="refreshed")
        == 2
    )
    assert value(metrics, "kargo_bitbucket_deliveries_total", event="other", result="ignored") == 1


def test_duration_histogram_buckets_are_cumulative_and_bounds_inclusive() -> None:
    metrics = Metrics()
    for duration in (0.0005, 0.001, 0.004, 0.2, 30.0):
        metrics.count_delivery("repo:push", "refreshed", duration)
    name = "kargo_bitbucket_delivery_duration_seconds_bucket"
    assert value(metrics, name, le="0.001") == 2  # 1 ms exactly falls in le="0.001"
    assert value(metrics, name, le="0.005") == 3
    assert value(metrics, name, le="0.25") == 4
    assert value(metrics, name, le="10.0") == 4
    assert value(metrics, name, le="+Inf") == 5
    assert value(metrics, "kargo_bitbucket_delivery_duration_seconds_count") == 5
    total = value(metrics, "kargo_bitbucket_delivery_duration_seconds_sum")
    assert total is not None and abs(total - 30.2055) < 1e-9


def test_refreshes_signature_failures_and_live_gauges() -> None:
    metrics = Metrics(lambda: {"warehouses": 7}, lambda: {("Warehouse", "expired"): 2})
    metrics.count_refresh("Warehouse", "refreshed")
    metrics.count_refresh("Promotion", "gone")
    metrics.count_signature_failure("invalid", "demo/hook")
    assert (
        value(metrics, "kargo_bitbucket_refreshes_total", kind="Warehouse", result="refreshed") == 1
    )
    assert value(metrics, "kargo_bitbucket_refreshes_total", kind="Promotion", result="gone") == 1
    assert (
        value(
            metrics,
            "kargo_bitbucket_signature_failures_total",
            reason="invalid",
            receiver="demo/hook",
        )
        == 1
    )
    assert value(metrics, "kargo_bitbucket_cache_objects", kind="warehouses") == 7
    assert (
        value(metrics, "kargo_bitbucket_watch_restarts_total", kind="Warehouse", reason="expired")
        == 2
    )


def test_unknown_event_keys_share_one_label_value() -> None:
    assert event_label(" Repo:Push ") == "repo:push"
    assert event_label("repo:push-but-not-really") == "other"
    assert event_label("x" * 1000) == "other"


def test_alerted_counters_start_at_zero_for_every_receiver_and_kind() -> None:
    """The PrometheusRule alerts on ``increase(...) > 0``: a series that first appears at 1
    shows no increase, so the first refused signature (which should alert at once) or
    failed refresh after a start would go unnoticed unless its series is already at 0."""
    metrics = Metrics(receivers=lambda: ["demo/hook"])
    name = "kargo_bitbucket_signature_failures_total"
    for reason in ("missing", "invalid"):
        assert value(metrics, name, reason=reason, receiver="demo/hook") == 0
    for kind in ("Warehouse", "Promotion"):
        for result in ("refreshed", "gone", "failed"):
            assert value(metrics, "kargo_bitbucket_refreshes_total", kind=kind, result=result) == 0
    metrics.count_signature_failure("invalid", "demo/hook")
    metrics.count_refresh("Warehouse", "failed", 2)
    assert value(metrics, name, reason="invalid", receiver="demo/hook") == 1
    assert value(metrics, name, reason="missing", receiver="demo/hook") == 0
    assert value(metrics, "kargo_bitbucket_refreshes_total", kind="Warehouse", result="failed") == 2


def test_failed_deliveries_start_at_zero_for_every_handled_event() -> None:
    """The failing-deliveries alert reads these results: their first count after a start
    must show as an increase too."""
    metrics = Metrics()
    name = "kargo_bitbucket_deliveries_total"
    for event in ("repo:push", "repo:refs_changed", "pullrequest:fulfilled", "pr:declined"):
        for result in ("refresh-failed", "error", "store-unavailable"):
            assert value(metrics, name, event=event, result=result) == 0
    assert value(metrics, name, event="other", result="error") is None
    metrics.count_delivery("repo:push", "refresh-failed", 0.01)
    assert value(metrics, name, event="repo:push", result="refresh-failed") == 1
