"""Requests to paths no receiver has: counted, and logged at debug at most once per interval.

A scanner can send thousands a second; the metric carries no path label (unbounded
cardinality) and the log line names one path, cut and escaped, plus how many came since.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from kargo_bitbucket.metrics import Metrics

log = logging.getLogger("kargo_bitbucket.app")

LOG_INTERVAL = 10.0
"""Seconds between two debug lines about unknown paths."""
PATH_SHOWN = 200
"""Characters of the path a log line shows."""


class UnknownPaths:
    """Counts requests answered 404 for their path; logs one of them every ``interval``."""

    def __init__(
        self,
        metrics: Metrics | None,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.interval = interval
        self.clock = clock
        self.unlogged = 0
        self.next_line = float("-inf")

    def seen(self, path: str) -> None:
        """One request to ``path``, which matches no receiver."""
        if self.metrics is not None:
            self.metrics.count_unknown_path()
        self.unlogged += 1
        if not log.isEnabledFor(logging.DEBUG):
            return
        now = self.clock()
        if now < self.next_line:
            return
        self.next_line = now + self.interval
        shown = path[:PATH_SHOWN].encode("unicode_escape").decode("ascii")
        log.debug(
            "404 for unknown path %s (%d unknown-path request(s) since the last such line)",
            shown,
            self.unlogged,
        )
        self.unlogged = 0
