"""One delivery from signature to answer: checks 4 to 11 of SPEC §4 over a store and the core."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kargo_bitbucket.core import events
from kargo_bitbucket.core.decision import (
    REF_REASONS,
    Verdict,
    decide_pull_request,
    judge_push,
    pushed_identities,
)
from kargo_bitbucket.core.receivers import Route
from kargo_bitbucket.core.signature import SignatureCheck, check_signature
from kargo_bitbucket.history import Candidate, DeliveryRecord
from kargo_bitbucket.metrics import Metrics, event_label
from kargo_bitbucket.store.base import RefreshResult, Store, Target, now_rfc3339

log = logging.getLogger("kargo_bitbucket.delivery")

LISTED_CANDIDATES = 50
"""Candidates a delivery's record lists, those refreshed first; the rest are only counted."""
JUDGING_SLICE = 0.002
"""Seconds of matching after which a delivery lets the event loop run other work.

A 10,000-ref push to 1,000 Warehouses held the loop 9.4 s (issue 9); now its longest
step is 2.5 ms and /healthz answers within 42-56 ms meanwhile on 2 busy shared cores
(bench/huge_push.py). A small push never reaches one slice and pays nothing for this.
"""


@dataclass(slots=True)
class Answer:
    """The HTTP answer to a delivery, and what history, logs and metrics say about it."""

    status: int
    body: dict[str, Any]
    result: str
    event: events.Push | events.PullRequestClosed | None = None
    candidates: list[Candidate] = field(default_factory=list)
    refreshed: int = 0
    unlisted: int = 0
    """Candidates considered but left out of ``candidates`` (past LISTED_CANDIDATES)."""
    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)
    """(kind, outcome) of every candidate, listed or not: what metrics count."""


def delivery_id(headers: Mapping[str, str]) -> str:
    """Cloud's ``X-Request-UUID`` or Server's ``X-Request-Id``."""
    return headers.get("x-request-uuid") or headers.get("x-request-id") or ""


class Deliveries:
    """Handles authenticated work for routed requests; stateless but for one-time warnings."""

    def __init__(self, store: Store, metrics: Metrics | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self._newline_warned: set[tuple[str, str, str]] = set()

    async def handle(self, route: Route, headers: Mapping[str, str], body: bytes) -> Answer:
        """Answer one delivery whose body has been read within limits; record and log it."""
        started = time.perf_counter()
        event_key = headers.get("x-event-key", "").strip()
        try:
            answer = await self._handle(route, event_key, headers, body)
        except Exception:
            log.exception(
                "delivery failed unexpectedly",
                extra={"delivery": delivery_id(headers), "receiver": route.label},
            )
            answer = Answer(500, {"error": "internal error"}, "error")
        self._finish(route, event_key, headers, answer, time.perf_counter() - started)
        return answer

    def refused(
        self,
        route: Route,
        headers: Mapping[str, str],
        answer: Answer,
        duration: float,
    ) -> None:
        """Record, count and log a request to a receiver refused before its body was read."""
        self._finish(route, headers.get("x-event-key", "").strip(), headers, answer, duration)

    def _finish(
        self,
        route: Route,
        event_key: str,
        headers: Mapping[str, str],
        answer: Answer,
        duration: float,
    ) -> None:
        """What every answered request to a receiver leaves: history, metrics, one log line."""
        record = _record(route, event_key, headers, answer, duration)
        self.store.record(record)
        if self.metrics is not None:
            _count(self.metrics, event_key, answer, duration)
        log.info(
            "delivery %s",
            answer.result,
            extra={
                "receiver": record.receiver,
                "event": event_key,
                "delivery": record.delivery_id,
                "attempt": record.attempt,
                "status": answer.status,
                "result": answer.result,
                "refreshed": answer.refreshed,
                "duration_ms": record.duration_ms,
            },
        )

    async def _handle(
        self, route: Route, event_key: str, headers: Mapping[str, str], body: bytes
    ) -> Answer:
        if events.is_ping(event_key):
            return Answer(200, {"msg": "pong"}, "ping")
        signature = headers.get("x-hub-signature")
        if not signature:
            return Answer(401, {"error": "missing signature"}, "missing-signature")
        check = check_signature(signature, body, route.secret)
        if check is SignatureCheck.VALID_WITHOUT_TRAILING_NEWLINE:
            self._warn_trailing_newline(route, headers)
        elif check is not SignatureCheck.VALID:
            return Answer(401, {"error": "unauthorized"}, "bad-signature")
        if not events.is_handled(event_key):
            return Answer(200, {"msg": f"event {event_key} ignored"}, "ignored")
        try:
            event = events.parse_event(event_key, body)
        except events.NoRepositoryURL:
            return Answer(400, {"error": "payload has no repository URL"}, "invalid-payload")
        except events.InvalidPayload as error:
            return Answer(
                400, {"error": "invalid request body", "detail": error.detail}, "invalid-payload"
            )
        scope = route.owner.scope
        if isinstance(event, events.Push):
            pushed = pushed_identities(event)
            found = self.store.indexes.warehouses_for(pushed, scope)
            verdicts = await _judge_in_slices(judge_push(event, pushed, found))
            noun = "warehouse"
        else:
            waiting = self.store.indexes.promotions_waiting_on(event.pr_url, scope)
            verdicts = decide_pull_request(event.pr_url, waiting)
            noun = "promotion"
        for verdict in verdicts:
            for warning in verdict.warnings:
                log.warning(warning, extra={"delivery": delivery_id(headers)})
        answer = await self._refresh(verdicts, noun, headers, _note(event_key, event))
        answer.event = event
        return answer

    async def _refresh(
        self, verdicts: list[Verdict], noun: str, headers: Mapping[str, str], note: str
    ) -> Answer:
        """Refresh what the verdicts name; count only what still failed."""
        targets = [Target(v.kind, v.namespace, v.name) for v in verdicts if v.refresh]
        result = RefreshResult()
        if targets:
            result = await self.store.refresh(targets, now_rfc3339(micro=True), note)
        candidates, unlisted, outcomes = _candidates(verdicts, result)
        names = [f"{t.namespace}/{t.name}" if t.namespace else t.name for t in result.refreshed]
        extra = {"deliveryId": delivery_id(headers), "refreshed": names}
        refreshed = len(result.refreshed)
        if result.failed:
            error = f"failed to refresh {len(result.failed)} of {len(targets)} {noun}s"
            body = {"error": error, **extra}
            return Answer(
                500, body, "refresh-failed", None, candidates, refreshed, unlisted, outcomes
            )
        body = {"msg": f"refreshed {refreshed} {noun}(s)", **extra}
        return Answer(200, body, "refreshed", None, candidates, refreshed, unlisted, outcomes)

    def _warn_trailing_newline(self, route: Route, headers: Mapping[str, str]) -> None:
        """Say once per receiver that its Secret ends in a newline we had to strip."""
        key = (route.owner.kind, route.owner.namespace, route.name)
        if key in self._newline_warned:
            return
        self._newline_warned.add(key)
        log.warning(
            "receiver %s: signature only verifies without the trailing newline of its "
            "Secret; recreate the Secret without it (echo -n)",
            route.label,
            extra={"delivery": delivery_id(headers), "receiver": route.label},
        )


async def _judge_in_slices(judged: Iterator[Verdict | None]) -> list[Verdict]:
    """Every verdict of ``judge_push``, yielding to the loop after each JUDGING_SLICE."""
    verdicts = []
    pause = time.perf_counter() + JUDGING_SLICE
    for verdict in judged:
        if verdict is not None:
            verdicts.append(verdict)
        if time.perf_counter() >= pause:
            await asyncio.sleep(0)
            pause = time.perf_counter() + JUDGING_SLICE
    return verdicts


def _count(metrics: Metrics, event_key: str, answer: Answer, duration: float) -> None:
    """Metrics for one delivery: its event and result, signature failures, refreshes."""
    metrics.count_delivery(event_label(event_key), answer.result, duration)
    if answer.result in ("missing-signature", "bad-signature"):
        reason = "missing" if answer.result == "missing-signature" else "invalid"
        metrics.count_signature_failure(reason)
    for (kind, outcome), count in answer.outcomes.items():
        if outcome != "not refreshed":
            for _ in range(count):
                metrics.count_refresh(kind, outcome)


def _candidates(
    verdicts: list[Verdict], result: RefreshResult
) -> tuple[list[Candidate], int, dict[tuple[str, str], int]]:
    """Each verdict with what became of it: refreshed, gone, failed, or not refreshed.

    Lists at most LISTED_CANDIDATES, in verdict order, those due a refresh before the
    others; returns how many were left out and how many had each (kind, outcome).
    """
    outcome_of = {
        **{(t.kind, t.namespace, t.name): "gone" for t in result.gone},
        **{(t.kind, t.namespace, t.name): "failed" for t in result.failed},
        **{(t.kind, t.namespace, t.name): "refreshed" for t in result.refreshed},
    }
    tally: dict[tuple[str, str], int] = {}
    candidates = []
    for v in verdicts:
        outcome = outcome_of.get((v.kind, v.namespace, v.name), "not refreshed")
        tally[v.kind, outcome] = tally.get((v.kind, outcome), 0) + 1
        candidates.append(Candidate(v.kind, v.namespace, v.name, outcome, v.reason))
    if len(candidates) <= LISTED_CANDIDATES:
        return candidates, 0, tally
    due_first = sorted(range(len(verdicts)), key=lambda i: not verdicts[i].refresh)
    listed = [candidates[i] for i in sorted(due_first[:LISTED_CANDIDATES])]
    return listed, len(candidates) - len(listed), tally


def _note(event_key: str, event: events.Push | events.PullRequestClosed) -> str:
    """The sentence a Kubernetes Event on a refreshed object carries."""
    if isinstance(event, events.PullRequestClosed):
        return f"Bitbucket {event_key} of {event.pr_url}"
    refs = "unknown refs"
    if event.refs:
        more = len(event.refs) - REF_REASONS
        refs = ", ".join(event.refs[:REF_REASONS]) + (f" and {more} more" if more > 0 else "")
    repository = event.repo_urls[0] if event.repo_urls else "?"
    return f"Bitbucket {event_key} to {repository} ({refs})"


def _record(
    route: Route, event_key: str, headers: Mapping[str, str], answer: Answer, duration: float
) -> DeliveryRecord:
    """The history entry for one delivery."""
    event = answer.event
    record = DeliveryRecord(
        time=now_rfc3339(micro=True),
        receiver=route.label,
        namespace=route.owner.label,
        event=event_key,
        delivery_id=delivery_id(headers),
        attempt=headers.get("x-attempt-number", ""),
        status=answer.status,
        result=answer.result,
        message=str(answer.body.get("msg") or answer.body.get("error") or ""),
        duration_ms=round(duration * 1000, 3),
        candidates=answer.candidates,
    )
    if isinstance(event, events.Push):
        record.repository = list(event.repo_urls)
        record.refs = list(event.refs) if event.refs is not None else None
    elif isinstance(event, events.PullRequestClosed):
        record.pr_url = event.pr_url
    return record
