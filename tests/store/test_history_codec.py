"""Delivery records in their JSON form: what the state file and /deliveries.json hold."""

from __future__ import annotations

import json

import msgspec
import pytest

from kargo_bitbucket.history import Candidate, DeliveryRecord, to_json
from kargo_bitbucket.outcomes import Outcome, Result
from tests.builders import delivery_record


def refreshed() -> DeliveryRecord:
    return delivery_record(
        "9f2c1d3e",
        result=Result.REFRESHED,
        repository=["https://bitbucket.org/org/app"],
        refs=["refs/heads/main"],
        candidates=[
            Candidate(
                kind="Warehouse",
                namespace="a",
                name="app",
                outcome=Outcome.REFRESHED,
                reason="refs/heads/main matches branch main",
            )
        ],
    )


def test_a_record_reads_back_as_written_with_its_result_and_outcomes_as_text() -> None:
    data = to_json(refreshed())
    plain = json.loads(data)
    assert plain["result"] == "refreshed"
    assert plain["candidates"][0]["outcome"] == "refreshed"
    assert plain["refs"] == ["refs/heads/main"] and plain["signed"] is True
    assert DeliveryRecord.from_json(data) == refreshed()


def test_a_record_another_version_wrote_reads_back_without_its_unknown_fields() -> None:
    plain = json.loads(to_json(refreshed()))
    plain["result"] = "a-result-from-the-future"
    plain["replica"] = "pod-2"
    for record in (DeliveryRecord.from_dict(plain), DeliveryRecord.from_json(json.dumps(plain))):
        assert record.result == "a-result-from-the-future"
        assert record.candidates[0].name == "app"


def test_something_else_is_refused_naming_what_is_wrong() -> None:
    with pytest.raises(msgspec.ValidationError, match="status"):
        DeliveryRecord.from_dict({**json.loads(to_json(refreshed())), "status": "ok"})


def test_a_list_of_records_is_one_json_array() -> None:
    assert [r["delivery_id"] for r in json.loads(to_json([refreshed(), refreshed()]))] == [
        "9f2c1d3e",
        "9f2c1d3e",
    ]
