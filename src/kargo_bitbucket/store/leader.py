"""Leader election on a coordination.k8s.io Lease, so one replica alone writes status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import httpx2 as httpx
from lightkube import ApiError, AsyncClient
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

log = logging.getLogger(__name__)


class LeaderElector:
    """Acquire and renew a Lease; call ``on_elected`` each time this replica becomes leader."""

    def __init__(
        self,
        client: AsyncClient,
        namespace: str,
        identity: str,
        on_elected: Callable[[], Awaitable[None]],
        *,
        name: str = "kargo-bitbucket",
        duration: float = 15.0,
        renew_every: float = 5.0,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.identity = identity
        self.name = name
        self.duration = duration
        self.renew_every = renew_every
        self.on_elected = on_elected
        self.leader = False

    async def run(self) -> None:
        """Try to hold the Lease forever; leadership is lost when a renewal fails."""
        while True:
            try:
                holding = await self._try_hold()
            except (ApiError, httpx.HTTPError, OSError) as error:
                # httpx timeouts carry no text: name the error's type as well.
                reason = f"{type(error).__name__}: {error}".removesuffix(": ")
                log.warning("lease %s/%s: %s", self.namespace, self.name, reason)
                holding = False
            if holding and not self.leader:
                self.leader = True
                log.info("became the status writer (lease %s/%s)", self.namespace, self.name)
                await self.on_elected()
            elif not holding and self.leader:
                self.leader = False
                log.warning("lost the status writer lease %s/%s", self.namespace, self.name)
            await asyncio.sleep(self.renew_every)

    async def _try_hold(self) -> bool:
        """One acquire-or-renew attempt, with optimistic concurrency on resourceVersion."""
        now = datetime.now(UTC)
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
        except ApiError as error:
            if error.status.code != 404:
                raise
            return await self._create(now)
        spec = lease.spec or LeaseSpec()
        holder = spec.holderIdentity
        renewed = spec.renewTime or spec.acquireTime
        expired = (
            renewed is None
            or renewed + timedelta(seconds=spec.leaseDurationSeconds or self.duration) < now
        )
        if holder and holder != self.identity and not expired:
            return False
        if holder != self.identity:
            spec.acquireTime = now
            spec.leaseTransitions = (spec.leaseTransitions or 0) + 1
        spec.holderIdentity = self.identity
        spec.renewTime = now
        spec.leaseDurationSeconds = int(self.duration)
        lease.spec = spec
        try:
            await self.client.replace(lease)
        except ApiError as error:
            if error.status.code == 409:
                return False
            raise
        return True

    async def _create(self, now: datetime) -> bool:
        lease = Lease(
            metadata=ObjectMeta(name=self.name, namespace=self.namespace),
            spec=LeaseSpec(
                holderIdentity=self.identity,
                acquireTime=now,
                renewTime=now,
                leaseDurationSeconds=int(self.duration),
                leaseTransitions=0,
            ),
        )
        try:
            await self.client.create(lease)
        except ApiError as error:
            if error.status.code == 409:
                return False
            raise
        return True

    async def release(self) -> None:
        """Give the Lease up at shutdown so another replica takes over at once."""
        if not self.leader:
            return
        self.leader = False
        with contextlib.suppress(ApiError, httpx.HTTPError, OSError):
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
            if lease.spec and lease.spec.holderIdentity == self.identity:
                lease.spec.holderIdentity = None
                lease.spec.leaseDurationSeconds = 1
                await self.client.replace(lease)
