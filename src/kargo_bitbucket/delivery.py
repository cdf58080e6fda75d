"""One delivery from signature to answer: checks 4 to 11 of SPEC §4 over a store and the core."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec

from kargo_bitbucket import logs
from kargo_bitbucket.bounds import (
    FIELD_LIMIT,
    ID_LIMIT,
    MAX_CANDIDATES,
    MAX_REFS,
    MAX_REPOSITORIES,
    clip,
    clip_all,
)
from kargo_bitbucket.core import events
from kargo_bitbucket.core.decision import (
    Verdict,
    decide_pull_request,
    judge_push,
    pushed_identities,
)
from kargo_bitbucket.core.receivers import Route
from kargo_bitbucket.core.signature import SignatureCheck, check_signature
from kargo_bitbucket.history import Candidate, DeliveryRecord
from kargo_bitbucket.logs import Throttle
from kargo_bitbucket.metrics import Metrics, event_label
from kargo_bitbucket.outcomes import Outcome, Result
from kargo_bitbucket.store.base import (
    Note,
    RefreshResult,
    Store,
    StoreUnavailable,
    Target,
    now_rfc3339,
)

log = logging.getLogger("kargo_bitbucket.delivery")

UNSIGNED_RESULTS = frozenset({Result.PING, Result.MISSING_SIGNATURE, Result.BAD_SIGNATURE})
"""Results of ``handle`` reached before a signature was verified (``refused`` ones all are)."""
STORE_UNAVAILABLE = "store unavailable"
UNSIGNED_LOG_RATE = 5
"""Log lines a second per receiver about unsigned requests; the rest are counted."""
JUDGING_SLICE = 0.002
"""Seconds of matching after which a delivery lets the event loop run other work.

A 10,000-ref push to 1,000 Warehouses held the loop 9.4 s (issue 9); now its longest
step is 2.5 ms and /healthz answers within 42-56 ms meanwhile on 2 busy shared cores
(bench/huge_push.py). A small push never reaches one slice and pays nothing for this.
"""


class Answer(msgspec.Struct, kw_only=True):
    """The HTTP answer to a delivery, and what history, logs and metrics say about it."""

    status: int
    body: dict[str, Any]
    result: Result
    event: events.Push | events.PullRequestClosed | None = None
    candidates: list[Candidate] = msgspec.field(default_factory=list)
    refreshed: int = 0
    unlisted: int = 0
    """Candidates considered but left out of ``candidates`` (past MAX_CANDIDATES)."""
    outcomes: dict[tuple[str, str], int] = msgspec.field(default_factory=dict)
    """(kind, outcome) of every candidate, listed or not: what metrics count."""
    cause: str = ""
    """Why refreshes failed, for the history and the log only: API and file errors are
    our side's business, not the sender's."""

    @classmethod
    def message(cls, result: Result, msg: str) -> Answer:
        """A 200 saying ``msg``."""
        return cls(status=200, body={"msg": msg}, result=result)

    @classmethod
    def error(cls, status: int, result: Result, error: str) -> Answer:
        """A refusal with ``{"error": error}``."""
        return cls(status=status, body={"error": error}, result=result)


def delivery_id(headers: Mapping[str, str]) -> str:
    """Cloud's ``X-Request-UUID`` or Server's ``X-Request-Id``, cut past what Bitbucket sends."""
    return clip(headers.get("x-request-uuid") or headers.get("x-request-id") or "", ID_LIMIT)


class Deliveries:
    """Handles authenticated work for routed requests; stateless but for one-time warnings."""

    def __init__(self, store: Store, metrics: Metrics | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self._newline_warned: set[tuple[str, str, str]] = set()
        self._unsigned_lines = Throttle(UNSIGNED_LOG_RATE)

    async def handle(self, route: Route, headers: Mapping[str, str], body: bytes) -> Answer:
        """Answer one delivery whose body has been read within limits; record and log it."""
        started = time.perf_counter()
        received = now_rfc3339(micro=True)  # the record's time and the refresh value
        event_key = headers.get("x-event-key", "").strip()
        signed = False
        if not self.store.available:
            answer = Answer.error(503, Result.STORE_UNAVAILABLE, STORE_UNAVAILABLE)
        else:
            try:
                answer = await self._handle(route, event_key, headers, body, received)
            except StoreUnavailable:
                answer = Answer.error(503, Result.STORE_UNAVAILABLE, STORE_UNAVAILABLE)
            except Exception:
                log.exception(
                    "delivery failed unexpectedly",
                    extra={"delivery": delivery_id(headers), "receiver": route.label},
                )
                answer = Answer.error(500, Result.ERROR, "internal error")
            signed = answer.result not in UNSIGNED_RESULTS
        duration = time.perf_counter() - started
        record = _record(route, event_key, headers, answer, duration, signed, received)
        self._finish(route, answer, record)
        return answer

    def refused(
        self,
        route: Route,
        headers: Mapping[str, str],
        answer: Answer,
        duration: float,
    ) -> None:
        """Record, count and log a request to a receiver refused before its body was read."""
        event_key = headers.get("x-event-key", "").strip()
        record = _record(
            route, event_key, headers, answer, duration, False, now_rfc3339(micro=True)
        )
        self._finish(route, answer, record)

    def _finish(self, route: Route, answer: Answer, record: DeliveryRecord) -> None:
        """What every answered request to a receiver leaves: history, metrics, one log line.

        The line is at info level for a 2xx, warning for a refusal (4xx) and error for a
        failure (5xx), so that a log kept at warning still shows what went wrong. Unsigned
        requests go to the history's separate ring, and at most ``UNSIGNED_LOG_RATE`` of
        them a second per receiver to the log: only lines the log level lets through count
        against that, so pings at info cannot crowd out 401s at warning.
        """
        self.store.record(record)
        if self.metrics is not None:
            _count(self.metrics, route, answer, record)
        level = _level(answer.status)
        if not log.isEnabledFor(level):
            return
        message = "delivery %s"
        args: tuple[object, ...] = (answer.result,)
        if not record.signed:
            suppressed = self._unsigned_lines.admit(route.label)
            if suppressed is None:
                return
            if suppressed:
                message += " (%d more unsigned requests to this receiver not logged)"
                args += (suppressed,)
        extra: dict[str, object] = {
            "receiver": record.receiver,
            "event": record.event,
            "delivery": record.delivery_id,
            "attempt": record.attempt,
            "status": answer.status,
            "result": answer.result,
            "refreshed": answer.refreshed,
            "duration_ms": record.duration_ms,
        }
        if record.detail:
            extra["detail"] = record.detail
        if level == logging.INFO:
            logs.info(log, message, args, extra)
        else:
            log.log(level, message, *args, extra=extra)

    async def _handle(
        self, route: Route, event_key: str, headers: Mapping[str, str], body: bytes, now: str
    ) -> Answer:
        if events.is_ping(event_key):
            return Answer.message(Result.PING, "pong")
        signature = headers.get("x-hub-signature")
        if not signature:
            return Answer.error(401, Result.MISSING_SIGNATURE, "missing signature")
        check = check_signature(signature, body, route.secret)
        if check is SignatureCheck.VALID_WITHOUT_TRAILING_NEWLINE:
            self._warn_trailing_newline(route, headers)
        elif check is not SignatureCheck.VALID:
            return Answer.error(401, Result.BAD_SIGNATURE, "unauthorized")
        if not events.is_handled(event_key):
            return Answer.message(Result.IGNORED, f"event {event_key} ignored")
        try:
            event = events.parse_event(event_key, body)
        except events.NoRepositoryURL:
            return Answer.error(400, Result.INVALID_PAYLOAD, "payload has no repository URL")
        except events.InvalidPayload as error:
            answer = Answer.error(400, Result.INVALID_PAYLOAD, "invalid request body")
            answer.body["detail"] = error.detail
            return answer
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
        delivery = delivery_id(headers)
        for verdict in verdicts:
            for warning in verdict.warnings:
                log.warning(warning, extra={"delivery": delivery})
        reasons = {Target(v.kind, v.namespace, v.name): v.reason for v in verdicts if v.refresh}
        note = functools.partial(_note, event_key, event, delivery, reasons)
        answer = await self._refresh(verdicts, list(reasons), noun, delivery, note, now)
        answer.event = event
        return answer

    async def _refresh(
        self,
        verdicts: list[Verdict],
        targets: list[Target],
        noun: str,
        delivery: str,
        note: Note,
        now: str,
    ) -> Answer:
        """Refresh the targets (those of the verdicts due one); count only what still failed."""
        result = await self.store.refresh(targets, now, note) if targets else RefreshResult()
        candidates, unlisted, outcomes = _candidates(verdicts, result)
        names = [f"{t.namespace}/{t.name}" if t.namespace else t.name for t in result.refreshed]
        extra = {"deliveryId": delivery, "refreshed": names}
        refreshed = len(result.refreshed)
        if result.failed:
            error = f"failed to refresh {len(result.failed)} of {len(targets)} {noun}s"
            status, what, body = 500, Result.REFRESH_FAILED, {"error": error, **extra}
        else:
            msg = f"refreshed {refreshed} {noun}(s)"
            status, what, body = 200, Result.REFRESHED, {"msg": msg, **extra}
        return Answer(
            status=status,
            body=body,
            result=what,
            candidates=candidates,
            refreshed=refreshed,
            unlisted=unlisted,
            outcomes=outcomes,
            cause=result.cause(),
        )

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


def _level(status: int) -> int:
    """A delivery line's level: info for a 2xx, warning for a refusal, error for a failure."""
    if status < 400:
        return logging.INFO
    return logging.WARNING if status < 500 else logging.ERROR


def _count(metrics: Metrics, route: Route, answer: Answer, record: DeliveryRecord) -> None:
    """Metrics for one delivery: its event and result, signature failures, refreshes."""
    metrics.count_delivery(event_label(record.event), answer.result, record.duration_ms / 1000)
    if answer.result in ("missing-signature", "bad-signature"):
        reason = "missing" if answer.result == "missing-signature" else "invalid"
        metrics.count_signature_failure(reason, route.label)
    for (kind, outcome), count in answer.outcomes.items():
        if outcome != "not refreshed":
            metrics.count_refresh(kind, outcome, count)


def _candidates(
    verdicts: list[Verdict], result: RefreshResult
) -> tuple[list[Candidate], int, dict[tuple[str, str], int]]:
    """Each verdict with what became of it: refreshed, gone, failed, or not refreshed.

    Lists at most MAX_CANDIDATES, in verdict order, those due a refresh before the
    others; returns how many were left out and how many had each (kind, outcome).
    """
    outcome_of = result.outcomes()
    tally: dict[tuple[str, str], int] = {}
    candidates = []
    for v in verdicts:
        outcome: Outcome = outcome_of.get(
            Target(v.kind, v.namespace, v.name), Outcome.NOT_REFRESHED
        )
        tally[v.kind, outcome] = tally.get((v.kind, outcome), 0) + 1
        candidates.append(
            Candidate(
                kind=v.kind, namespace=v.namespace, name=v.name, outcome=outcome, reason=v.reason
            )
        )
    if len(candidates) <= MAX_CANDIDATES:
        return candidates, 0, tally
    due_first = sorted(range(len(verdicts)), key=lambda i: not verdicts[i].refresh)
    listed = [candidates[i] for i in sorted(due_first[:MAX_CANDIDATES])]
    return listed, len(candidates) - len(listed), tally


def _note(
    event_key: str,
    event: events.Push | events.PullRequestClosed,
    delivery: str,
    reasons: Mapping[Target, str],
    target: Target,
) -> str:
    """The sentence the Event on a refreshed object carries: the event, its delivery (early,
    so the Event's cut to 1,024 characters keeps the id ``deliveries --id`` finds) and why
    this object was refreshed."""
    by = f" (delivery {delivery})" if delivery else ""
    if isinstance(event, events.PullRequestClosed):
        return f"Bitbucket {event_key}{by}: {reasons[target]}"
    repository = event.repo_urls[0] if event.repo_urls else "?"
    return f"Bitbucket {event_key}{by} to {repository}: {reasons[target]}"


def _record(
    route: Route,
    event_key: str,
    headers: Mapping[str, str],
    answer: Answer,
    duration: float,
    signed: bool,
    received: str,
) -> DeliveryRecord:
    """The history entry for one delivery, every field bounded (``bounds``)."""
    event = answer.event
    candidates = answer.candidates
    record = DeliveryRecord(
        time=received,
        receiver=route.label,
        namespace=route.owner.label,
        event=clip(event_key, ID_LIMIT),
        delivery_id=delivery_id(headers),
        attempt=clip(headers.get("x-attempt-number", ""), ID_LIMIT),
        status=answer.status,
        result=answer.result,
        message=clip(str(answer.body.get("msg") or answer.body.get("error") or ""), FIELD_LIMIT),
        duration_ms=round(duration * 1000, 3),
        candidates=[
            c if len(c.reason) <= FIELD_LIMIT else _clip_reason(c)
            for c in candidates[:MAX_CANDIDATES]
        ],
        detail=clip(str(answer.body.get("detail") or answer.cause), FIELD_LIMIT),
        omitted_candidates=answer.unlisted + max(len(candidates) - MAX_CANDIDATES, 0),
        signed=signed,
    )
    if isinstance(event, events.Push):
        record.repository = clip_all(event.repo_urls, MAX_REPOSITORIES)
        if event.refs is not None:
            record.refs = clip_all(event.refs, MAX_REFS)
            record.omitted_refs = max(len(event.refs) - MAX_REFS, 0)
    elif isinstance(event, events.PullRequestClosed):
        record.pr_url = clip(event.pr_url, FIELD_LIMIT)
    return record


def _clip_reason(candidate: Candidate) -> Candidate:
    """The candidate with its reason cut to ``FIELD_LIMIT``."""
    return msgspec.structs.replace(candidate, reason=clip(candidate.reason, FIELD_LIMIT))
