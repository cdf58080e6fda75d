"""The status publisher alone: lightkube over httpx's MockTransport and a stand-in elector.

Checks what lands on the API server (the status merge patch, over the resourceVersion
read), what is not written again, and that failures come back by themselves with one
warning per outage.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Any

import httpx2 as httpx
import pytest

from kargo_bitbucket.core.receivers import Owner, OwnerStatus
from kargo_bitbucket.store.backoff import Backoff
from kargo_bitbucket.store.kubernetes.publisher import StatusPublisher
from tests.store.mock_kube import Handler, mock_client, status

OWNER = Owner("ProjectConfig", "demo", "demo")
STATUS_PATH = "/apis/kargo.akuity.io/v1alpha1/namespaces/demo/projectconfigs/demo/status"
PATH = "/bitbucket/" + "0" * 64
URL = "https://hooks.example.com" + PATH
RECEIVERS = {
    OWNER: OwnerStatus(receivers=[{"name": "bb", "path": PATH, "url": URL}], spec_order=["bb"])
}
LOGGER = "kargo_bitbucket.store.kubernetes.publisher"


class Elector:
    """Stands in for the LeaderElector: leads (or not) with time to spare."""

    def __init__(self, leader: bool = True) -> None:
        self.leader = leader

    def remaining(self) -> float:
        return 5.0 if self.leader else 0.0


def written(request: httpx.Request, version: int) -> httpx.Response:
    body = json.loads(request.content)
    meta = {"name": "demo", "namespace": "demo", "resourceVersion": str(version), "generation": 2}
    config = {"apiVersion": "kargo.akuity.io/v1alpha1", "kind": "ProjectConfig"}
    return httpx.Response(200, json={**config, "metadata": meta, "status": body["status"]})


def observed() -> dict[str, Any]:
    return {
        "kind": "ProjectConfig",
        "metadata": {"name": "demo", "namespace": "demo", "resourceVersion": "7", "generation": 2},
        "spec": {"webhookReceivers": [{"name": "bb", "bitbucket": {"secretRef": {"name": "s"}}}]},
    }


class Run:
    """A publisher against ``handler``; ``retries`` counts the retry callbacks it scheduled."""

    def __init__(self, handler: Handler, elector: Elector | None = None) -> None:
        self.retries = 0
        self.retried = asyncio.Event()
        self.failures: Counter[tuple[str, str]] = Counter()
        self.publisher = StatusPublisher(
            mock_client(handler),
            elector or Elector(),  # type: ignore[arg-type]
            self._retry,
            failures=self.failures,
            backoff=Backoff(0.01, 0.02),
        )
        self.publisher.observe(OWNER, observed())

    def _retry(self) -> None:
        self.retries += 1
        self.retried.set()

    async def publish(self) -> None:
        self.retried.clear()
        await self.publisher.publish_all(RECEIVERS)


def test_status_is_written_by_merge_patch_over_the_version_read_and_only_once() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return written(request, 8)

    async def go() -> None:
        run = Run(handler)
        await run.publish()
        await run.publish()  # nothing changed since our own write: nothing to send
        assert run.retries == 0

    asyncio.run(go())
    assert len(seen) == 1
    request = seen[0]
    assert (request.method, request.url.path) == ("PATCH", STATUS_PATH)
    assert request.headers["Content-Type"] == "application/merge-patch+json"
    patch = json.loads(request.content)
    assert patch["metadata"] == {"resourceVersion": "7"}
    assert patch["status"]["webhookReceivers"] == [{"name": "bb", "path": PATH, "url": URL}]
    assert patch["status"]["observedGeneration"] == 2
    assert [c["status"] for c in patch["status"]["conditions"]] == ["True", "False"]


def test_a_conflict_is_retried_over_what_the_other_writer_wrote(
    caplog: pytest.LogCaptureFixture,
) -> None:
    versions: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        versions.append(json.loads(request.content)["metadata"]["resourceVersion"])
        return status(409) if len(versions) == 1 else written(request, 10)

    async def go() -> None:
        run = Run(handler)
        await run.publish()
        await asyncio.wait_for(run.retried.wait(), 5)
        run.publisher.observe(OWNER, {**observed(), "metadata": {"resourceVersion": "9"}})
        await run.publish()

    caplog.set_level(logging.INFO, logger=LOGGER)
    asyncio.run(go())
    assert versions == ["7", "9"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_failing_writes_come_back_by_themselves_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answers = [status(403), status(403), status(503)]

    async def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0) if answers else written(request, 8)

    async def go() -> Run:
        run = Run(handler)
        await run.publish()
        for _ in range(3):  # as the store's rerouter does on each retry callback
            await asyncio.wait_for(run.retried.wait(), 5)
            await run.publish()
        return run

    caplog.set_level(logging.INFO, logger=LOGGER)
    run = asyncio.run(go())
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]
    warnings = [message for level, message in lines if level == "WARNING"]
    assert len(warnings) == 1
    assert "status publication failing (ProjectConfig demo: " in warnings[0]
    assert ("INFO", "status publication works again after 3 failed attempt(s)") in lines
    assert run.failures == {("ProjectConfig", "forbidden"): 2, ("ProjectConfig", "server_error"): 1}


def test_a_replica_that_does_not_lead_writes_nothing() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return written(request, 8)

    async def go() -> None:
        await Run(handler, Elector(leader=False)).publish()

    asyncio.run(go())
    assert seen == []


def test_a_write_by_another_controller_seen_while_ours_is_in_flight_is_not_forgotten() -> None:
    """Our PATCH's answer came back after the watch had delivered our write and then another
    controller's (which dropped our entry): remembering the answer over them made the
    publisher believe our entry was there, and nothing wrote it again."""
    versions: list[str] = []
    run: Run

    async def handler(request: httpx.Request) -> httpx.Response:
        versions.append(json.loads(request.content)["metadata"]["resourceVersion"])
        answer = written(request, 8 if len(versions) == 1 else 10)
        if len(versions) == 1:  # the watch runs ahead of this answer
            run.publisher.observe(OWNER, json.loads(answer.content))
            other = {"webhookReceivers": [{"name": "gh", "path": "/github/1", "url": "u1"}]}
            newer = {**observed(), "metadata": {**observed()["metadata"], "resourceVersion": "9"}}
            run.publisher.observe(OWNER, {**newer, "status": other})
        return answer

    async def go() -> None:
        nonlocal run
        run = Run(handler)
        await run.publish()
        await run.publish()  # as the rerouter does after the watch's events

    asyncio.run(go())
    assert versions == ["7", "9"]
