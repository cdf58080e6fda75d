"""Refresh by JSON merge patch: all targets at once (bounded), retried inside one budget,
then a ``WebhookRefresh`` Event on each refreshed object.

The requests are orjson-rendered bodies sent through a :class:`~.wire.Sender`: on the
lean path 0.26-0.28 ms of receiver CPU per PATCH and 0.13-0.16 ms per Event, where
lightkube's client took 1.0-1.2 and 0.85-1.1 ms (BENCHMARKS.md, issue 10). This module
knows the Kubernetes semantics (paths, bodies, which codes mean gone or retry); wire.py
knows HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson
from lightkube import AsyncClient
from lightkube.core.resource import api_info

from kargo_bitbucket.logs import Throttle
from kargo_bitbucket.outcomes import Outcome, RefreshOutcome
from kargo_bitbucket.store.backoff import Backoff
from kargo_bitbucket.store.base import (
    REFRESH_ANNOTATION,
    REFRESH_BUDGET,
    Note,
    RefreshResult,
    Target,
)
from kargo_bitbucket.store.kubernetes.resources import GROUP, RESOURCES, VERSION
from kargo_bitbucket.store.kubernetes.wire import Answer, ClientWire, Sender, WireError

log = logging.getLogger(__name__)

RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
PATCH_CONCURRENCY = 64
EVENT_CONCURRENCY = 16
EVENT_BACKLOG = 1_000
"""Events waiting to be written at most: past it refreshed objects get none (they are notes;
a slow API server would otherwise have them pile up in memory, one per refreshed object)."""
FIRST_RETRY, LONGEST_RETRY = 0.1, 2.0
"""A failed patch is retried after 0.05-0.1 s, then twice as long each time, up to 1-2 s,
so several attempts fit in the budget."""
FIELD_MANAGER = "?fieldManager=kargo-bitbucket"
MERGE_PATCH = "application/merge-patch+json"
PLURALS = {kind: api_info(resource).plural for kind, resource in RESOURCES.items()}


class Refresher:
    """Sets the refresh annotation on many objects at once and records why in Events.

    ``wire`` is the lean path :func:`~.wire.open_wire` gives; without one, the requests go
    through ``client``'s own httpx client.
    """

    def __init__(
        self,
        client: AsyncClient,
        identity: str,
        *,
        wire: Sender | None = None,
        concurrency: int = PATCH_CONCURRENCY,
        budget: float = REFRESH_BUDGET,
        attempt_timeout: float = 3.0,
        emit_events: bool = True,
    ) -> None:
        self.wire: Sender = wire or ClientWire(client)
        self.identity = identity
        self.concurrency = concurrency
        self.budget = budget
        self.attempt_timeout = attempt_timeout
        self.emit_events = emit_events
        self._event_tasks: set[asyncio.Task[None]] = set()
        self._events_waiting = 0
        self._dropped_lines = Throttle(1)
        self._event_limit = asyncio.Semaphore(EVENT_CONCURRENCY)

    async def refresh(
        self, targets: Sequence[Target], value: str, note: Note | None = None
    ) -> RefreshResult:
        """Patch every target concurrently (bounded), retrying inside one time budget."""
        deadline = time.monotonic() + self.budget
        limit = asyncio.Semaphore(self.concurrency)
        body = orjson.dumps({"metadata": {"annotations": {REFRESH_ANNOTATION: value}}})
        outcomes = await asyncio.gather(
            *(self._patch(target, body, limit, deadline) for target in targets)
        )
        result = RefreshResult()
        refreshed = []
        for target, (outcome, uid, cause) in zip(targets, outcomes, strict=True):
            result.add(outcome, target, cause)
            if outcome is Outcome.REFRESHED:
                refreshed.append((target, uid))
        if self.emit_events and note is not None and refreshed:
            self._emit_soon(refreshed, note)
        return result

    def _emit_soon(self, refreshed: list[tuple[Target, str]], note: Note) -> None:
        """Have the Events written after the answer, as many as EVENT_BACKLOG leaves room for
        (the others get none, with a log line a second at most)."""
        room = max(EVENT_BACKLOG - self._events_waiting, 0)
        if len(refreshed) > room:
            if self._dropped_lines.admit("events") is not None:
                log.info(
                    "no WebhookRefresh Event for %d refreshed object(s): %d are waiting for "
                    "the API server already",
                    len(refreshed) - room,
                    self._events_waiting,
                )
            refreshed = refreshed[:room]
        if refreshed:
            # After the patches, not among them: Events must not slow the answer down.
            self._events_waiting += len(refreshed)
            task = asyncio.create_task(self._emit_all(refreshed, note), name="events")
            self._event_tasks.add(task)
            task.add_done_callback(self._event_tasks.discard)

    async def _patch(
        self,
        target: Target,
        body: bytes,
        limit: asyncio.Semaphore,
        deadline: float,
    ) -> tuple[RefreshOutcome, str, str]:
        """One object's refresh: refreshed (with its uid), gone (404) or failed (and why)."""
        path = _object_path(target) + FIELD_MANAGER
        backoff = Backoff(FIRST_RETRY, LONGEST_RETRY)
        while True:
            wait_at_least = 0.0
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Outcome.FAILED, "", f"no time left of the {self.budget:g} s refresh budget"
            try:
                # At least half of what is left: a slow API (3.3 s a PATCH) still gets its
                # patch in, and a hung one leaves time for one more attempt.
                wait = min(remaining, max(self.attempt_timeout, remaining / 2))
                async with limit, asyncio.timeout(wait):
                    answer = await self.wire.request("PATCH", path, body, MERGE_PATCH)
            except (TimeoutError, WireError) as error:
                reason = type(error).__name__
            else:
                if 200 <= answer.status < 300:
                    return Outcome.REFRESHED, _uid(answer), ""
                if answer.status == 404:
                    return Outcome.GONE, "", ""
                if answer.status not in RETRYABLE:
                    refusal = _refusal(answer)
                    log.error("refresh of %s refused: %s", _name(target), refusal)
                    return Outcome.FAILED, "", f"refused: {refusal}"
                wait_at_least = answer.retry_after
                reason = f"HTTP {answer.status}"
            pause = backoff.delay(wait_at_least)
            if time.monotonic() + pause >= deadline:
                cause = f"failed after {backoff.failures} attempt(s): {reason}"
                log.error("refresh of %s %s", _name(target), cause)
                return Outcome.FAILED, "", cause
            await backoff.sleep(pause)

    async def _emit_all(self, refreshed: list[tuple[Target, str]], note: Note) -> None:
        """A ``WebhookRefresh`` Event on each refreshed object, a few at a time."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            await asyncio.gather(
                *(
                    self._emit(target, self._event(target, uid, note(target), now))
                    for target, uid in refreshed
                )
            )
        finally:
            self._events_waiting -= len(refreshed)

    def _event(self, target: Target, uid: str, note: str, now: str) -> bytes:
        involved = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": target.kind,
            "name": target.name,
            "namespace": target.namespace,
        }
        if uid:
            involved["uid"] = uid
        return orjson.dumps(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"generateName": f"{target.name}.", "namespace": target.namespace},
                "involvedObject": involved,
                "reason": "WebhookRefresh",
                "message": note[:1024],
                "type": "Normal",
                "source": {"component": "kargo-bitbucket"},
                "reportingComponent": "kargo-bitbucket",
                "reportingInstance": self.identity,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            }
        )

    async def _emit(self, target: Target, event: bytes) -> None:
        path = f"/api/v1/namespaces/{target.namespace}/events{FIELD_MANAGER}"
        try:
            async with self._event_limit, asyncio.timeout(self.attempt_timeout):
                answer = await self.wire.request("POST", path, event, "application/json")
        except (TimeoutError, WireError) as error:
            log.debug("cannot record Event on %s: %s", _name(target), type(error).__name__)
            return
        if answer.status != 201:
            log.debug("cannot record Event on %s: %s", _name(target), _refusal(answer))

    async def close(self) -> None:
        """Stop the Events still being written, close the connections."""
        for task in list(self._event_tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.wire.close()


def _object_path(target: Target) -> str:
    plural = PLURALS[target.kind]
    return f"/apis/{GROUP}/{VERSION}/namespaces/{target.namespace}/{plural}/{target.name}"


def _uid(answer: Answer) -> str:
    """The patched object's ``metadata.uid`` ("" if the answer has none)."""
    try:
        uid = orjson.loads(answer.body)["metadata"]["uid"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ""
    return uid if isinstance(uid, str) else ""


def _refusal(answer: Answer) -> str:
    """``HTTP <code>: <the Status message>``, the message cut to 200 characters."""
    try:
        message = orjson.loads(answer.body).get("message", "")
    except (orjson.JSONDecodeError, AttributeError):
        message = ""
    text = str(message)[:200] if message else ""
    return f"HTTP {answer.status}: {text}" if text else f"HTTP {answer.status}"


def _name(target: Target) -> str:
    return f"{target.kind} {target.namespace}/{target.name}"
