"""A list or watch that keeps failing backs off, against the fault-injecting fake API server.

The reflector runs in process with a :class:`Backoff` whose jitter is fixed and whose sleep
records the delay and returns at once, so the delays are exact and nothing really waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from lightkube import AsyncClient, KubeConfig

from kargo_bitbucket.store.backoff import Backoff
from kargo_bitbucket.store.kubernetes import reflector
from kargo_bitbucket.store.kubernetes.reflector import FIRST_RETRY, MAX_BACKOFF, Reflector
from kargo_bitbucket.store.kubernetes.resources import RESOURCES
from tests.kube.fakeapi import FakeKubernetes
from tests.support import until

T = TypeVar("T")
KARGO = "kargo.akuity.io/v1alpha1"
LOGGER = "kargo_bitbucket.store.kubernetes.reflector"


class Harness:
    """A Warehouse reflector against the fake; what it saw, and the delays it asked for."""

    def __init__(self, kubeconfig: Path) -> None:
        self.delays: list[float] = []
        self.seen: dict[str, Any] = {}
        self.failures: Counter[tuple[str, str]] = Counter()
        self.backoff = Backoff(FIRST_RETRY, MAX_BACKOFF, jitter=lambda: 1.0, sleep=self._sleep)
        self.client = AsyncClient(KubeConfig.from_file(kubeconfig), trust_env=False)
        self.reflector = Reflector(
            self.client,
            RESOURCES["Warehouse"],
            "Warehouse",
            self._handle,
            failures=self.failures,
            backoff=self.backoff,
        )

    async def _sleep(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0.001)

    def _handle(self, kind: str, namespace: str, name: str, body: Any) -> None:
        self.seen[name] = body

    async def run(self, check: Callable[[Harness], Coroutine[Any, Any, T]]) -> T:
        task = asyncio.create_task(self.reflector.run())
        try:
            return await check(self)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await self.client.close()


def run(kubeconfig: Path, check: Callable[[Harness], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(asyncio.wait_for(Harness(kubeconfig).run(check), 30))


def warehouse(name: str) -> dict[str, Any]:
    return {
        "apiVersion": KARGO,
        "kind": "Warehouse",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {"subscriptions": []},
    }


def messages(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def test_a_refused_watch_backs_off_to_the_cap_with_one_log_line(
    fake_kube: FakeKubernetes, kubeconfig: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The bug: the list succeeded before each refused watch and reset the count, so the
    watch was retried every 0.2-0.4 s for ever, with a warning each time."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    fake_kube.fail("watch", "/warehouses", 403, times=10)

    async def check(harness: Harness) -> None:
        await until(lambda: len(harness.delays) >= 10, what="ten retries")

    harness = Harness(kubeconfig)
    asyncio.run(asyncio.wait_for(harness.run(check), 30))
    assert harness.delays[:10] == [0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30, 30, 30]
    assert len(fake_kube.filter_requests(verb="list", path="/warehouses")) == 1
    warnings = [m for level, m in messages(caplog) if level == "WARNING"]
    assert len(warnings) == 1
    assert warnings[0].startswith("watch of Warehouse failing (")
    assert "403" in warnings[0]
    assert harness.failures == {("Warehouse", "forbidden"): 10}


def test_a_watch_that_works_again_says_so_once_and_resets_the_backoff(
    fake_kube: FakeKubernetes, kubeconfig: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    fake_kube.fail("watch", "/warehouses", 500, times=3)

    async def check(harness: Harness) -> None:
        await until(lambda: fake_kube.store.open_watches(), what="the watch, after three failures")
        assert harness.delays == [0.4, 0.8, 1.6]
        assert harness.backoff.failures == 3  # open, but nothing delivered yet: not reset
        fake_kube.create(warehouse("late"))
        await until(lambda: "late" in harness.seen, what="the new Warehouse")
        assert harness.backoff.failures == 0
        fake_kube.fail("watch", "/warehouses", 503, times=1)
        fake_kube.drop_watches()
        await until(lambda: len(harness.delays) == 5, what="two more retries")
        assert harness.delays[3:] == [0.4, 0.8]  # dropped, then 503: from the start again

    run(kubeconfig, check)
    lines = messages(caplog)
    assert [level for level, _ in lines if level == "WARNING"] == ["WARNING", "WARNING"]
    assert ("INFO", "watch of Warehouse works again after 3 failed attempt(s)") in lines


def test_429_retry_after_is_honoured(fake_kube: FakeKubernetes, kubeconfig: Path) -> None:
    fake_kube.fail("watch", "/warehouses", 429, times=1, retry_after=7)
    fake_kube.fail("list", "/warehouses", 429, times=1, retry_after=3)

    async def check(harness: Harness) -> None:
        await until(lambda: fake_kube.store.open_watches(), what="the watch to open")
        assert harness.delays == [3, 7]
        assert harness.failures == {("Warehouse", "throttled"): 2}

    run(kubeconfig, check)


def test_a_failing_list_backs_off_and_the_kind_is_loaded_once_it_works(
    fake_kube: FakeKubernetes, kubeconfig: Path
) -> None:
    fake_kube.create(warehouse("early"))
    fake_kube.fail("list", "/warehouses", 503, times=4)

    async def check(harness: Harness) -> None:
        await asyncio.wait_for(harness.reflector.synced.wait(), 10)
        assert harness.delays == [0.4, 0.8, 1.6, 3.2]
        assert set(harness.seen) == {"early"}
        assert harness.failures == {("Warehouse", "server_error"): 4}

    run(kubeconfig, check)


def test_410_right_after_listing_backs_off_but_after_events_lists_at_once(
    fake_kube: FakeKubernetes, kubeconfig: Path
) -> None:
    async def check(harness: Harness) -> None:
        await until(lambda: fake_kube.store.open_watches(), what="the watch to open")
        fake_kube.create(warehouse("one"))
        await until(lambda: "one" in harness.seen, what="the first Warehouse")
        lists = len(fake_kube.filter_requests(verb="list", path="/warehouses"))
        fake_kube.expire_history()
        fake_kube.drop_watches()  # resumes from a version now expired: 410 after events
        await until(
            lambda: len(fake_kube.filter_requests(verb="list", path="/warehouses")) > lists,
            what="a new list",
        )
        assert harness.delays == [0.4]  # the dropped watch; the 410 relisted at once

    run(kubeconfig, check)


def test_an_object_the_handler_fails_on_is_left_out_not_the_end_of_the_watch(
    fake_kube: FakeKubernetes, kubeconfig: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    broken = [True]

    async def check(harness: Harness) -> None:
        handle = harness.reflector.handler

        def fragile(kind: str, namespace: str, name: str, body: Any) -> None:
            if name == "odd" and broken[0]:
                broken[0] = False
                raise RuntimeError("cannot read this one")
            handle(kind, namespace, name, body)

        harness.reflector.handler = fragile
        await until(lambda: harness.reflector.current, what="the first list")
        fake_kube.create(warehouse("odd"))
        fake_kube.create(warehouse("late"))
        await until(lambda: "late" in harness.seen, what="the Warehouse after it")
        assert harness.seen["odd"] is None and harness.delays == []  # left out, not kept
        fake_kube.patch(KARGO, "Warehouse", "demo", "odd", {"metadata": {"labels": {"a": "b"}}})
        await until(lambda: harness.seen["odd"] is not None, what="the odd one, changed")

    run(kubeconfig, check)
    errors = [m for level, m in messages(caplog) if level == "ERROR"]
    assert errors == ["Warehouse demo/odd left out: it could not be read"]


def test_an_unexpected_error_of_the_watch_lists_again_instead_of_ending_it(
    fake_kube: FakeKubernetes,
    kubeconfig: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # RecursionError from lightkube's decoder (a deep object) ended the watch's task in
    # silence: the kind was never seen again, and the store still said it was synced.
    caplog.set_level(logging.INFO, logger=LOGGER)
    decode = reflector.plain
    broken = [True]

    def fragile(obj: Any) -> dict[str, Any]:
        body = decode(obj)
        if body["metadata"]["name"] == "odd" and broken[0]:
            broken[0] = False
            raise RecursionError("maximum recursion depth exceeded")
        return body

    monkeypatch.setattr(reflector, "plain", fragile)

    async def check(harness: Harness) -> None:
        await until(lambda: harness.reflector.current, what="the first list")
        fake_kube.create(warehouse("odd"))
        await until(lambda: not broken[0], what="the error")
        await asyncio.sleep(0.05)  # waiting to list again
        # Not a 503 for every delivery: one object could otherwise stop every project's.
        assert harness.reflector.current
        await until(lambda: "odd" in harness.seen, what="the odd one, listed again")
        fake_kube.create(warehouse("late"))
        await until(lambda: "late" in harness.seen, what="the watch after it")

    run(kubeconfig, check)
    assert len(fake_kube.filter_requests(verb="list", path="/warehouses")) == 2
    errors = [m for level, m in messages(caplog) if level == "ERROR"]
    assert errors == ["watch of Warehouse: unexpected error"]


def test_a_failing_watch_is_not_current_until_it_is_back(
    fake_kube: FakeKubernetes, kubeconfig: Path
) -> None:
    async def check(harness: Harness) -> None:
        await until(lambda: harness.reflector.current, what="the first list")
        fake_kube.fail("watch", "/warehouses", 503, times=2)
        fake_kube.drop_watches()
        await until(lambda: not harness.reflector.current, what="the failure to count")
        fake_kube.create(warehouse("late"))
        await until(lambda: "late" in harness.seen, what="the watch back")
        assert harness.reflector.current

    run(kubeconfig, check)
