"""List-then-watch of one Kubernetes kind: resume, re-list on 410 Gone, back off on errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import httpx2 as httpx
from lightkube import ApiError, AsyncClient
from lightkube.types import on_error_raise

from kargo_bitbucket.compat import generic_client
from kargo_bitbucket.core.objects import ObjectMeta
from kargo_bitbucket.core.objects import key as object_key
from kargo_bitbucket.logs import Throttle
from kargo_bitbucket.store.backoff import Backoff, Outage, retry_after, status_code

log = logging.getLogger(__name__)

Handler = Callable[[str, str, str, Mapping[str, Any] | None], None]
"""(kind, namespace, name, body or None when deleted)."""

LIST_CHUNK = 500
WATCH_TIMEOUT = 290
WATCH_IDLE_LIMIT = WATCH_TIMEOUT + 60
"""A watch silent for this long (no event, no bookmark, no reconnect) is presumed dead."""
WORKING_AFTER = 15.0
"""A watch open this long without an error works, events or not (a quiet kind sends none).
A refused one fails within milliseconds, an unreachable server within the client's 10 s
connect timeout: neither ever counts as working."""
CURRENT_AFTER = 1.0
"""A watch resumed after an error is taken as current once open this long without one, or
at its first event: the events it missed come first. A refused watch fails well within it;
one still connecting to an unreachable server may not (10 s connect timeout), but then the
refreshes fail too."""
FIRST_RETRY, MAX_BACKOFF = 0.4, 30.0
"""Retries of a failing list or watch wait 0.2-0.4 s, then twice as long each time, up to
15-30 s: a watch refused for ever costs 2-4 requests a minute, not 3-5 a second."""
LEFT_OUT_LOG_RATE = 5
"""Lines a second about objects left out (a bug could otherwise log one per object of a list)."""


def plain(obj: Any) -> dict[str, Any]:
    """A lightkube object as plain JSON-like data."""
    return obj.to_dict() if hasattr(obj, "to_dict") and not isinstance(obj, dict) else dict(obj)


class Reflector:
    """Keeps a handler fed with every object of one kind, exactly as the API server has them."""

    def __init__(
        self,
        client: AsyncClient,
        resource: Any,
        kind: str,
        handler: Handler,
        *,
        namespace: str | None = "*",
        name: str | None = None,
        on_restart: Callable[[str, str], None] | None = None,
        on_forbidden: Callable[[str, str, str], None] | None = None,
        failures: Counter[tuple[str, str]] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.client = client
        self.resource = resource
        self.kind = kind
        self.handler = handler
        self.namespace = namespace
        self.name = name
        self.synced = asyncio.Event()
        self.on_restart = on_restart or (lambda kind, reason: None)
        self.on_forbidden = on_forbidden
        self.backoff = backoff or Backoff(FIRST_RETRY, MAX_BACKOFF)
        self._unexpected = Backoff(FIRST_RETRY, MAX_BACKOFF)
        self._left_out = Throttle(LEFT_OUT_LOG_RATE)
        what = f"watch of {kind} {namespace}/{name}" if name else f"watch of {kind}"
        self.outage = Outage(log, what, kind=kind, counts=failures)
        self.current = False
        """The cache holds what the API server has (as of the last event): listed, and no
        error since that a resumed watch has not yet made up for."""
        self._known: set[tuple[str, str]] = set()
        self._version: str | None = None
        self._working = False  # the current watch delivered an event or stayed up
        self._delivered = False  # a watch delivered an event since the last list

    async def run(self) -> None:
        """List, then watch forever; re-list on 410, resume from the last version otherwise.

        Failures back off (:class:`Backoff`) until a watch works again: a list that
        succeeds before a watch that is refused does not count as working.
        """
        while True:
            try:
                if self._version is None:
                    await (self._get() if self.name else self._list())
                    self._delivered = False
                await self._watch()
            except asyncio.CancelledError:
                raise
            except httpx.HTTPStatusError as error:
                if status_code(error) == 410:
                    log.info("watch of %s expired (410); listing again", self.kind)
                    self._version = None
                    self.on_restart(self.kind, "expired")
                    if self._delivered or self._working:  # not right after a list: at once
                        continue
                else:
                    self.on_restart(self.kind, "error")
                await self._retry(error)
            except (httpx.HTTPError, OSError, ValueError, TimeoutError) as error:
                self.on_restart(self.kind, "error")
                await self._retry(error)
            except Exception as error:  # what lightkube cannot decode, a bug: never the end
                if not self.outage.failures:
                    log.error("watch of %s: unexpected error", self.kind, exc_info=error)
                self._version = None  # listed again: nothing since is taken for granted
                self.on_restart(self.kind, "error")
                # Still current: were one object nobody can read to make every delivery a
                # 503, whoever may create it could stop every project's.
                delay = self._unexpected.delay()
                self.outage.failed(error, delay)
                await self._unexpected.sleep(delay)

    async def _retry(self, error: Exception) -> None:
        self.current = False
        delay = self.backoff.delay(retry_after(error))
        self.outage.failed(error, delay)
        await self.backoff.sleep(delay)

    def _now_current(self) -> None:
        self.current = True

    def _works(self) -> None:
        """The watch works: reset the backoff, and say so if it had been failing."""
        self._working = True
        self.backoff.reset()
        self._unexpected.reset()
        self.outage.recovered()

    async def _get(self) -> None:
        """One named object (needs only ``get``, never ``list``): fetch it, or note it is absent."""
        assert self.name is not None
        try:
            obj = await self.client.get(self.resource, self.name, namespace=self.namespace)
        except ApiError as error:
            if error.status.code in (401, 403) and self.on_forbidden is not None:
                # Say so at once (no waiting for the Secret); keep retrying in case RBAC is fixed.
                self.on_forbidden(
                    self.namespace or "", self.name, f"HTTP {error.status.code}: {error}"
                )
                self.synced.set()
            if error.status.code != 404:
                raise
            self._known.clear()
            self._feed(self.namespace or "", self.name, None)
            self._version = ""
        else:
            body = plain(obj)
            self._known = {object_key(body)}
            self._feed(*object_key(body), body)
            # Not the object's own resourceVersion: for a Secret unchanged for long it is
            # older than the API server's watch history, and the watch would be a 410 again.
            # Watching from now replays the object as ADDED, so nothing is missed.
            self._version = ""
        self.current = True
        self.synced.set()

    async def _list(self) -> None:
        """Full list: feed every object and forget the ones that vanished since the last one."""
        listing = self.client.list(
            self.resource,
            namespace=self.namespace,
            chunk_size=LIST_CHUNK,
        )
        seen: set[tuple[str, str]] = set()
        async for obj in listing:
            body = plain(obj)
            key = object_key(body)
            seen.add(key)
            self._feed(key[0], key[1], body)
        for namespace, name in self._known - seen:
            self._feed(namespace, name, None)
        self._known = seen
        self._version = listing.resourceVersion
        self.current = True
        self.synced.set()

    async def _watch(self) -> None:
        """Follow changes from the last version, bookmarks included.

        lightkube's public ``watch`` cannot ask for bookmarks, so the request is built
        with its generic client; that client resumes by itself after a clean close.
        """
        inner = generic_client(self.client)
        request = inner.prepare_request(
            "list",
            res=self.resource,
            namespace=self.namespace,
            watch=True,
            params={
                "timeoutSeconds": WATCH_TIMEOUT,
                "resourceVersion": self._version or None,
                "allowWatchBookmarks": "true",
                "fieldSelector": f"metadata.name={self.name}" if self.name else None,
            },
        )
        self._working = False
        loop = asyncio.get_running_loop()
        works = loop.call_later(WORKING_AFTER, self._works)
        current = loop.call_later(CURRENT_AFTER, self._now_current)
        try:
            async with asyncio.timeout(WATCH_IDLE_LIMIT) as idle:
                async for event, obj in inner.watch(request, on_error=on_error_raise):
                    idle.reschedule(asyncio.get_running_loop().time() + WATCH_IDLE_LIMIT)
                    if not self._working:
                        self._works()
                    self._delivered = True
                    self._on_event(event, obj)
                    self.current = True
        finally:
            works.cancel()
            current.cancel()

    def _on_event(self, event: str, obj: Any) -> None:
        """Apply one watch event; bookmarks only move the resume point."""
        body = plain(obj)
        self._version = ObjectMeta.of(body).resource_version or self._version
        if event == "BOOKMARK":
            return
        key = object_key(body)
        if event == "DELETED":
            self._known.discard(key)
            self._feed(key[0], key[1], None)
        else:
            self._known.add(key)
            self._feed(key[0], key[1], body)

    def _feed(self, namespace: str, name: str, body: Mapping[str, Any] | None) -> None:
        """Hand one object to the handler; one it fails on is left out (until it changes),
        not the end of the watch or of the list with it."""
        try:
            self.handler(self.kind, namespace, name, body)
        except Exception:
            if self._left_out.admit(self.kind) is not None:
                log.exception("%s %s/%s left out: it could not be read", self.kind, namespace, name)
            if body is not None:  # not matched as it was before either
                with contextlib.suppress(Exception):
                    self.handler(self.kind, namespace, name, None)
