"""A Store that keeps everything in memory, for driving the ASGI app in process.

It lives with the tests, not in the package: the product's stores are the state file and
the Kubernetes API, and one that forgets every refresh at exit has no user. It shares
``Indexes`` with them, so routing and matching are the product's own.
"""

from __future__ import annotations

from collections.abc import Sequence

from kargo_bitbucket.config import DEFAULT_SYSTEM_NAMESPACE
from kargo_bitbucket.core.receivers import BaseURL
from kargo_bitbucket.history import DeliveryRecord, MemoryHistory
from kargo_bitbucket.store.base import Note, RefreshResult, Target
from kargo_bitbucket.store.index import Indexes
from tests.builders import parse_manifests

BASE_URL = "http://testserver"


class MemoryStore:
    """The ``Store`` protocol over ``Indexes`` and a dict of objects.

    ``refreshes`` lists every (target, value, note) written; a target in ``failing``
    fails its refresh, and ``broken`` makes ``refresh`` raise (an internal error).
    """

    def __init__(self, manifests: str = "", history_size: int = 100) -> None:
        self.indexes = Indexes(BaseURL.parse(BASE_URL), DEFAULT_SYSTEM_NAMESPACE)
        self.watch_restarts: dict[tuple[str, str], int] = {}
        self.history = MemoryHistory(history_size)
        self.objects: set[tuple[str, str, str]] = set()
        self.refreshes: list[tuple[Target, str, str]] = []
        self.failing: set[Target] = set()
        self.broken = False
        self.loaded = True
        self.lost = False
        self.api_failures: dict[tuple[str, str], int] = {}
        for resource in parse_manifests(manifests, "<test>"):
            self.indexes.apply(resource.kind, resource.namespace, resource.name, resource.body)
            self.objects.add((resource.kind, resource.namespace, resource.name))
        self.indexes.reroute()

    @property
    def ready(self) -> bool:
        """True unless a test says the store is still loading."""
        return self.loaded

    def can_refresh(self, kind: str) -> bool:
        """True unless a test says the store lost its backing (the state file vanished)."""
        return not self.lost

    def receiver_path(self, namespace: str, name: str) -> str:
        """The path a receiver is published at."""
        for path, route in self.indexes.resolution.routes.items():
            if (route.owner.namespace, route.name) == (namespace, name):
                return path
        raise KeyError(f"no receiver {namespace}/{name}")

    async def start(self) -> None:
        """Nothing to load: the manifests were indexed when the store was made."""

    async def refresh(
        self, targets: Sequence[Target], value: str, note: Note | None = None
    ) -> RefreshResult:
        """Remember each write; a target that is not there is gone."""
        if self.broken:
            raise RuntimeError("store broken by the test")
        result = RefreshResult()
        for target in targets:
            if target in self.failing:
                result.failed.append(target)
            elif (target.kind, target.namespace, target.name) in self.objects:
                self.refreshes.append((target, value, note(target) if note else ""))
                result.refreshed.append(target)
            else:
                result.gone.append(target)
        return result

    def record(self, record: DeliveryRecord) -> None:
        """Keep the delivery in a bounded in-memory history."""
        self.history.record(record)

    async def deliveries(
        self,
        namespace: str | None = None,
        receiver: str | None = None,
        limit: int | None = None,
        delivery_id: str | None = None,
    ) -> list[DeliveryRecord]:
        """Recent deliveries, newest first."""
        return await self.history.deliveries(namespace, receiver, limit, delivery_id)

    async def close(self, deadline: float | None = None) -> None:
        """Nothing to release, nor to write."""
