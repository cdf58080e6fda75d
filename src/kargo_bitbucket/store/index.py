"""In-memory indexes fed by either store: Warehouses by repository, Promotions by PR, routes."""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kargo_bitbucket.core.decision import WarehouseEntry
from kargo_bitbucket.core.objects import key as object_key
from kargo_bitbucket.core.objects import secret_data
from kargo_bitbucket.core.promotions import awaited_pr_urls, pr_url_key
from kargo_bitbucket.core.receivers import BaseURL, Resolution, Route, resolve
from kargo_bitbucket.logs import Throttle

log = logging.getLogger(__name__)

NOTES_RATE = 20
"""Lines a second saying what a Warehouse holds that cannot be evaluated or is unknown: a
cluster of 100,000 templated Warehouses with one odd field would otherwise log 100,000
lines at every start."""

Key = tuple[str, str]
"""(namespace, name) of an object; namespace is "" for cluster-scoped objects."""


def decode_secret_data(body: Mapping[str, Any]) -> dict[str, bytes]:
    """The decoded ``data`` of a Secret body; undecodable values are left out."""
    decoded: dict[str, bytes] = {}
    for key, value in secret_data(body).items():
        if isinstance(value, str):
            try:
                decoded[str(key)] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                continue
    return decoded


class Indexes:
    """What a delivery reads, kept current by a store's change feed; no delivery scans."""

    def __init__(
        self,
        base: BaseURL,
        system_namespace: str,
        *,
        serving: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``serving``: a server's indexes, which say in the log what keeps a receiver from
        being published and what a Warehouse holds that is not evaluated (one-shot commands
        print their own account); ``clock`` paces those lines."""
        self.base = base
        self.system_namespace = system_namespace
        self.serving = serving
        self._notes = Throttle(NOTES_RATE, clock)
        self._holding = False  # lines held back since the last one logged: said once
        self.clear()

    def clear(self) -> None:
        """Forget every object, to be fed anew (the state file was replaced)."""
        self._warehouses: dict[Key, WarehouseEntry] = {}
        self._by_identity: dict[str, dict[str, set[str]]] = {}
        self._promotion_urls: dict[Key, frozenset[str]] = {}
        self._by_pr: dict[str, dict[str, set[str]]] = {}
        self._configs: dict[tuple[str, str, str], Mapping[str, Any]] = {}
        self._secrets: dict[Key, dict[str, bytes]] = {}
        self._unreadable: dict[Key, str] = {}
        self._routes: dict[str, Route] = {}
        self.resolution = Resolution(routes={}, statuses={})

    def apply(self, kind: str, namespace: str, name: str, body: Mapping[str, Any] | None) -> bool:
        """Feed one object (``body`` None = deleted); True when ``reroute`` is due."""
        if body is None:
            return self._drop(kind, namespace, name)
        if kind == "Warehouse":
            self.put_warehouse(body)
        elif kind == "Promotion":
            self.put_promotion(body)
        elif kind == "Secret":
            self.put_secret(body)
        else:
            self.put_config(body)
        return kind not in ("Warehouse", "Promotion")

    def _drop(self, kind: str, namespace: str, name: str) -> bool:
        """Forget one deleted object; True when ``reroute`` is due."""
        if kind == "Warehouse":
            self.drop_warehouse(namespace, name)
        elif kind == "Promotion":
            self.drop_promotion(namespace, name)
        elif kind == "Secret":
            self.drop_secret(namespace, name)
        else:
            self.drop_config(kind, namespace, name)
        return kind not in ("Warehouse", "Promotion")

    # Warehouses
    def put_warehouse(self, body: Mapping[str, Any]) -> WarehouseEntry:
        """Index (or re-index) a Warehouse under every repository it subscribes to."""
        entry = WarehouseEntry.from_body(body)
        key = (entry.namespace, entry.name)
        if self.serving:
            old = self._warehouses.get(key)
            self._log_notes(entry, frozenset(old.notes) if old is not None else frozenset())
        self.drop_warehouse(*key)
        self._warehouses[key] = entry
        for identity in entry.identities:
            self._by_identity.setdefault(identity, {}).setdefault(entry.namespace, set()).add(
                entry.name
            )
        return entry

    def _log_notes(self, entry: WarehouseEntry, before: frozenset[str]) -> None:
        """A warning for each note the Warehouse has newly (a relist or a status write logs
        nothing again), at most NOTES_RATE a second; the next says how many were not. The
        first held back is said at once: at a start, no next line may come for days.
        ``before`` is a set: a Warehouse of 20,000 notes compared as tuples took 30 s."""
        for note in entry.notes:
            if note in before:
                continue
            held = self._notes.admit("warehouse")
            if held is None:
                if not self._holding:
                    self._holding = True
                    log.warning(
                        "more than %d lines a second about Warehouses' subscriptions: the "
                        "rest of this second's are not logged, now or later (the next line "
                        "logged counts them; `kargo-bitbucket lint` lists them all)",
                        NOTES_RATE,
                    )
                continue
            self._holding = False
            more = f" ({held} more such lines not logged)" if held else ""
            log.warning("%s%s", note, more)

    def drop_warehouse(self, namespace: str, name: str) -> None:
        """Forget a Warehouse."""
        old = self._warehouses.pop((namespace, name), None)
        if old is not None:
            _unlink(self._by_identity, old.identities, namespace, name)

    def warehouses_for(self, identities: Iterable[str], scope: str | None) -> list[WarehouseEntry]:
        """Warehouses subscribed to any of ``identities`` within ``scope`` (None = all)."""
        keys: dict[Key, None] = {}
        for identity in identities:
            for namespace, names in _in_scope(self._by_identity.get(identity), scope):
                for name in names:
                    keys[(namespace, name)] = None
        return [self._warehouses[key] for key in sorted(keys)]

    def warehouse(self, namespace: str, name: str) -> WarehouseEntry | None:
        """One indexed Warehouse, if it is indexed."""
        return self._warehouses.get((namespace, name))

    def warehouses(self, scope: str | None) -> list[WarehouseEntry]:
        """Every indexed Warehouse in ``scope`` (for one-off listings, never per delivery)."""
        return [w for w in self._warehouses.values() if scope is None or w.namespace == scope]

    # Promotions
    def put_promotion(self, body: Mapping[str, Any]) -> None:
        """Index a Promotion by the PR URLs it is waiting on (none unless Running)."""
        key = object_key(body)
        self.drop_promotion(*key)
        urls = awaited_pr_urls(body)
        if urls:
            self._promotion_urls[key] = urls
            for url in urls:
                self._by_pr.setdefault(url, {}).setdefault(key[0], set()).add(key[1])

    def drop_promotion(self, namespace: str, name: str) -> None:
        """Forget a Promotion."""
        old = self._promotion_urls.pop((namespace, name), None)
        if old is not None:
            _unlink(self._by_pr, old, namespace, name)

    def promotions_waiting_on(self, pr_url: str, scope: str | None) -> list[Key]:
        """Running Promotions waiting on ``pr_url`` within ``scope``."""
        found = _in_scope(self._by_pr.get(pr_url_key(pr_url)), scope)
        return sorted((namespace, name) for namespace, names in found for name in names)

    def awaited_pull_requests(self) -> list[tuple[str, str, str]]:
        """(namespace, name, PR URL key) of every Running Promotion waiting on a PR."""
        return sorted(
            (namespace, name, url)
            for (namespace, name), urls in self._promotion_urls.items()
            for url in urls
        )

    # Receivers
    def put_config(self, body: Mapping[str, Any]) -> None:
        """Remember a ProjectConfig or ClusterConfig (call ``reroute`` after a batch)."""
        namespace, name = object_key(body)
        self._configs[str(body.get("kind")), namespace, name] = body

    def configs(self) -> list[Mapping[str, Any]]:
        """Every ProjectConfig and ClusterConfig, in a stable order."""
        return [self._configs[key] for key in sorted(self._configs)]

    def drop_config(self, kind: str, namespace: str, name: str) -> None:
        """Forget a ProjectConfig or ClusterConfig (call ``reroute`` after a batch)."""
        self._configs.pop((kind, namespace, name), None)

    def put_secret(self, body: Mapping[str, Any]) -> None:
        """Remember a Secret's decoded data (call ``reroute`` after a batch)."""
        key = object_key(body)
        self._secrets[key] = decode_secret_data(body)
        self._unreadable.pop(key, None)

    def drop_secret(self, namespace: str, name: str) -> None:
        """Forget a Secret (call ``reroute`` after a batch)."""
        self._secrets.pop((namespace, name), None)
        self._unreadable.pop((namespace, name), None)

    def secret_unreadable(self, namespace: str, name: str, why: str) -> None:
        """Note that a Secret exists, maybe, but we may not read it (call ``reroute``)."""
        self._secrets.pop((namespace, name), None)
        self._unreadable[(namespace, name)] = why

    def reroute(self) -> Resolution:
        """Recompute routes and owner statuses from the current configs and Secrets; when
        ``serving``, say in the log what newly keeps a receiver from being published."""
        before = self.resolution
        self.resolution = resolve(
            self.configs(),
            lambda namespace, name: self._secrets.get((namespace, name)),
            self.base,
            self.system_namespace,
            lambda namespace, name: self._unreadable.get((namespace, name)),
        )
        self._routes = self.resolution.routes
        if self.serving:
            _log_changes(before, self.resolution)
        return self.resolution

    def route(self, path: str) -> Route | None:
        """The receiver published at exactly ``path``, if any."""
        return self._routes.get(path)

    def counts(self) -> dict[str, int]:
        """How many objects each index holds (for logs and metrics)."""
        return {
            "warehouses": len(self._warehouses),
            "promotions_waiting": len(self._promotion_urls),
            "receivers": len(self._routes),
        }


def _log_changes(before: Resolution, after: Resolution) -> None:
    """A warning for each owner whose receivers have new problems, and each config newly
    ignored; the same lines are in the owners' Ready conditions, but nobody reads those
    until something does not refresh."""
    for owner, status in after.statuses.items():
        old = before.statuses.get(owner)
        new = [p for p in status.problems if old is None or p not in old.problems]
        if new:
            log.warning("%s", owner.unpublished(new))
    for owner in set(after.ignored) - set(before.ignored):
        log.warning("%s", owner.ignored)


def _in_scope(
    by_namespace: dict[str, set[str]] | None, scope: str | None
) -> list[tuple[str, set[str]]]:
    """The (namespace, names) pairs of one index bucket that fall within ``scope``."""
    if not by_namespace:
        return []
    if scope is None:
        return list(by_namespace.items())
    names = by_namespace.get(scope)
    return [(scope, names)] if names else []


def _unlink(
    index: dict[str, dict[str, set[str]]], keys: Iterable[str], namespace: str, name: str
) -> None:
    """Remove ``namespace/name`` from each bucket of ``index``, dropping empty buckets."""
    for key in keys:
        bucket = index.get(key)
        if bucket is None:
            continue
        names = bucket.get(namespace)
        if names is not None:
            names.discard(name)
            if not names:
                del bucket[namespace]
        if not bucket:
            del index[key]
