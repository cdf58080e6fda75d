"""What a request to a receiver came to, and what became of each object it considered.

Their values are a contract: the history, /deliveries.json, the log line and the metrics
labels show them as they are.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class Result(StrEnum):
    """The ``result`` of one request to a receiver's URL."""

    REFRESHED = "refreshed"
    REFRESH_FAILED = "refresh-failed"
    IGNORED = "ignored"
    PING = "ping"
    INVALID_PAYLOAD = "invalid-payload"
    MISSING_SIGNATURE = "missing-signature"
    BAD_SIGNATURE = "bad-signature"
    METHOD_NOT_ALLOWED = "method-not-allowed"
    BODY_TOO_LARGE = "body-too-large"
    BODY_TIMEOUT = "body-timeout"
    CLIENT_DISCONNECTED = "client-disconnected"
    STORE_UNAVAILABLE = "store-unavailable"
    BUSY = "busy"
    """The bodies being read at once held all the memory they may: try again."""
    ERROR = "error"


class Outcome(StrEnum):
    """What became of one candidate of a delivery."""

    REFRESHED = "refreshed"
    GONE = "gone"
    FAILED = "failed"
    NOT_REFRESHED = "not refreshed"


RefreshOutcome = Literal[Outcome.REFRESHED, Outcome.GONE, Outcome.FAILED]
"""What a store's refresh made of one target (one not refreshed was never tried)."""
