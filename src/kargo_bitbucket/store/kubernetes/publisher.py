"""Publish each owner's ``status.webhookReceivers`` and conditions, while holding the Lease."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import httpx2 as httpx
from lightkube import ApiError, AsyncClient
from lightkube.types import PatchType

from kargo_bitbucket.core.objects import ConfigView
from kargo_bitbucket.core.receivers import Owner, OwnerStatus
from kargo_bitbucket.store.backoff import Backoff, Outage
from kargo_bitbucket.store.base import now_rfc3339
from kargo_bitbucket.store.kubernetes.leader import LeaderElector
from kargo_bitbucket.store.kubernetes.reflector import plain
from kargo_bitbucket.store.kubernetes.resources import RESOURCES

log = logging.getLogger(__name__)

FIRST_RETRY, MAX_BACKOFF = 1.0, 30.0
"""A pass that failed is tried again after 0.5-1 s, then twice as long each time, up to
15-30 s: nothing else may change for hours, so it must come back by itself."""


class StatusPublisher:
    """Writes only what differs from the status last seen, over that status's resourceVersion.

    A write by another controller since (Kargo's own, for its receivers) makes ours a 409,
    and the retry renders over what it wrote; a write never outlives our leadership.
    """

    def __init__(
        self,
        client: AsyncClient,
        elector: LeaderElector,
        retry: Callable[[], None],
        *,
        failures: Counter[tuple[str, str]] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.client = client
        self.elector = elector
        self.retry = retry
        self.backoff = backoff or Backoff(FIRST_RETRY, MAX_BACKOFF)
        self.outage = Outage(log, "status publication", counts=failures)
        self._configs: dict[Owner, Mapping[str, Any]] = {}  # as last seen or written

    def observe(self, owner: Owner, body: Mapping[str, Any] | None) -> None:
        """A config as the watch delivered it (``None``: deleted): what the next write diffs."""
        if body is None:
            self._configs.pop(owner, None)
        else:
            self._configs[owner] = body

    async def publish_all(self, statuses: Mapping[Owner, OwnerStatus]) -> None:
        """Write each owner's receivers and conditions, only where they changed; on failure,
        call ``retry`` after a backoff (a reroute republishes what differs)."""
        conflicted = False
        failure: tuple[Owner, Exception] | None = None
        for owner, status in statuses.items():
            if not self.elector.leader:
                return  # lost the Lease meanwhile: the next leader publishes
            try:
                await self._publish(owner, status)
            except (ApiError, httpx.HTTPError, OSError, TimeoutError) as error:
                if isinstance(error, ApiError) and error.status.code == 409:
                    # Another writer was first: the retry renders over what it wrote.
                    log.info("status of %s %s changed meanwhile", owner.kind, owner.label)
                    conflicted = True
                    continue
                failure = failure or (owner, error)
        if failure is None:
            self.outage.recovered()
        if failure is None and not conflicted:
            self.backoff.reset()
            return
        delay = self.backoff.delay()
        if failure is not None:
            failed, cause = failure
            self.outage.failed(
                cause, delay, kind=failed.kind, about=f"{failed.kind} {failed.label}"
            )
        asyncio.get_running_loop().call_later(delay, self.retry)

    async def _publish(self, owner: Owner, status: OwnerStatus) -> None:
        seen = self._configs.get(owner)
        view = ConfigView(seen or {})
        meta = view.meta
        current = view.status
        rendered = status.render(current, meta.generation, now_rfc3339())
        if all(current.get(key) == value for key, value in rendered.items()):
            return
        resource = RESOURCES[owner.kind]
        patch: dict[str, Any] = {"status": rendered}
        if meta.resource_version:
            # Only over the status we read: a write by another controller since (Kargo's
            # own, for its receivers) makes this a 409, and we retry once we have seen it.
            patch["metadata"] = {"resourceVersion": meta.resource_version}
        # A write must not land after another replica may have taken the Lease over.
        async with asyncio.timeout(self.elector.remaining()):
            patched = await self.client.patch(
                resource.Status,
                owner.name,
                patch,
                namespace=owner.namespace or None,
                patch_type=PatchType.MERGE,
            )
        # Our own write: remember it now, not when its watch event arrives, or a reroute
        # in between would see stale status and write the same thing again; but only if the
        # watch delivered nothing for this config meanwhile. What it delivered may be another
        # controller's later write, dropping our entry: our answer over it would hide that
        # for good. An older event kept instead costs one 409 and a retry.
        if self._configs.get(owner) is seen:
            self._configs[owner] = plain(patched)
        log.info("published receivers of %s %s", owner.kind, owner.label)
