"""One delivery from signature to answer: checks 4 to 11 of SPEC §4 over a store and the core."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kargo_bitbucket.core import events
from kargo_bitbucket.core.decision import Verdict, decide_pull_request, decide_push
from kargo_bitbucket.core.receivers import Route
from kargo_bitbucket.core.signature import SignatureCheck, check_signature
from kargo_bitbucket.core.subscriptions import identities
from kargo_bitbucket.store.base import Store, Target
from kargo_bitbucket.store.sqlite import now_rfc3339

log = logging.getLogger("kargo_bitbucket.delivery")


@dataclass(slots=True)
class Answer:
    """The HTTP answer to a delivery, and what the log line says about it."""

    status: int
    body: dict[str, Any]
    result: str
    refreshed: int = 0
    verdicts: list[Verdict] = field(default_factory=list)


def delivery_id(headers: Mapping[str, str]) -> str:
    """Cloud's ``X-Request-UUID`` or Server's ``X-Request-Id``."""
    return headers.get("x-request-uuid") or headers.get("x-request-id") or ""


class Deliveries:
    """Handles authenticated work for routed requests; stateless but for one-time warnings."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._newline_warned: set[tuple[str, str, str]] = set()

    async def handle(self, route: Route, headers: Mapping[str, str], body: bytes) -> Answer:
        """Answer one delivery whose body has been read within limits; logs one line."""
        started = time.perf_counter()
        event_key = headers.get("x-event-key", "").strip()
        try:
            answer = await self._handle(route, event_key, headers, body)
        except Exception:
            log.exception(
                "delivery failed unexpectedly",
                extra={"delivery": delivery_id(headers), "receiver": _receiver(route)},
            )
            answer = Answer(500, {"error": "internal error"}, "error")
        log.info(
            "delivery %s",
            answer.result,
            extra={
                "receiver": _receiver(route),
                "event": event_key,
                "delivery": delivery_id(headers),
                "attempt": headers.get("x-attempt-number", ""),
                "status": answer.status,
                "result": answer.result,
                "refreshed": answer.refreshed,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )
        return answer

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
            self._warn_trailing_newline(route)
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
            candidates = self.store.indexes.warehouses_for(identities(event.repo_urls), scope)
            verdicts = decide_push(event, candidates)
            noun = "warehouse"
        else:
            waiting = self.store.indexes.promotions_waiting_on(event.pr_url, scope)
            verdicts = decide_pull_request(event.pr_url, waiting)
            noun = "promotion"
        for verdict in verdicts:
            for warning in verdict.warnings:
                log.warning(warning, extra={"delivery": delivery_id(headers)})
        return await self._refresh(verdicts, noun, headers)

    async def _refresh(
        self, verdicts: list[Verdict], noun: str, headers: Mapping[str, str]
    ) -> Answer:
        """Refresh what the verdicts name; count only what still failed."""
        targets = [Target(v.kind, v.namespace, v.name) for v in verdicts if v.refresh]
        result = await self.store.refresh(targets, now_rfc3339(micro=True)) if targets else None
        refreshed = result.refreshed if result else []
        names = [f"{t.namespace}/{t.name}" if t.namespace else t.name for t in refreshed]
        extra = {"deliveryId": delivery_id(headers), "refreshed": names}
        if result and result.failed:
            total = len(targets)
            return Answer(
                500,
                {"error": f"failed to refresh {len(result.failed)} of {total} {noun}s", **extra},
                "refresh-failed",
                len(refreshed),
                verdicts,
            )
        return Answer(
            200,
            {"msg": f"refreshed {len(refreshed)} {noun}(s)", **extra},
            "refreshed",
            len(refreshed),
            verdicts,
        )

    def _warn_trailing_newline(self, route: Route) -> None:
        """Say once per receiver that its Secret ends in a newline we had to strip."""
        key = (route.owner.kind, route.owner.namespace, route.name)
        if key in self._newline_warned:
            return
        self._newline_warned.add(key)
        log.warning(
            "receiver %s/%s: signature only verifies without the trailing newline of its "
            "Secret; recreate the Secret without it (echo -n)",
            route.owner.label,
            route.name,
        )


def _receiver(route: Route) -> str:
    """``namespace/name`` of a receiver, ``cluster/name`` for the ClusterConfig."""
    return f"{route.owner.label}/{route.name}"
