"""The Kubernetes backend: watch-fed indexes, refresh by merge patch, one leader publishes.

:class:`KubernetesStore` only wires the parts: a :class:`Reflector` per Kargo kind, the
:class:`SecretFollower`, the :class:`StatusPublisher` under the :class:`LeaderElector`'s
Lease, and the :class:`Refresher` (over its own lean connections, :mod:`.wire`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from lightkube import AsyncClient

from kargo_bitbucket.core.receivers import Owner, referenced_secrets
from kargo_bitbucket.history import DEFAULT_HISTORY_SIZE, DeliveryRecord, MemoryHistory
from kargo_bitbucket.store.backoff import Backoff
from kargo_bitbucket.store.base import REFRESH_BUDGET, Note, RefreshResult, Target
from kargo_bitbucket.store.index import Indexes
from kargo_bitbucket.store.kubernetes.client import (
    USER_AGENT,
    KubernetesConfigError,
    connect,
    load_indexes,
    published_receivers,
)
from kargo_bitbucket.store.kubernetes.leader import LeaderElector
from kargo_bitbucket.store.kubernetes.publisher import StatusPublisher
from kargo_bitbucket.store.kubernetes.reflector import FIRST_RETRY, Reflector
from kargo_bitbucket.store.kubernetes.refresher import PATCH_CONCURRENCY, Refresher
from kargo_bitbucket.store.kubernetes.resources import RESOURCES
from kargo_bitbucket.store.kubernetes.secrets import SecretFollower
from kargo_bitbucket.store.kubernetes.wire import open_wire

__all__ = [
    "RESOURCES",
    "KubernetesConfigError",
    "KubernetesStore",
    "connect",
    "load_indexes",
    "published_receivers",
]

log = logging.getLogger(__name__)

KIND_RETRY_CAP = 5.0
"""Longest wait between retries of a failing watch of a Kargo kind: deliveries are answered
503 until it works again, so it resumes within 5 s of the API server's return (at 30 s,
pushes were answered from a stale cache for 17-24 s after an outage)."""


class KubernetesStore:
    """Caches Kargo's resources from watches; a delivery reads only memory and sends patches."""

    def __init__(
        self,
        client: AsyncClient,
        indexes: Indexes,
        *,
        namespace: str,
        identity: str,
        publish: bool = True,
        patch_concurrency: int = PATCH_CONCURRENCY,
        patch_budget: float = REFRESH_BUDGET,
        attempt_timeout: float = 3.0,
        history_size: int = DEFAULT_HISTORY_SIZE,
        emit_events: bool = True,
        lease_duration: float = 15.0,
    ) -> None:
        self.client = client
        self.indexes = indexes
        self.publish = publish
        self.history = MemoryHistory(history_size)
        self.watch_restarts: dict[tuple[str, str], int] = {}
        self.api_failures: Counter[tuple[str, str]] = Counter()
        self._ready = False
        self._tasks: list[asyncio.Task[None]] = []
        self._reroute_due = asyncio.Event()
        self.elector = LeaderElector(
            client,
            namespace,
            identity,
            self._reroute_due.set,  # the rerouter alone publishes, one pass at a time
            duration=lease_duration,
            renew_every=lease_duration / 3,
            failures=self.api_failures,
        )
        self.publisher = StatusPublisher(
            client, self.elector, self._reroute_due.set, failures=self.api_failures
        )
        self.refresher = Refresher(
            client,
            identity,
            wire=open_wire(client.config, USER_AGENT),
            concurrency=patch_concurrency,
            budget=patch_budget,
            attempt_timeout=attempt_timeout,
            emit_events=emit_events,
        )
        self.secrets = SecretFollower(
            client,
            indexes,
            self._on_object,
            self._reroute_due.set,
            on_restart=self._count_restart,
            failures=self.api_failures,
        )
        self.reflectors = {
            kind: Reflector(
                client,
                resource,
                kind,
                self._on_object,
                namespace=None if kind == "ClusterConfig" else "*",
                on_restart=self._count_restart,
                failures=self.api_failures,
                backoff=Backoff(FIRST_RETRY, KIND_RETRY_CAP),
            )
            for kind, resource in RESOURCES.items()
        }

    @property
    def ready(self) -> bool:
        """True once every kind has been listed and the referenced Secrets read."""
        return self._ready

    def can_refresh(self, kind: str) -> bool:
        """True while the cache of ``kind`` is current: listed, and its watch neither failing
        nor resuming (a push answered from a Warehouse cache missing what changed meanwhile
        would be a 200 that refreshed too little; a 503 has Bitbucket try again). Another
        kind's failing watch does not stop it: a Promotion watch's outage leaves pushes
        answered."""
        return self._ready and self.reflectors[kind].current

    async def start(self) -> None:
        """Start every watch; become ready when the initial lists and Secrets are in."""
        for kind, reflector in self.reflectors.items():
            self._spawn(reflector.run(), f"watch-{kind}")
        await asyncio.gather(*(r.synced.wait() for r in self.reflectors.values()))
        await self._follow_secrets(wait=10)
        self.indexes.reroute()
        self._spawn(self._rerouter(), "rerouter")
        if self.publish:
            self._spawn(self.elector.run(), "leader-election")
        self._ready = True
        log.info("caches loaded", extra=self.indexes.counts())

    def _spawn(self, coroutine: Any, name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(_report_end)
        self._tasks.append(task)

    def _count_restart(self, kind: str, reason: str) -> None:
        key = (kind, reason)
        self.watch_restarts[key] = self.watch_restarts.get(key, 0) + 1

    def _on_object(
        self, kind: str, namespace: str, name: str, body: Mapping[str, Any] | None
    ) -> None:
        """Feed a watched object into the indexes; remember config status to diff against."""
        if kind in ("ProjectConfig", "ClusterConfig"):
            self.publisher.observe(Owner(kind, namespace, name), body)
        if self.indexes.apply(kind, namespace, name, body):
            self._reroute_due.set()

    async def _rerouter(self) -> None:
        """Recompute routes after config or Secret changes, coalescing bursts."""
        while True:
            await self._reroute_due.wait()
            self._reroute_due.clear()
            await self._follow_secrets(wait=5)
            self.indexes.reroute()
            if self.publish and self.elector.leader:
                await self.publisher.publish_all(self.indexes.resolution.statuses)

    async def _follow_secrets(self, *, wait: float) -> None:
        wanted = referenced_secrets(self.indexes.configs(), self.indexes.system_namespace)
        await self.secrets.follow(wanted, wait=wait)

    def record(self, record: DeliveryRecord) -> None:
        """Keep a delivery in this replica's bounded in-memory history."""
        self.history.record(record)

    async def deliveries(
        self,
        namespace: str | None = None,
        receiver: str | None = None,
        limit: int | None = None,
        delivery_id: str | None = None,
    ) -> list[DeliveryRecord]:
        """This replica's recent deliveries, newest first."""
        return await self.history.deliveries(namespace, receiver, limit, delivery_id)

    async def refresh(
        self, targets: Sequence[Target], value: str, note: Note | None = None
    ) -> RefreshResult:
        """Patch every target concurrently (bounded), retrying inside one time budget."""
        return await self.refresher.refresh(targets, value, note)

    async def close(self, deadline: float | None = None) -> None:
        """Stop watching, hand the Lease over, close the client (``deadline`` is for stores
        with writes queued: a refresh here is sent before its delivery is answered)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.secrets.close()
        await self.refresher.close()
        await self.elector.release()
        await self.client.close()


def _report_end(task: asyncio.Task[Any]) -> None:
    """Log a background task (a watch, the rerouter) that ended other than by cancellation:
    it runs for as long as the store does."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped", task.get_name(), exc_info=task.exception())
