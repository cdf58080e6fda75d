"""Leader election: a replica stops writing status before any other may take the Lease."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import Status
from lightkube.resources.coordination_v1 import Lease

from kargo_bitbucket.store.kubernetes.leader import LeaderElector

DURATION = 0.6  # seconds; leadership lasts 0.4 s past the start of a renewal that held


class LeaseAPI:
    """The three Lease calls the elector makes, against one stored Lease; can hang."""

    def __init__(self) -> None:
        self.lease: Lease | None = None
        self.hanging = False
        self.failures = 0

    async def _maybe_hang(self) -> None:
        while self.hanging:
            await asyncio.sleep(0.01)
        if self.failures:
            self.failures -= 1
            raise ApiError(status=Status(code=500, message="etcd timeout"))

    async def get(self, resource: Any, name: str, namespace: str) -> Lease:
        await self._maybe_hang()
        if self.lease is None:
            raise ApiError(status=Status(code=404, message="not found"))
        return copy.deepcopy(self.lease)

    async def create(self, lease: Lease) -> None:
        await self._maybe_hang()
        self.lease = copy.deepcopy(lease)

    async def replace(self, lease: Lease) -> None:
        await self._maybe_hang()
        self.lease = copy.deepcopy(lease)


@contextlib.asynccontextmanager
async def elected(api: LeaseAPI) -> AsyncIterator[tuple[LeaderElector, list[float]]]:
    """An elector running against ``api`` until the block ends, once it leads; and the
    times it was elected."""
    elections: list[float] = []
    leader = LeaderElector(
        api,  # type: ignore[arg-type]
        "kargo",
        "replica-a",
        lambda: elections.append(time.monotonic()),
        duration=DURATION,
        renew_every=DURATION / 3,
    )
    task = asyncio.create_task(leader.run())
    try:
        await wait_for(lambda: leader.leader)
        yield leader, elections
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def wait_for(condition: Any, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_leadership_lapses_while_renewals_hang_before_the_lease_expires() -> None:
    asyncio.run(renewals_hang())


def test_one_failed_renewal_does_not_end_leadership() -> None:
    asyncio.run(one_failed_renewal())


async def renewals_hang() -> None:
    api = LeaseAPI()
    async with elected(api) as (leader, elections):
        assert len(elections) == 1
        api.hanging = True
        hung_at = time.monotonic()
        await wait_for(lambda: not leader.leader)
        # Others may take the Lease DURATION after its renewTime; we stopped well before.
        assert time.monotonic() - hung_at < DURATION
        assert leader.remaining() == 0
        api.hanging = False
        await wait_for(lambda: leader.leader)
        assert len(elections) == 2  # regained: it publishes again


async def one_failed_renewal() -> None:
    api = LeaseAPI()
    async with elected(api) as (leader, elections):
        api.failures = 1
        await wait_for(lambda: api.failures == 0)
        for _ in range(int(DURATION / 0.01)):
            assert leader.leader
            await asyncio.sleep(0.01)
        assert len(elections) == 1
    await leader.release()
    assert api.lease is not None and api.lease.spec is not None
    assert api.lease.spec.holderIdentity is None  # handed over at once
