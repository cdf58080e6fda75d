"""Refresh values and timestamps: RFC 3339 in UTC, microseconds where Kargo compares them."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import pytest

from kargo_bitbucket.store import base
from kargo_bitbucket.store.base import now_rfc3339


def test_formats_match_rfc3339_and_the_current_time() -> None:
    before = datetime.now(UTC)
    micro, plain = now_rfc3339(micro=True), now_rfc3339()
    after = datetime.now(UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", micro)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", plain)
    parsed = datetime.strptime(micro, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before <= parsed <= after


def test_each_second_is_formatted_anew(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([1_700_000_000_123_456_789, 1_700_000_000_999_999_999, 1_700_000_001_000_001_000])
    monkeypatch.setattr(time, "time_ns", lambda: next(clock))
    monkeypatch.setattr(base, "_second", [(-1, "")])
    assert now_rfc3339(micro=True) == "2023-11-14T22:13:20.123456Z"
    assert now_rfc3339(micro=True) == "2023-11-14T22:13:20.999999Z"
    assert now_rfc3339() == "2023-11-14T22:13:21Z"
