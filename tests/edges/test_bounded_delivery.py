"""What one delivery costs is bounded whatever it carries (SPEC §4, issue 9).

A 10,000-ref push to 1,000 Warehouses of one repository, none matching, used to hold the
event loop 9.4 s and build a 933 MB history row.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx2 as httpx

from kargo_bitbucket.app import create_app
from kargo_bitbucket.store.base import Target
from tests.builders import one_receiver, sign, to_yaml, warehouse
from tests.memory_store import BASE_URL, MemoryStore

SECRET = "s3cret"
REPO = "https://bitbucket.org/acme/monorepo"
WAREHOUSES = 1_000
REFS = 10_000
LOOP_GAP_LIMIT = 0.25
"""Most CPU the loop's thread may spend without running other tasks: about 10 ms measured,
9.4 s before. Counted in the thread's CPU time, so a loaded machine that preempts the test
does not look like a stall (wall-clock gaps of 1.2 s were seen with two suites at once)."""


def manifests() -> str:
    """Receiver demo/bb and Warehouses w0000.. on branch release-N of :data:`REPO`, every
    tenth a SemVer subscription instead."""
    semver = {"commitSelectionStrategy": "SemVer"}
    warehouses = (
        warehouse("demo", f"w{i:04d}", f"release-{i}", REPO)
        if i % 10 != 9
        else warehouse("demo", f"w{i:04d}", None, REPO, **semver, semverConstraint=f"^{i}")
        for i in range(WAREHOUSES)
    )
    return to_yaml(*one_receiver("demo", value=SECRET), *warehouses)


def huge_push(*extra: str) -> bytes:
    changes = [
        {"new": {"type": "tag" if i % 2 else "branch", "name": f"v0.{i}" if i % 2 else f"f{i}"}}
        for i in range(REFS)
    ]
    changes += [{"new": {"type": "branch", "name": name}} for name in extra]
    body = {"repository": {"links": {"html": {"href": REPO}}}, "push": {"changes": changes}}
    return json.dumps(body).encode()


async def deliver_while_probing(store: MemoryStore, body: bytes) -> tuple[httpx.Response, float]:
    """POST the push; meanwhile measure the longest gap between turns of the event loop, in
    the CPU time of the loop's thread."""
    headers = {"X-Event-Key": "repo:push", "X-Hub-Signature": sign(body, SECRET)}
    transport = httpx.ASGITransport(app=create_app(store))
    longest = 0.0
    done = asyncio.Event()

    async def probe() -> None:
        nonlocal longest
        last = time.thread_time()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.thread_time()
            longest = max(longest, now - last)
            last = now

    prober = asyncio.create_task(probe())
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        await asyncio.sleep(0)  # the probe takes its first reading
        answer = await client.post(store.receiver_path("demo", "bb"), content=body, headers=headers)
    done.set()
    await prober
    return answer, longest


def test_a_huge_push_to_many_warehouses_is_answered_without_stalling_the_loop() -> None:
    store = MemoryStore(manifests())
    answer, longest_gap = asyncio.run(deliver_while_probing(store, huge_push()))
    assert (answer.status_code, answer.json()["msg"]) == (200, "refreshed 0 warehouse(s)")
    assert longest_gap < LOOP_GAP_LIMIT
    (record,) = asyncio.run(store.deliveries())
    assert len(record.candidates) == 50
    reason = record.candidates[0].reason
    assert re.search(r"; and \d+ more refs$", reason) and len(reason) <= 512


def test_every_matching_warehouse_is_refreshed_though_only_fifty_are_listed() -> None:
    store = MemoryStore(manifests())
    wanted = [f"release-{i}" for i in range(0, 120, 2)]
    answer, _ = asyncio.run(deliver_while_probing(store, huge_push(*wanted)))
    refreshed = {target for target, _, _ in store.refreshes}
    assert refreshed == {Target("Warehouse", "demo", f"w{i:04d}") for i in range(0, 120, 2)}
    assert answer.json()["msg"] == "refreshed 60 warehouse(s)"
    (record,) = asyncio.run(store.deliveries())
    assert [c.outcome for c in record.candidates] == ["refreshed"] * 50
