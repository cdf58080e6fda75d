"""Leader election on a coordination.k8s.io Lease, so one replica alone writes status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx2 as httpx
from lightkube import ApiError, AsyncClient
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from kargo_bitbucket.store.backoff import Backoff, Outage, retry_after

log = logging.getLogger(__name__)


class LeaderElector:
    """Acquire and renew a Lease; call ``on_elected`` each time this replica becomes leader.

    Leadership lasts two thirds of the Lease duration past the start of the last successful
    renewal, so a replica whose renewals hang or fail stops writing before any other may
    take the Lease over (the last third absorbs clock skew between the nodes). A holder
    retries a failed renewal within a sixth of the duration; a replica that does not hold
    the Lease backs off up to 30 s.
    """

    def __init__(
        self,
        client: AsyncClient,
        namespace: str,
        identity: str,
        on_elected: Callable[[], None],
        *,
        name: str = "kargo-bitbucket",
        duration: float = 15.0,
        renew_every: float = 5.0,
        failures: Counter[tuple[str, str]] | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.identity = identity
        self.name = name
        self.duration = duration
        self.renew_every = renew_every
        self.on_elected = on_elected
        self.backoff = backoff or Backoff(duration / 6, 30.0)
        self.clock = clock  # monotonic seconds; tests pass a virtual event-loop clock
        self.outage = Outage(log, f"lease {namespace}/{name}", kind="Lease", counts=failures)
        self._held_since: float | None = None  # monotonic start of the last renewal that held
        self._announced = False  # what the last log line said

    @property
    def leader(self) -> bool:
        """Whether this replica may write status now."""
        return self.remaining() > 0

    def remaining(self) -> float:
        """Seconds this replica may go on writing status (0 when it is not the leader)."""
        held = self._held_since
        return 0.0 if held is None else max(0.0, held + self.duration * 2 / 3 - self.clock())

    async def run(self) -> None:
        """Try to hold the Lease forever; each attempt may take until leadership would lapse."""
        while True:
            attempt = self.clock()
            error: Exception | None = None
            try:
                async with asyncio.timeout(self.duration * 2 / 3):
                    holding: bool | None = await self._try_hold()
            except (ApiError, httpx.HTTPError, OSError, TimeoutError) as failed:
                error = failed
                holding = None  # unknown: leadership runs out on its own if this goes on
            was_leader = self.leader  # without a gap since the last renewal that held
            if holding:
                self._held_since = attempt
            elif holding is False or not self.leader:
                self._held_since = None
            leader = self.leader
            if leader and not self._announced:
                log.info("became the status writer (lease %s/%s)", self.namespace, self.name)
            elif self._announced and not leader:
                log.warning("lost the status writer lease %s/%s", self.namespace, self.name)
            self._announced = leader
            if leader and not was_leader:
                self.on_elected()  # publish what changed while we could not
            pause = self.renew_every
            if error is None:
                self.backoff.reset()
                self.outage.recovered()
            else:
                pause = self.backoff.delay(retry_after(error))
                if leader:  # try again sooner, while leadership still lasts
                    pause = min(pause, self.duration / 6)
                self.outage.failed(error, pause)
            await self.backoff.sleep(max(0.0, attempt + pause - self.clock()))

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
        spec.leaseDurationSeconds = math.ceil(self.duration)
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
                leaseDurationSeconds=math.ceil(self.duration),
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
        self._held_since = None
        with contextlib.suppress(ApiError, httpx.HTTPError, OSError):
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
            if lease.spec and lease.spec.holderIdentity == self.identity:
                lease.spec.holderIdentity = None
                lease.spec.leaseDurationSeconds = 1
                await self.client.replace(lease)
