"""Refresh by JSON merge patch: all targets at once (bounded), retried inside one budget,
then a ``WebhookRefresh`` Event on each refreshed object."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx2 as httpx
from lightkube import ApiError, AsyncClient
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event
from lightkube.types import PatchType

from kargo_bitbucket.outcomes import Outcome, RefreshOutcome
from kargo_bitbucket.store.backoff import Backoff, retry_after, status_code
from kargo_bitbucket.store.base import REFRESH_ANNOTATION, REFRESH_BUDGET, RefreshResult, Target
from kargo_bitbucket.store.kubernetes.reflector import plain
from kargo_bitbucket.store.kubernetes.resources import GROUP, RESOURCES, VERSION

log = logging.getLogger(__name__)

RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
PATCH_CONCURRENCY = 64
EVENT_CONCURRENCY = 16
FIRST_RETRY, LONGEST_RETRY = 0.1, 2.0
"""A failed patch is retried after 0.05-0.1 s, then twice as long each time, up to 1-2 s,
so several attempts fit in the budget."""


class Refresher:
    """Sets the refresh annotation on many objects at once and records why in Events."""

    def __init__(
        self,
        client: AsyncClient,
        identity: str,
        *,
        concurrency: int = PATCH_CONCURRENCY,
        budget: float = REFRESH_BUDGET,
        attempt_timeout: float = 3.0,
        emit_events: bool = True,
    ) -> None:
        self.client = client
        self.identity = identity
        self.concurrency = concurrency
        self.budget = budget
        self.attempt_timeout = attempt_timeout
        self.emit_events = emit_events
        self._event_tasks: set[asyncio.Task[None]] = set()
        self._event_limit = asyncio.Semaphore(EVENT_CONCURRENCY)

    async def refresh(self, targets: Sequence[Target], value: str, note: str = "") -> RefreshResult:
        """Patch every target concurrently (bounded), retrying inside one time budget."""
        deadline = time.monotonic() + self.budget
        limit = asyncio.Semaphore(self.concurrency)
        body = {"metadata": {"annotations": {REFRESH_ANNOTATION: value}}}
        outcomes = await asyncio.gather(
            *(self._patch(target, body, limit, deadline) for target in targets)
        )
        result = RefreshResult()
        refreshed = []
        for target, (outcome, uid) in zip(targets, outcomes, strict=True):
            result.add(outcome, target)
            if outcome is Outcome.REFRESHED:
                refreshed.append((target, uid))
        if self.emit_events and note and refreshed:
            # After the patches, not among them: Events must not slow the answer down.
            task = asyncio.create_task(self._emit_all(refreshed, note), name="events")
            self._event_tasks.add(task)
            task.add_done_callback(self._event_tasks.discard)
        return result

    async def _patch(
        self,
        target: Target,
        body: dict[str, Any],
        limit: asyncio.Semaphore,
        deadline: float,
    ) -> tuple[RefreshOutcome, str]:
        """One object's refresh: refreshed (with its uid), gone (404) or failed."""
        resource = RESOURCES[target.kind]
        backoff = Backoff(FIRST_RETRY, LONGEST_RETRY)
        while True:
            wait_at_least = 0.0
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Outcome.FAILED, ""
            try:
                # At least half of what is left: a slow API (3.3 s a PATCH) still gets its
                # patch in, and a hung one leaves time for one more attempt.
                wait = min(remaining, max(self.attempt_timeout, remaining / 2))
                async with limit, asyncio.timeout(wait):
                    patched = await self.client.patch(
                        resource,
                        target.name,
                        body,
                        namespace=target.namespace,
                        patch_type=PatchType.MERGE,
                    )
                uid = (plain(patched).get("metadata") or {}).get("uid")
                return Outcome.REFRESHED, str(uid or "")
            except httpx.HTTPStatusError as error:
                code = status_code(error)
                if code == 404:
                    return Outcome.GONE, ""
                if code not in RETRYABLE:
                    log.error("refresh of %s refused: %s", _name(target), error)
                    return Outcome.FAILED, ""
                wait_at_least = retry_after(error)
                reason = f"HTTP {code}"
            except (TimeoutError, httpx.TimeoutException, httpx.TransportError) as error:
                reason = type(error).__name__
            pause = backoff.delay(wait_at_least)
            if time.monotonic() + pause >= deadline:
                log.error(
                    "refresh of %s failed after %d attempt(s): %s",
                    _name(target),
                    backoff.failures,
                    reason,
                )
                return Outcome.FAILED, ""
            await backoff.sleep(pause)

    async def _emit_all(self, refreshed: list[tuple[Target, str]], note: str) -> None:
        """A ``WebhookRefresh`` Event on each refreshed object, a few at a time."""
        await asyncio.gather(*(self._emit(target, uid, note) for target, uid in refreshed))

    async def _emit(self, target: Target, uid: str, note: str) -> None:
        now = datetime.now(UTC)
        event = Event(
            metadata=ObjectMeta(generateName=f"{target.name}.", namespace=target.namespace),
            involvedObject=ObjectReference(
                apiVersion=f"{GROUP}/{VERSION}",
                kind=target.kind,
                name=target.name,
                namespace=target.namespace,
                uid=uid or None,
            ),
            reason="WebhookRefresh",
            message=note[:1024],
            type="Normal",
            source=EventSource(component="kargo-bitbucket"),
            reportingComponent="kargo-bitbucket",
            reportingInstance=self.identity,
            firstTimestamp=now,
            lastTimestamp=now,
            count=1,
        )
        try:
            async with self._event_limit:
                await self.client.create(event)
        except (ApiError, httpx.HTTPError, OSError) as error:
            log.debug("cannot record Event on %s: %s", _name(target), error)

    async def close(self) -> None:
        """Stop the Events still being written."""
        for task in list(self._event_tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _name(target: Target) -> str:
    return f"{target.kind} {target.namespace}/{target.name}"
