"""The one backoff every Kubernetes retry loop uses, and its one-line-per-outage logging."""

from __future__ import annotations

import logging
from collections import Counter

import httpx2 as httpx
import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import Status

from kargo_bitbucket.store.backoff import (
    RETRY_AFTER_LIMIT,
    Backoff,
    Outage,
    describe,
    failure_reason,
    retry_after,
)


def test_delays_double_from_base_to_the_cap() -> None:
    longest = Backoff(0.4, 30.0, jitter=lambda: 1.0)
    assert [longest.delay() for _ in range(9)] == [0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30, 30]


def test_jitter_draws_from_the_upper_half_of_each_step() -> None:
    shortest = Backoff(0.4, 30.0, jitter=lambda: 0.0)
    assert [shortest.delay() for _ in range(3)] == [0.2, 0.4, 0.8]
    random = Backoff(0.4, 30.0)
    for failures in range(1, 40):
        step = min(30.0, 0.4 * 2 ** (failures - 1))
        assert step / 2 <= random.delay() <= step


def test_no_overflow_after_days_of_failures() -> None:
    backoff = Backoff(0.4, 30.0, jitter=lambda: 1.0)
    for _ in range(100_000):
        delay = backoff.delay()
    assert delay == 30.0


def test_retry_after_is_honoured_when_longer_and_limited() -> None:
    backoff = Backoff(0.4, 30.0, jitter=lambda: 1.0)
    assert backoff.delay(retry_after=5) == 5
    assert backoff.delay(retry_after=0.1) == 0.8  # shorter than the backoff: the backoff wins
    assert backoff.delay(retry_after=86_400) == RETRY_AFTER_LIMIT


def test_reset_starts_again_from_base() -> None:
    backoff = Backoff(1.0, 30.0, jitter=lambda: 1.0)
    for _ in range(6):
        backoff.delay()
    backoff.reset()
    assert backoff.delay() == 1.0


def test_retry_after_header_in_seconds() -> None:
    def refusal(value: str | None) -> httpx.HTTPStatusError:
        request = httpx.Request("GET", "https://kube.test/api")
        headers = {} if value is None else {"Retry-After": value}
        response = httpx.Response(429, headers=headers, request=request)
        return httpx.HTTPStatusError("429", request=request, response=response)

    assert retry_after(refusal("3")) == 3
    assert retry_after(refusal("1.5")) == 1.5
    assert retry_after(refusal(None)) == 0
    assert retry_after(refusal("Wed, 21 Oct 2015 07:28:00 GMT")) == 0
    assert retry_after(refusal("-4")) == 0
    assert retry_after(TimeoutError()) == 0
    assert retry_after(api_error(503)) == 0  # an ApiError built without a response


def api_error(code: int) -> ApiError:
    return ApiError(status=Status(code=code, message=f"refused with {code}"))


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (api_error(401), "unauthorized"),
        (api_error(403), "forbidden"),
        (api_error(410), "expired"),
        (api_error(429), "throttled"),
        (api_error(500), "server_error"),
        (api_error(503), "server_error"),
        (api_error(422), "refused"),
        (TimeoutError(), "timeout"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.ConnectError("refused"), "connection"),
        (ConnectionResetError(), "connection"),
        (ValueError("bad JSON line"), "invalid_response"),
    ],
)
def test_failure_reasons_are_a_fixed_vocabulary(error: BaseException, reason: str) -> None:
    assert failure_reason(error) == reason


def test_an_outage_logs_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counts: Counter[tuple[str, str]] = Counter()
    outage = Outage(
        logging.getLogger("test.outage"), "watch of Secret", kind="Secret", counts=counts
    )
    caplog.set_level(logging.INFO, logger="test.outage")
    for _ in range(50):
        outage.failed(api_error(403), 30.0)
    outage.recovered()
    outage.recovered()  # nothing more to say
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        (
            "WARNING",
            "watch of Secret failing (ApiError: refused with 403); "
            "retrying with backoff until it works",
        ),
        ("INFO", "watch of Secret works again after 50 failed attempt(s)"),
    ]
    assert counts == {("Secret", "forbidden"): 50}


def test_an_outage_names_the_object_and_may_count_another_kind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counts: Counter[tuple[str, str]] = Counter()
    outage = Outage(logging.getLogger("test.outage"), "status publication", counts=counts)
    caplog.set_level(logging.INFO, logger="test.outage")
    outage.failed(api_error(500), 1.0, kind="ProjectConfig", about="ProjectConfig demo")
    assert "(ProjectConfig demo: ApiError: refused with 500)" in caplog.records[0].getMessage()
    assert counts == {("ProjectConfig", "server_error"): 1}


def test_a_plain_http_refusal_is_described_by_status_and_path() -> None:
    request = httpx.Request(
        "GET",
        "https://api.example:6443/apis/kargo.akuity.io/v1alpha1/warehouses?watch=1&resourceVersion=7",
    )
    response = httpx.Response(429, request=request)
    error = httpx.HTTPStatusError(
        "Client error … For more information check: …", request=request, response=response
    )
    assert (
        describe(error)
        == "HTTP 429 Too Many Requests for GET /apis/kargo.akuity.io/v1alpha1/warehouses"
    )
    assert describe(api_error(500)) == "ApiError: refused with 500"
