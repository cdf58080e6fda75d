"""One delivery from signature to answer: checks 4 to 11 of SPEC §4 over a store and the core."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
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
    Kind,
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
    """The HTTP answer to a request to a receiver, and its ``result`` for history and logs."""

    status: int
    body: dict[str, Any]
    result: Result

    @classmethod
    def message(cls, result: Result, msg: str) -> Answer:
        """A 200 saying ``msg``."""
        return cls(status=200, body={"msg": msg}, result=result)

    @classmethod
    def error(cls, status: int, result: Result, error: str) -> Answer:
        """A refusal with ``{"error": error}``."""
        return cls(status=status, body={"error": error}, result=result)


class Headers(msgspec.Struct, frozen=True, kw_only=True):
    """The request headers a delivery reads, decoded; the delivery id and attempt cut to
    ID_LIMIT, as history keeps them."""

    event_key: str = ""
    """``X-Event-Key``, stripped: whole, as "event ... ignored" says it."""
    signature: str = ""
    delivery_id: str = ""
    """Cloud's ``X-Request-UUID`` or Server's ``X-Request-Id``."""
    attempt: str = ""
    content_length: str = ""


def read_headers(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The delivery headers of an ASGI request; the last one wins where one repeats."""
    found = dict(raw)
    get = found.get
    return Headers(
        event_key=get(b"x-event-key", b"").decode("latin-1").strip(),
        signature=get(b"x-hub-signature", b"").decode("latin-1"),
        delivery_id=clip(
            (get(b"x-request-uuid") or get(b"x-request-id") or b"").decode("latin-1"), ID_LIMIT
        ),
        attempt=clip(get(b"x-attempt-number", b"").decode("latin-1"), ID_LIMIT),
        content_length=get(b"content-length", b"").decode("latin-1"),
    )


class Deliveries:
    """Handles authenticated work for routed requests; stateless but for one-time warnings."""

    def __init__(self, store: Store, metrics: Metrics | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self._newline_warned: set[tuple[str, str, str]] = set()
        self._unsigned_lines = Throttle(UNSIGNED_LOG_RATE)

    async def handle(self, route: Route, headers: Headers, body: bytes) -> Answer:
        """Answer one delivery whose body has been read within limits (checks 4 to 11 of
        SPEC §4), and leave its record, metrics and log line."""
        started = time.perf_counter()
        received = now_rfc3339(micro=True)  # the record's time and the refresh value
        try:
            event = self._check(route, headers, body)
            if isinstance(event, Answer):
                answer = event
            elif not self.store.can_refresh(_kind(event)):  # a ping or a refusal needs no store
                answer = Answer.error(503, Result.STORE_UNAVAILABLE, STORE_UNAVAILABLE)
            else:
                return await self._refresh(route, headers, event, started, received)
        except StoreUnavailable:
            answer = Answer.error(503, Result.STORE_UNAVAILABLE, STORE_UNAVAILABLE)
        except Exception:
            log.exception(
                "delivery failed unexpectedly",
                extra={"delivery": headers.delivery_id, "receiver": route.label},
            )
            answer = Answer.error(500, Result.ERROR, "internal error")
        signed = answer.result not in UNSIGNED_RESULTS
        self._finish(route, headers, answer, started, received, signed)
        return answer

    def refused(self, route: Route, headers: Headers, answer: Answer, started: float) -> None:
        """Record, count and log a request to a receiver refused before its body was read."""
        self._finish(
            route, headers, answer, started, now_rfc3339(micro=True), signed=False, body_read=False
        )

    def _check(
        self, route: Route, headers: Headers, body: bytes
    ) -> Answer | events.Push | events.PullRequestClosed:
        """Checks 4 to 8 of SPEC §4: the event the delivery carries, or the answer that
        ends it early."""
        event_key = headers.event_key
        if events.is_ping(event_key):
            return Answer.message(Result.PING, "pong")
        if not headers.signature:
            return Answer.error(401, Result.MISSING_SIGNATURE, "missing signature")
        check = check_signature(headers.signature, body, route.secret)
        if check is SignatureCheck.VALID_WITHOUT_TRAILING_NEWLINE:
            self._warn_trailing_newline(route, headers)
        elif check is not SignatureCheck.VALID:
            return Answer.error(401, Result.BAD_SIGNATURE, "unauthorized")
        if not events.is_handled(event_key):
            return Answer.message(Result.IGNORED, f"event {event_key} ignored")
        try:
            return events.parse_event(event_key, body)
        except events.NoRepositoryURL:
            return Answer.error(400, Result.INVALID_PAYLOAD, "payload has no repository URL")
        except events.InvalidPayload as error:
            answer = Answer.error(400, Result.INVALID_PAYLOAD, "invalid request body")
            answer.body["detail"] = error.detail
            return answer

    async def _refresh(
        self,
        route: Route,
        headers: Headers,
        event: events.Push | events.PullRequestClosed,
        started: float,
        received: str,
    ) -> Answer:
        """Checks 9 to 11 of SPEC §4: judge every object the event concerns, refresh those
        due, then answer (``_conclude``)."""
        delivery = headers.delivery_id
        indexes = self.store.indexes
        if isinstance(event, events.Push):
            pushed = pushed_identities(event)
            found = indexes.warehouses_for(pushed, route.owner.scope)
            verdicts = await _judge_in_slices(judge_push(event, pushed, found))
        else:
            waiting = indexes.promotions_waiting_on(event.pr_url, route.owner.scope)
            verdicts = decide_pull_request(event.pr_url, waiting)
        reasons = _due(verdicts, delivery)
        if reasons:
            note = functools.partial(_note, headers.event_key, event, delivery, reasons)
            result = await self.store.refresh(list(reasons), received, note)
        else:
            result = RefreshResult()
        return self._conclude(route, headers, event, verdicts, result, started, received)

    def _conclude(
        self,
        route: Route,
        headers: Headers,
        event: events.Push | events.PullRequestClosed,
        verdicts: list[Verdict],
        result: RefreshResult,
        started: float,
        received: str,
    ) -> Answer:
        """The answer to a judged delivery: 200, or 500 when any refresh failed; and its
        record, metrics and log line, read off its verdicts and what became of each."""
        repository: list[str] = []  # what the record keeps of the event
        refs: list[str] | None = None
        omitted_refs = 0
        pr_url = ""
        if isinstance(event, events.Push):
            noun = "warehouse"
            repository = clip_all(event.repo_urls, MAX_REPOSITORIES)
            if event.refs is not None:
                refs = clip_all(event.refs, MAX_REFS)
                omitted_refs = max(len(event.refs) - MAX_REFS, 0)
        else:
            noun = "promotion"
            pr_url = clip(event.pr_url, FIELD_LIMIT)
        delivery = headers.delivery_id
        candidates, unlisted, outcomes = _candidates(verdicts, result)
        names = [f"{t.namespace}/{t.name}" if t.namespace else t.name for t in result.refreshed]
        refreshed = len(result.refreshed)
        if result.failed:
            due = refreshed + len(result.gone) + len(result.failed)
            status, what = 500, Result.REFRESH_FAILED
            message = f"failed to refresh {len(result.failed)} of {due} {noun}s"
            body = {"error": message, "deliveryId": delivery, "refreshed": names}
        else:
            status, what = 200, Result.REFRESHED
            message = f"refreshed {refreshed} {noun}(s)"
            body = {"msg": message, "deliveryId": delivery, "refreshed": names}
        duration = time.perf_counter() - started
        record = DeliveryRecord(
            time=received,
            receiver=route.label,
            namespace=route.owner.label,
            event=headers.event_key,  # a handled key: short
            delivery_id=delivery,
            attempt=headers.attempt,
            status=status,
            result=what,
            message=message,
            duration_ms=round(duration * 1e6) / 1000,
            repository=repository,
            refs=refs,
            pr_url=pr_url,
            candidates=candidates,
            detail=clip(result.cause(), FIELD_LIMIT),
            omitted_refs=omitted_refs,
            omitted_candidates=unlisted,
        )
        self.store.record(record)
        metrics = self.metrics
        if metrics is not None:
            metrics.count_delivery(event_label(record.event), what, duration)
            for (kind, outcome), count in outcomes.items():
                if outcome != Outcome.NOT_REFRESHED:
                    metrics.count_refresh(kind, outcome, count)
        _log(_level(status), record, refreshed)
        return Answer(status=status, body=body, result=what)

    def _finish(
        self,
        route: Route,
        headers: Headers,
        answer: Answer,
        started: float,
        received: str,
        signed: bool,
        body_read: bool = True,
    ) -> None:
        """What a request to a receiver answered before any refresh leaves: history,
        metrics, one log line. Only those whose body was read (``body_read``, ``started``
        then) are timed in the latency histogram: a refusal while the body was awaited
        (408, 499, busy) lasts as long as its sender holds it.

        Unsigned requests go to the history's separate ring, and at most
        ``UNSIGNED_LOG_RATE`` of them a second per receiver to the log: only lines the
        log level lets through count against that, so pings at info cannot crowd out
        401s at warning.
        """
        duration = time.perf_counter() - started
        body = answer.body
        record = DeliveryRecord(
            time=received,
            receiver=route.label,
            namespace=route.owner.label,
            event=clip(headers.event_key, ID_LIMIT),
            delivery_id=headers.delivery_id,
            attempt=headers.attempt,
            status=answer.status,
            result=answer.result,
            message=clip(str(body.get("msg") or body.get("error") or ""), FIELD_LIMIT),
            duration_ms=round(duration * 1e6) / 1000,
            detail=clip(str(body.get("detail") or ""), FIELD_LIMIT),
            signed=signed,
        )
        self.store.record(record)
        result = answer.result
        if self.metrics is not None:
            timed = duration if body_read else None  # a refusal's lasted as its sender chose
            self.metrics.count_delivery(event_label(record.event), result, timed)
            if result is Result.MISSING_SIGNATURE or result is Result.BAD_SIGNATURE:
                reason = "missing" if result is Result.MISSING_SIGNATURE else "invalid"
                self.metrics.count_signature_failure(reason, route.label)
        level = _level(answer.status)
        suppressed: int | None = 0
        if not signed and log.isEnabledFor(level):
            suppressed = self._unsigned_lines.admit(route.label)
        if suppressed is not None:
            _log(level, record, 0, suppressed)

    def _warn_trailing_newline(self, route: Route, headers: Headers) -> None:
        """Say once per receiver that its Secret ends in a newline we had to strip."""
        key = (route.owner.kind, route.owner.namespace, route.name)
        if key in self._newline_warned:
            return
        self._newline_warned.add(key)
        log.warning(
            "receiver %s: signature only verifies without the trailing newline of its "
            "Secret; recreate the Secret without it (echo -n)",
            route.label,
            extra={"delivery": headers.delivery_id, "receiver": route.label},
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


def _kind(event: events.Push | events.PullRequestClosed) -> Kind:
    """The kind an event refreshes: Warehouses on a push, Promotions on a closed PR."""
    return "Warehouse" if isinstance(event, events.Push) else "Promotion"


def _level(status: int) -> int:
    """A delivery line's level: info for a 2xx, warning for a refusal, error for a failure,
    so that a log kept at warning still shows what went wrong."""
    if status < 400:
        return logging.INFO
    return logging.WARNING if status < 500 else logging.ERROR


def _log(level: int, record: DeliveryRecord, refreshed: int, suppressed: int = 0) -> None:
    """The one log line of a delivery, its fields read off its record; ``suppressed``
    unsigned requests to the same receiver were not logged before it."""
    message = "delivery %s"
    args: tuple[object, ...] = (record.result,)
    if suppressed:
        message += " (%d more unsigned requests to this receiver not logged)"
        args += (suppressed,)
    extra: dict[str, object] = {
        "receiver": record.receiver,
        "event": record.event,
        "delivery": record.delivery_id,
        "attempt": record.attempt,
        "status": record.status,
        "result": record.result,
        "refreshed": refreshed,
        "duration_ms": record.duration_ms,
    }
    if record.detail:
        extra["detail"] = record.detail
    logs.line(log, level, message, args, extra, record.time)


def _due(verdicts: list[Verdict], delivery: str) -> dict[Target, str]:
    """The objects whose verdict is due a refresh, with why; logs the verdicts' warnings."""
    reasons: dict[Target, str] = {}
    for verdict in verdicts:
        for warning in verdict.warnings:
            log.warning(warning, extra={"delivery": delivery})
        if verdict.refresh:
            reasons[Target(verdict.kind, verdict.namespace, verdict.name)] = verdict.reason
    return reasons


def _candidates(
    verdicts: list[Verdict], result: RefreshResult
) -> tuple[list[Candidate], int, dict[tuple[str, str], int]]:
    """Each verdict with what became of it: refreshed, gone, failed, or not refreshed.

    Lists at most MAX_CANDIDATES, in verdict order, those due a refresh before the
    others, each reason cut to FIELD_LIMIT; returns how many were left out and how many
    had each (kind, outcome).
    """
    outcome_of = result.outcomes()
    tally: dict[tuple[str, str], int] = {}
    candidates = []
    for v in verdicts:
        outcome: Outcome = Outcome.NOT_REFRESHED
        if v.refresh:  # only those were refreshed
            outcome = outcome_of.get(Target(v.kind, v.namespace, v.name), outcome)
        tally[v.kind, outcome] = tally.get((v.kind, outcome), 0) + 1
        reason = clip(v.reason, FIELD_LIMIT)
        candidates.append(
            Candidate(
                kind=v.kind, namespace=v.namespace, name=v.name, outcome=outcome, reason=reason
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
