"""``kargo-bitbucket deliveries``: the text shown for a delivery that had no candidate."""

from __future__ import annotations

import msgspec
import orjson
import pytest

from kargo_bitbucket.cli.common import print_document
from kargo_bitbucket.cli.deliveries import describe
from tests.builders import delivery_record


def test_a_push_with_no_candidate_says_no_warehouse_subscribes() -> None:
    shown = describe(
        delivery_record(
            message="refreshed 0 warehouse(s)",
            repository=["https://bitbucket.org/acme/api"],
            refs=["refs/heads/x"],
        )
    )
    assert "no Warehouse in the receiver's scope subscribes to this repository" in shown
    assert "Promotion" not in shown


def test_a_pr_event_with_no_candidate_says_no_promotion_waits() -> None:
    shown = describe(
        delivery_record(
            event="pr:declined",
            message="refreshed 0 promotion(s)",
            pr_url="https://bitbucket.example.com/projects/ACME/repos/api/pull-requests/8",
        )
    )
    assert "no Running Promotion in the receiver's scope waits on this pull request" in shown
    assert "Warehouse" not in shown


def test_a_refused_delivery_gets_no_such_sentence() -> None:
    shown = describe(delivery_record(status=401, result="bad-signature", message="unauthorized"))
    assert "no Running Promotion" not in shown and "no Warehouse" not in shown


def test_json_output_escapes_c1_controls_a_sender_wrote(capsys: pytest.CaptureFixture[str]) -> None:
    """An unsigned sender's X-Event-Key bytes 0x80-0x9F reach the record as C1 controls
    (U+009B is a terminal's CSI): ``-o json`` shows them escaped, as the table does."""
    record = delivery_record(event="k\x9b31mRED", delivery_id="u-\x85\x9d0;x\x9c")
    print_document(msgspec.to_builtins([record]), "json")
    shown = capsys.readouterr().out
    assert not any("\x80" <= c <= "\x9f" for c in shown)
    assert "k\\u009b31mRED" in shown
    (again,) = orjson.loads(shown)
    assert (again["event"], again["delivery_id"]) == ("k\x9b31mRED", "u-\x85\x9d0;x\x9c")
