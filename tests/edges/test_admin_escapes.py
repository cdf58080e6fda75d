"""The admin listener's pages show what a sender wrote escaped, as the CLI does."""

from __future__ import annotations

import orjson

from kargo_bitbucket.admin import listing, render
from tests.builders import delivery_record

C1_AND_C0 = "\x9b31mRED\x85\x1b[2J\x07"


def _raw_controls(text: str) -> list[str]:
    return [c for c in text if (c < " " and c not in "\n") or "\x7f" <= c <= "\x9f"]


def test_the_deliveries_page_escapes_controls_a_sender_wrote() -> None:
    """``curl /deliveries`` in a terminal: an unsigned X-Event-Key's bytes 0x80-0x9F (C1,
    U+009B is CSI) and a signed payload's refs (C0) come out escaped, not obeyed."""
    record = delivery_record(
        event="k" + C1_AND_C0,
        delivery_id="u-" + C1_AND_C0,
        attempt=C1_AND_C0,
        repository=["https://bitbucket.org/a/b"],
        refs=["refs/heads/x" + C1_AND_C0],
        detail="d" + C1_AND_C0,
    )
    page = render([record], "ns" + C1_AND_C0, None)
    assert _raw_controls(page) == []
    assert "k\\x9b31mRED\\x85\\x1b[2J\\x07" in page


def test_deliveries_json_escapes_c1_controls_and_keeps_the_values() -> None:
    record = delivery_record(event="k" + C1_AND_C0, delivery_id="u-\x9d0;x\x9c")
    body = listing([record])
    assert _raw_controls(body.decode()) == []
    (again,) = orjson.loads(body)
    assert (again["event"], again["delivery_id"]) == ("k" + C1_AND_C0, "u-\x9d0;x\x9c")
