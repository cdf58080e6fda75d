"""The Kubernetes backend: watch-fed indexes, refresh by merge patch, one leader publishes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx2 as httpx
from lightkube import ApiError, AsyncClient
from lightkube.generic_resource import create_global_resource, create_namespaced_resource
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event, Secret
from lightkube.types import PatchType

from kargo_bitbucket.core.receivers import Owner, OwnerStatus, owner_of, published
from kargo_bitbucket.history import DEFAULT_HISTORY_SIZE, DeliveryRecord, MemoryHistory
from kargo_bitbucket.store.base import (
    REFRESH_ANNOTATION,
    REFRESH_BUDGET,
    RefreshResult,
    Target,
    now_rfc3339,
)
from kargo_bitbucket.store.index import Indexes
from kargo_bitbucket.store.leader import LeaderElector
from kargo_bitbucket.store.reflector import Reflector, plain, status_code

log = logging.getLogger(__name__)

GROUP, VERSION = "kargo.akuity.io", "v1alpha1"
RESOURCES: dict[str, Any] = {
    "Warehouse": create_namespaced_resource(GROUP, VERSION, "Warehouse", "warehouses"),
    "Promotion": create_namespaced_resource(GROUP, VERSION, "Promotion", "promotions"),
    "ProjectConfig": create_namespaced_resource(GROUP, VERSION, "ProjectConfig", "projectconfigs"),
    "ClusterConfig": create_global_resource(GROUP, VERSION, "ClusterConfig", "clusterconfigs"),
}
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
PATCH_CONCURRENCY = 64
EVENT_CONCURRENCY = 16
POOL_SIZE = PATCH_CONCURRENCY + EVENT_CONCURRENCY + 8
PUBLISH_RETRY_MAX = 30.0


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
        self.identity = identity
        self.history = MemoryHistory(history_size)
        self.emit_events = emit_events
        self._event_tasks: set[asyncio.Task[None]] = set()
        self._event_limit = asyncio.Semaphore(EVENT_CONCURRENCY)
        self.indexes = indexes
        self.publish = publish
        self.patch_concurrency = patch_concurrency
        self.patch_budget = patch_budget
        self.attempt_timeout = attempt_timeout
        self.watch_restarts: dict[tuple[str, str], int] = {}
        self._ready = False
        self._tasks: list[asyncio.Task[None]] = []
        self._secret_watches: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._configs: dict[Owner, Mapping[str, Any]] = {}  # as last seen or written
        self._reroute_due = asyncio.Event()
        self._publish_failures = 0
        self.elector = LeaderElector(
            client,
            namespace,
            identity,
            self._reroute_due.set,  # the rerouter alone publishes, one pass at a time
            duration=lease_duration,
            renew_every=lease_duration / 3,
        )
        self.reflectors = [
            Reflector(
                client,
                resource,
                kind,
                self._on_object,
                namespace=None if kind == "ClusterConfig" else "*",
                on_restart=self._count_restart,
            )
            for kind, resource in RESOURCES.items()
        ]

    @property
    def ready(self) -> bool:
        """True once every kind has been listed and the referenced Secrets read."""
        return self._ready

    @property
    def available(self) -> bool:
        """True while the caches are synced (every watch has listed its kind)."""
        return self._ready and all(r.synced.is_set() for r in self.reflectors)

    async def start(self) -> None:
        """Start every watch; become ready when the initial lists and Secrets are in."""
        for reflector in self.reflectors:
            self._spawn(reflector.run(), f"watch-{reflector.kind}")
        await asyncio.gather(*(r.synced.wait() for r in self.reflectors))
        await self._follow_secrets(initial=True)
        self.indexes.reroute()
        self._spawn(self._rerouter(), "rerouter")
        if self.publish:
            self._spawn(self.elector.run(), "leader-election")
        self._ready = True
        log.info("caches loaded", extra=self.indexes.counts())

    def _spawn(self, coroutine: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(coroutine, name=name))

    def _count_restart(self, kind: str, reason: str) -> None:
        key = (kind, reason)
        self.watch_restarts[key] = self.watch_restarts.get(key, 0) + 1

    def _on_object(
        self, kind: str, namespace: str, name: str, body: Mapping[str, Any] | None
    ) -> None:
        """Feed a watched object into the indexes; remember config status to diff against."""
        if kind in ("ProjectConfig", "ClusterConfig"):
            owner = Owner(kind, namespace, name)
            if body is None:
                self._configs.pop(owner, None)
            else:
                self._configs[owner] = body
        if self.indexes.apply(kind, namespace, name, body):
            self._reroute_due.set()

    def _on_unreadable_secret(self, namespace: str, name: str, why: str) -> None:
        """A referenced Secret we may not get: its receivers' Ready condition says so."""
        self.indexes.secret_unreadable(namespace, name, why)
        self._reroute_due.set()

    async def _rerouter(self) -> None:
        """Recompute routes after config or Secret changes, coalescing bursts."""
        while True:
            await self._reroute_due.wait()
            self._reroute_due.clear()
            await self._follow_secrets(initial=False)
            self.indexes.reroute()
            if self.elector.leader:
                await self._publish_all()

    def _referenced_secrets(self) -> set[tuple[str, str]]:
        """(namespace, name) of every Secret a Bitbucket receiver names."""
        wanted = set()
        for config in self.indexes.configs():
            owner = owner_of(config)
            if not owner.honoured:
                continue
            namespace = owner.namespace or self.indexes.system_namespace
            for receiver in (config.get("spec") or {}).get("webhookReceivers") or []:
                bitbucket = receiver.get("bitbucket") if isinstance(receiver, Mapping) else None
                if isinstance(bitbucket, Mapping):
                    name = (bitbucket.get("secretRef") or {}).get("name")
                    if isinstance(name, str) and name:
                        wanted.add((namespace, name))
        return wanted

    async def _follow_secrets(self, *, initial: bool) -> None:
        """Watch exactly the referenced Secrets by name; forget the others' data."""
        wanted = self._referenced_secrets()
        for key in set(self._secret_watches) - wanted:
            self._secret_watches.pop(key).cancel()
            self.indexes.drop_secret(*key)
        fresh = []
        for key in wanted - set(self._secret_watches):
            reflector = Reflector(
                self.client,
                Secret,
                "Secret",
                self._on_object,
                namespace=key[0],
                name=key[1],
                on_restart=self._count_restart,
                on_forbidden=self._on_unreadable_secret,
            )
            self._secret_watches[key] = asyncio.create_task(
                reflector.run(), name=f"secret-{key[0]}/{key[1]}"
            )
            fresh.append(reflector.synced.wait())
        if fresh:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10 if initial else 5):
                    await asyncio.gather(*fresh)

    async def _publish_all(self) -> None:
        """Write each owner's receivers and conditions, only where they changed."""
        if not self.publish:
            return
        failed = False
        for owner, status in self.indexes.resolution.statuses.items():
            if not self.elector.leader:
                return  # lost the Lease meanwhile: the next leader publishes
            try:
                await self._publish(owner, status)
            except (ApiError, httpx.HTTPError, OSError, TimeoutError) as error:
                failed = True
                if isinstance(error, ApiError) and error.status.code == 409:
                    # Another writer was first: the retry renders over what it wrote.
                    log.info("status of %s %s changed meanwhile", owner.kind, owner.label)
                    continue
                reason = f"{type(error).__name__}: {error}".removesuffix(": ")
                log.warning("cannot publish status of %s %s: %s", owner.kind, owner.label, reason)
        if not failed:
            self._publish_failures = 0
            return
        # Nothing else may change for hours: try again (a reroute republishes what differs).
        self._publish_failures += 1
        delay = min(PUBLISH_RETRY_MAX, 0.5 * 2 ** min(self._publish_failures, 10))
        asyncio.get_running_loop().call_later(delay, self._reroute_due.set)

    async def _publish(self, owner: Owner, status: OwnerStatus) -> None:
        config = self._configs.get(owner, {})
        meta = config.get("metadata") or {}
        current = config.get("status") or {}
        rendered = status.render(current, int(meta.get("generation") or 1), now_rfc3339())
        if all(current.get(key) == value for key, value in rendered.items()):
            return
        resource = RESOURCES[owner.kind]
        patch: dict[str, Any] = {"status": rendered}
        if meta.get("resourceVersion"):
            # Only over the status we read: a write by another controller since (Kargo's
            # own, for its receivers) makes this a 409, and we retry once we have seen it.
            patch["metadata"] = {"resourceVersion": meta["resourceVersion"]}
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
        # in between would see stale status and write the same thing again.
        self._configs[owner] = plain(patched)
        log.info("published receivers of %s %s", owner.kind, owner.label)

    def record(self, record: DeliveryRecord) -> None:
        """Keep a delivery in this replica's bounded in-memory history."""
        self.history.record(record)

    async def deliveries(
        self, namespace: str | None = None, receiver: str | None = None, limit: int | None = None
    ) -> list[DeliveryRecord]:
        """This replica's recent deliveries, newest first."""
        return await self.history.deliveries(namespace, receiver, limit)

    async def refresh(self, targets: Sequence[Target], value: str, note: str = "") -> RefreshResult:
        """Patch every target concurrently (bounded), retrying inside one time budget."""
        deadline = time.monotonic() + self.patch_budget
        limit = asyncio.Semaphore(self.patch_concurrency)
        body = {"metadata": {"annotations": {REFRESH_ANNOTATION: value}}}
        outcomes = await asyncio.gather(
            *(self._patch(target, body, limit, deadline) for target in targets)
        )
        result = RefreshResult()
        refreshed = []
        for target, (outcome, uid) in zip(targets, outcomes, strict=True):
            getattr(result, outcome).append(target)
            if outcome == "refreshed":
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
    ) -> tuple[str, str]:
        """One object's refresh: ``refreshed`` (with its uid), ``gone`` (404) or ``failed``."""
        resource = RESOURCES[target.kind]
        attempt = 0
        while True:
            attempt += 1
            retry_after = 0.0
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "failed", ""
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
                return "refreshed", str((plain(patched).get("metadata") or {}).get("uid") or "")
            except httpx.HTTPStatusError as error:
                code = status_code(error)
                if code == 404:
                    return "gone", ""
                if code not in RETRYABLE:
                    log.error(
                        "refresh of %s %s/%s refused: %s",
                        target.kind,
                        target.namespace,
                        target.name,
                        error,
                    )
                    return "failed", ""
                retry_after = _retry_after(error.response)
                reason = f"HTTP {code}"
            except (TimeoutError, httpx.TimeoutException, httpx.TransportError) as error:
                reason = type(error).__name__
            pause = max(retry_after, min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))
            if time.monotonic() + pause >= deadline:
                log.error(
                    "refresh of %s %s/%s failed after %d attempt(s): %s",
                    target.kind,
                    target.namespace,
                    target.name,
                    attempt,
                    reason,
                )
                return "failed", ""
            await asyncio.sleep(pause)

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
            log.debug(
                "cannot record Event on %s %s/%s: %s",
                target.kind,
                target.namespace,
                target.name,
                error,
            )

    async def close(self) -> None:
        """Stop watching, hand the Lease over, close the client."""
        tasks = [*self._tasks, *self._secret_watches.values(), *self._event_tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.elector.release()
        await self.client.close()


def _retry_after(response: httpx.Response | None) -> float:
    """Seconds a 429/503 asks us to wait, if it says."""
    value = response.headers.get("retry-after", "") if response is not None else ""
    try:
        return max(0.0, float(value))
    except ValueError:
        return 0.0


class KubernetesConfigError(RuntimeError):
    """No usable cluster credentials were found."""


def connect(kubeconfig: str | None, context: str | None) -> AsyncClient:
    """A client from ``--kubeconfig``/``--context``, else in-cluster, else ``$KUBECONFIG``."""
    from lightkube import ConfigError, KubeConfig
    from lightkube.config.client_adapter import verify_cluster

    try:
        config = KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_env()
        single = config.get(context_name=context)
    except (ConfigError, OSError, ValueError) as error:
        raise KubernetesConfigError(f"cannot load Kubernetes credentials: {error}") from error
    if single is None or single.user is None:
        raise KubernetesConfigError(f"kubeconfig has no usable context {context or '(current)'}")
    # Keep as many connections alive as patches and Events may run at once: with httpx's
    # default of 20, a 500-Warehouse push opened ~260 new TLS connections (measured).
    transport = httpx.AsyncHTTPTransport(
        verify=verify_cluster(single.cluster, single.user, single.abs_file),
        # No cap on connections: every watch (one per kind and per referenced Secret) holds
        # one for good, and patches and Events are bounded by their own semaphores; a cap
        # left 85 referenced Secrets with no connection for anything else.
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=POOL_SIZE),
    )
    return AsyncClient(
        single,
        timeout=httpx.Timeout(10.0),
        field_manager="kargo-bitbucket",
        transport=transport,
    )


async def load_indexes(client: AsyncClient, indexes: Indexes) -> Indexes:
    """Fill ``indexes`` with one list of every kind (for one-shot commands like ``explain``)."""
    for kind, resource in RESOURCES.items():
        namespace = None if kind == "ClusterConfig" else "*"
        async for obj in client.list(resource, namespace=namespace):
            body = plain(obj)
            meta = body.get("metadata") or {}
            indexes.apply(kind, str(meta.get("namespace") or ""), str(meta.get("name")), body)
    await client.close()
    return indexes


async def published_receivers(client: AsyncClient) -> list[tuple[str, str, str]]:
    """(owner, receiver name, URL) from every ProjectConfig's and ClusterConfig's status."""
    found = []
    for kind in ("ClusterConfig", "ProjectConfig"):
        namespace = "*" if kind == "ProjectConfig" else None
        async for obj in client.list(RESOURCES[kind], namespace=namespace):
            found += published(plain(obj))
    await client.close()
    return found
