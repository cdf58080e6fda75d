"""The Kubernetes refresher alone: lightkube over httpx's MockTransport, no API server.

Each test answers the PATCHes and Event creations the refresher sends from a handler, and
checks what a user would see: which objects were refreshed, gone or failed, with what
request, in how many attempts, and the Events.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx2 as httpx
import pytest

from kargo_bitbucket.store.base import REFRESH_ANNOTATION, RefreshResult, Target
from kargo_bitbucket.store.kubernetes.client import USER_AGENT
from kargo_bitbucket.store.kubernetes.refresher import Refresher
from tests.store.mock_kube import Handler, mock_client, status
from tests.support import until

WAREHOUSES = "/apis/kargo.akuity.io/v1alpha1/namespaces/demo/warehouses/"


def targets(*names: str) -> list[Target]:
    return [Target("Warehouse", "demo", name) for name in names]


def patched(request: httpx.Request) -> httpx.Response:
    name = request.url.path.rsplit("/", 1)[1]
    body = {"metadata": {"name": name, "namespace": "demo", "uid": f"uid-{name}"}}
    return httpx.Response(200, json={"apiVersion": "kargo.akuity.io/v1alpha1", **body})


def refresh(
    handler: Handler, names: list[Target], *, note: str | None = None, **options: Any
) -> RefreshResult:
    async def go() -> RefreshResult:
        refresher = Refresher(mock_client(handler), "replica-a", **options)
        why = None if note is None else (lambda target: f"{note} ({target.name})")
        result = await refresher.refresh(names, "abc", why)
        await until(lambda: not refresher._event_tasks, what="the Events, written after")
        return result

    return asyncio.run(asyncio.wait_for(go(), 20))


def test_each_target_gets_one_json_merge_patch_and_an_event() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx.Response(201, json=json.loads(request.content))
        return patched(request)

    result = refresh(handler, targets("a", "b"), note="push to main of acme/app")
    assert result.refreshed == targets("a", "b")
    patches = [r for r in seen if r.method == "PATCH"]
    assert sorted(r.url.path for r in patches) == [WAREHOUSES + "a", WAREHOUSES + "b"]
    for request in patches:
        assert request.headers["Content-Type"] == "application/merge-patch+json"
        assert json.loads(request.content) == {
            "metadata": {"annotations": {REFRESH_ANNOTATION: "abc"}}
        }
    events = [json.loads(r.content) for r in seen if r.method == "POST"]
    assert sorted(e["involvedObject"]["uid"] for e in events) == ["uid-a", "uid-b"]
    assert {e["reason"] for e in events} == {"WebhookRefresh"}
    assert {e["message"] for e in events} == {
        "push to main of acme/app (a)",
        "push to main of acme/app (b)",
    }
    assert {r.headers["User-Agent"] for r in seen} == {USER_AGENT}


def test_a_deleted_object_is_gone_at_once_and_gets_no_event() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return status(404)

    result = refresh(handler, targets("gone"), note="push")
    assert result.gone == targets("gone")
    assert [r.method for r in seen] == ["PATCH"]


def test_server_errors_are_retried_until_the_patch_lands() -> None:
    answers = [status(503), status(500)]

    async def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0) if answers else patched(request)

    assert refresh(handler, targets("a")).refreshed == targets("a")
    assert answers == []


def test_a_refused_patch_is_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return status(403)

    result = refresh(handler, targets("a", "b"))
    assert result.failed == targets("a", "b")
    assert len(seen) == 2
    assert "refresh of Warehouse demo/a refused" in caplog.text
    assert result.cause().startswith("Warehouse demo/a: refused: HTTP 403")
    assert result.cause().endswith(" (and 1 more failed)")


def test_a_retry_after_beyond_the_budget_fails_without_waiting() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return status(429, {"Retry-After": "30"})

    started = time.monotonic()
    result = refresh(handler, targets("a"), budget=20.0)
    assert result.failed == targets("a")
    assert result.cause() == "Warehouse demo/a: failed after 1 attempt(s): HTTP 429"
    assert time.monotonic() - started < 10  # waiting out the 20 s budget would take twice this
    assert len(seen) == 1


def test_a_short_retry_after_is_waited_for() -> None:
    times: list[float] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        times.append(time.monotonic())
        return status(429, {"Retry-After": "1"}) if len(times) == 1 else patched(request)

    assert refresh(handler, targets("a")).refreshed == targets("a")
    assert times[1] - times[0] >= 1.0  # the backoff alone would have waited 0.1 s at most


def test_patches_run_at_most_concurrency_at_once() -> None:
    running = 0
    most = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.005)
        running -= 1
        return patched(request)

    names = targets(*(f"w{i}" for i in range(60)))
    assert refresh(handler, names, concurrency=4).refreshed == names
    assert most == 4


def test_a_hung_patch_leaves_time_for_another_attempt_within_the_budget() -> None:
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(60)
        return patched(request)

    result = refresh(handler, targets("a"), budget=2.0, attempt_timeout=0.3)
    assert result.refreshed == targets("a")  # within the budget, or it would have failed
    assert calls == 2  # the hung attempt was cut short, not waited out


def test_events_waiting_on_a_slow_api_server_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each refresh queued its Events behind the 16 in flight: a slow API server under a
    # stream of pushes had them pile up without limit.
    monkeypatch.setattr("kargo_bitbucket.store.kubernetes.refresher.EVENT_BACKLOG", 3)
    release = asyncio.Event()
    posted: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            posted.append(json.loads(request.content)["involvedObject"]["name"])
            await release.wait()
            return httpx.Response(201, json=json.loads(request.content))
        return patched(request)

    async def go() -> None:
        refresher = Refresher(mock_client(handler), "replica-a")
        for names in (["a", "b"], ["c", "d"], ["e"]):  # d passes the backlog of 3
            result = await refresher.refresh(targets(*names), "abc", lambda t: "note")
            assert result.refreshed == targets(*names)  # the patches never wait on Events
        await until(lambda: len(posted) == 3, what="the Events let through")
        release.set()
        await until(lambda: not refresher._event_tasks, what="the Events, written")
        await refresher.refresh(targets("f", "g", "h", "i"), "abc", lambda t: "note")
        await until(lambda: not refresher._event_tasks, what="room again")

    asyncio.run(asyncio.wait_for(go(), 20))
    assert sorted(posted) == ["a", "b", "c", "f", "g", "h"]  # a refresh gets what room is left
