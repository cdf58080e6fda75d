"""Leader election: a replica stops writing status before any other may take the Lease."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import Status
from lightkube.resources.coordination_v1 import Lease

from kargo_bitbucket.store.leader import LeaderElector

DURATION = 0.6  # seconds; leadership lasts 0.4 s past the start of a renewal that held


class LeaseAPI:
    """The three Lease calls the elector makes, against one stored Lease; can hang."""

    def __init__(self) -> None:
        self.lease: Lease | None = None
        self.hanging = False

    async def _maybe_hang(self) -> None:
        while self.hanging:
            await asyncio.sleep(0.01)

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


def elector(api: LeaseAPI, on_elected: Any) -> LeaderElector:
    return LeaderElector(
        api,  # type: ignore[arg-type]
        "kargo",
        "replica-a",
        on_elected,
        duration=DURATION,
        renew_every=DURATION / 3,
    )


async def wait_for(condition: Any, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_leadership_lapses_while_renewals_hang_before_the_lease_expires() -> None:
    asyncio.run(renewals_hang())


def test_a_slow_first_publish_does_not_hold_up_renewals() -> None:
    asyncio.run(slow_first_publish())


async def renewals_hang() -> None:
    api = LeaseAPI()
    elected = asyncio.Event()

    async def on_elected() -> None:
        elected.set()

    leader = elector(api, on_elected)
    task = asyncio.create_task(leader.run())
    try:
        await wait_for(lambda: leader.leader)
        await elected.wait()
        api.hanging = True
        hung_at = asyncio.get_running_loop().time()
        await wait_for(lambda: not leader.leader)
        # Others may take the Lease DURATION after its renewTime; we stopped well before.
        assert asyncio.get_running_loop().time() - hung_at < DURATION
        elected.clear()
        api.hanging = False
        await wait_for(lambda: leader.leader)
        await asyncio.wait_for(elected.wait(), 1)  # regained: it publishes again
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def slow_first_publish() -> None:
    api = LeaseAPI()
    release = asyncio.Event()

    async def slow_publish() -> None:
        await release.wait()

    leader = elector(api, slow_publish)
    task = asyncio.create_task(leader.run())
    try:
        await wait_for(lambda: leader.leader)
        assert api.lease is not None and api.lease.spec is not None
        first = api.lease.spec.renewTime
        await asyncio.sleep(DURATION * 1.5)  # the publish is still running
        assert leader.leader
        assert api.lease.spec.renewTime != first
    finally:
        release.set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await leader.release()
