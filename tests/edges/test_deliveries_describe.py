"""``kargo-bitbucket deliveries``: the text shown for a delivery that had no candidate."""

from __future__ import annotations

from kargo_bitbucket.cli.deliveries import describe
from kargo_bitbucket.history import DeliveryRecord


def _record(**fields: object) -> DeliveryRecord:
    base: dict[str, object] = {
        "time": "2026-12-07T22:29:45.952572Z",
        "receiver": "kargo-demo/bitbucket",
        "namespace": "kargo-demo",
        "event": "repo:push",
        "delivery_id": "c54b4504",
        "attempt": "1",
        "status": 200,
        "result": "refreshed",
        "message": "refreshed 0 warehouse(s)",
        "duration_ms": 0.1,
    }
    base.update(fields)
    return DeliveryRecord(**base)  # type: ignore[arg-type]


def test_a_push_with_no_candidate_says_no_warehouse_subscribes() -> None:
    shown = describe(_record(repository=["https://bitbucket.org/acme/api"], refs=["refs/heads/x"]))
    assert "no Warehouse in the receiver's scope subscribes to this repository" in shown
    assert "Promotion" not in shown


def test_a_pr_event_with_no_candidate_says_no_promotion_waits() -> None:
    shown = describe(
        _record(
            event="pr:declined",
            message="refreshed 0 promotion(s)",
            pr_url="https://bitbucket.example.com/projects/ACME/repos/api/pull-requests/8",
        )
    )
    assert "no Running Promotion in the receiver's scope waits on this pull request" in shown
    assert "Warehouse" not in shown


def test_a_refused_delivery_gets_no_such_sentence() -> None:
    shown = describe(_record(status=401, result="bad-signature", message="unauthorized"))
    assert "no Running Promotion" not in shown and "no Warehouse" not in shown
