"""Follow exactly the Secrets that receivers name, each by name: ``get`` and ``watch``, never
``list``, so the RBAC may be limited to those names (``resourceNames``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Collection

from lightkube import AsyncClient
from lightkube.resources.core_v1 import Secret

from kargo_bitbucket.store.index import Indexes
from kargo_bitbucket.store.kubernetes.reflector import Handler, Reflector

SecretKey = tuple[str, str]
"""(namespace, name) of a Secret."""
SECRETS_PER_NAMESPACE = 100
"""Secrets followed per namespace (a watch and a connection each): who may edit one
ProjectConfig could otherwise have 2,000 followed, and the 429s and stalls they brought made
other projects' deliveries fail. Receivers on the others are not published, and say why;
the ones followed already keep their place."""


class SecretFollower:
    """One :class:`Reflector` per referenced Secret; a Secret no longer named is forgotten."""

    def __init__(
        self,
        client: AsyncClient,
        indexes: Indexes,
        handler: Handler,
        on_change: Callable[[], None],
        *,
        on_restart: Callable[[str, str], None] | None = None,
        failures: Counter[tuple[str, str]] | None = None,
    ) -> None:
        self.client = client
        self.indexes = indexes
        self.handler = handler
        self.on_change = on_change
        self.on_restart = on_restart
        self.failures = failures
        self._watches: dict[SecretKey, asyncio.Task[None]] = {}
        self._over: set[SecretKey] = set()
        """Named, but past their namespace's limit: reported, not followed."""

    @property
    def followed(self) -> set[SecretKey]:
        """The Secrets watched now."""
        return set(self._watches)

    async def follow(self, wanted: Collection[SecretKey], *, wait: float) -> None:
        """Watch ``wanted`` and nothing else, at most ``SECRETS_PER_NAMESPACE`` a namespace
        (those followed already, then the first by name); wait up to ``wait`` s for new ones
        to be read."""
        wanted, over = _within_limit(wanted, self._watches)
        for key in set(self._watches) - set(wanted):
            self._watches.pop(key).cancel()
            self.indexes.drop_secret(*key)
        for key in self._over - set(over):
            self.indexes.drop_secret(*key)
        self._over = set(over)
        for key in over:
            why = f"only {SECRETS_PER_NAMESPACE} receiver Secrets a namespace are followed"
            self.indexes.secret_unreadable(*key, why)
        fresh = []
        for key in set(wanted) - set(self._watches):
            reflector = Reflector(
                self.client,
                Secret,
                "Secret",
                self.handler,
                namespace=key[0],
                name=key[1],
                on_restart=self.on_restart,
                on_forbidden=self._on_unreadable,
                failures=self.failures,
            )
            self._watches[key] = asyncio.create_task(
                reflector.run(), name=f"secret-{key[0]}/{key[1]}"
            )
            fresh.append(reflector.synced.wait())
        if fresh:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await asyncio.gather(*fresh)

    def _on_unreadable(self, namespace: str, name: str, why: str) -> None:
        """A referenced Secret we may not get: its receivers' Ready condition says so."""
        self.indexes.secret_unreadable(namespace, name, why)
        self.on_change()

    async def close(self) -> None:
        """Stop every watch."""
        tasks = list(self._watches.values())
        self._watches.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _within_limit(
    wanted: Collection[SecretKey], followed: Collection[SecretKey]
) -> tuple[list[SecretKey], list[SecretKey]]:
    """``wanted`` split into the Secrets to follow and those past a namespace's limit, the
    ones ``followed`` already first (a new one never displaces a working receiver)."""
    count: Counter[str] = Counter()
    kept: list[SecretKey] = []
    over: list[SecretKey] = []
    for key in sorted(wanted, key=lambda k: (k not in followed, k)):
        count[key[0]] += 1
        (kept if count[key[0]] <= SECRETS_PER_NAMESPACE else over).append(key)
    return kept, over
