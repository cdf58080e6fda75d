"""A Lease that cannot be read backs off while this replica does not lead, with one warning."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import pytest

from kargo_bitbucket.store.backoff import Backoff
from kargo_bitbucket.store.kubernetes.leader import LeaderElector
from tests.store.lease import DURATION, LeaseAPI, clock, run_in_virtual_time
from tests.support import until

LOGGER = "kargo_bitbucket.store.kubernetes.leader"


def elector(
    api: LeaseAPI, pauses: list[float], failures: Counter[tuple[str, str]] | None = None
) -> LeaderElector:
    """An elector on ``api`` whose pauses are recorded in ``pauses`` instead of waited."""

    async def record(delay: float) -> None:
        pauses.append(delay)
        await asyncio.sleep(0.001)  # one virtual millisecond, so the loop's clock moves on

    return LeaderElector(
        api,  # type: ignore[arg-type]
        "kargo",
        "replica-a",
        lambda: None,
        duration=DURATION,
        renew_every=DURATION / 3,
        failures=failures,
        backoff=Backoff(DURATION / 6, 30.0, jitter=lambda: 1.0, sleep=record),
        clock=clock,
    )


def test_a_failing_lease_backs_off_then_is_taken_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = LeaseAPI()
    api.failures = 6
    pauses: list[float] = []
    failures: Counter[tuple[str, str]] = Counter()

    async def go() -> None:
        leader = elector(api, pauses, failures)
        task = asyncio.create_task(leader.run())
        try:
            await until(lambda: leader.leader)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    caplog.set_level(logging.INFO, logger=LOGGER)
    run_in_virtual_time(go)
    # On the virtual clock an attempt takes no time, so each pause is the whole backoff.
    assert pauses[:6] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2])
    assert failures == {("Lease", "server_error"): 6}
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]
    assert [level for level, _ in lines].count("WARNING") == 1
    assert ("INFO", "lease kargo/kargo-bitbucket works again after 6 failed attempt(s)") in lines


def test_a_leader_retries_a_failed_renewal_within_a_sixth_of_the_duration() -> None:
    api = LeaseAPI()
    pauses: list[float] = []

    async def go() -> bool:
        leader = elector(api, pauses)
        task = asyncio.create_task(leader.run())
        try:
            await until(lambda: leader.leader)
            pauses.clear()
            api.failures = 5
            await until(lambda: api.failures == 0 and len(pauses) >= 5)
            return leader.leader
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    assert run_in_virtual_time(go)
    assert max(pauses[:5]) <= DURATION / 6
