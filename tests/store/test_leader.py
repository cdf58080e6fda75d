"""Leader election: a replica stops writing status before any other may take the Lease.

Time is the subject here, so the elector runs on a virtual clock (tests/store/lease.py): a
stalled machine cannot make a renewal look late, and the bounds below are exact."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from kargo_bitbucket.store.kubernetes.leader import LeaderElector
from tests.store.lease import DURATION, LeaseAPI, clock, run_in_virtual_time
from tests.support import until


@contextlib.asynccontextmanager
async def elected(api: LeaseAPI) -> AsyncIterator[tuple[LeaderElector, list[float]]]:
    """An elector running against ``api`` until the block ends, once it leads; and the
    (virtual) times it was elected."""
    elections: list[float] = []
    leader = LeaderElector(
        api,  # type: ignore[arg-type]
        "kargo",
        "replica-a",
        lambda: elections.append(clock()),
        duration=DURATION,
        renew_every=DURATION / 3,
        clock=clock,
    )
    task = asyncio.create_task(leader.run())
    try:
        await until(lambda: leader.leader)
        yield leader, elections
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_leadership_lapses_while_renewals_hang_before_the_lease_expires() -> None:
    run_in_virtual_time(renewals_hang)


def test_one_failed_renewal_does_not_end_leadership() -> None:
    run_in_virtual_time(one_failed_renewal)


async def renewals_hang() -> None:
    api = LeaseAPI()
    async with elected(api) as (leader, elections):
        assert len(elections) == 1
        api.hanging = True
        hung_at = clock()
        await until(lambda: not leader.leader)
        # Others may take the Lease DURATION after its renewTime; we stopped a third before.
        assert clock() - hung_at <= DURATION * 2 / 3 + 0.01
        assert leader.remaining() == 0
        api.hanging = False
        await until(lambda: leader.leader)
        assert len(elections) == 2  # regained: it publishes again


async def one_failed_renewal() -> None:
    api = LeaseAPI()
    async with elected(api) as (leader, elections):
        api.failures = 1
        await until(lambda: api.failures == 0)
        ends = clock() + DURATION * 2
        while clock() < ends:
            assert leader.leader
            await asyncio.sleep(0.01)
        assert len(elections) == 1
    await leader.release()
    assert api.lease is not None and api.lease.spec is not None
    assert api.lease.spec.holderIdentity is None  # handed over at once
