"""The fake API server (``fakeapi.py``): its faults as lightkube sees them, and the protocol the
fault tests rely on checked against the REAL kube-apiserver too (tests parametrized ``fake`` /
``real``; the real ones skip without ``KUBEBUILDER_ASSETS``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pytest
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import PatchType, on_error_retry

from tests.builders import KARGO, warehouse
from tests.kube.apiserver import KubeApiServer
from tests.kube.fakeapi import FakeKubernetes

DEMO_WAREHOUSES = f"/apis/{KARGO}/namespaces/demo/warehouses"
MERGE = PatchType.MERGE

Warehouse = create_namespaced_resource("kargo.akuity.io", "v1alpha1", "Warehouse", "warehouses")
ProjectConfig = create_namespaced_resource(
    "kargo.akuity.io", "v1alpha1", "ProjectConfig", "projectconfigs"
)

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 15) -> T:
    """Run a test coroutine on a fresh event loop (no pytest-asyncio here)."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def client(kubeconfig: Path, **kwargs: Any) -> AsyncClient:
    """A lightkube AsyncClient configured as the backend would: from a kubeconfig file."""
    return AsyncClient(KubeConfig.from_file(kubeconfig), trust_env=False, **kwargs)


def meta(obj: Any) -> Any:
    """``obj.metadata`` (lightkube types it Optional; these objects always have it)."""
    metadata = obj.metadata
    assert metadata is not None
    return metadata


def raw(fake: FakeKubernetes) -> httpx2.Client:
    """A plain HTTP client with the bearer token, for wire-level checks."""
    headers = {"Authorization": f"Bearer {fake.token}"}
    return httpx2.Client(base_url=fake.url, headers=headers, timeout=10)


async def take(stream: AsyncIterable[tuple[str, Any]], count: int) -> list[tuple[str, Any]]:
    """The first ``count`` events of a lightkube watch."""
    events: list[tuple[str, Any]] = []
    async for event in stream:
        events.append(event)
        if len(events) == count:
            break
    return events


@dataclass
class Api:
    """The fake or the real server, seen the same way: a kubeconfig, a namespace to use, and
    a way to change objects as another client would, plus how to tell a watch is open."""

    kubeconfig: Path
    namespace: str
    create: Callable[[dict[str, Any]], Any]
    patch: Callable[..., Any]
    watching: Callable[[], bool]


@pytest.fixture(params=["fake", "real"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    if request.param == "fake":
        fake: FakeKubernetes = request.getfixturevalue("fake_kube")
        yield Api(
            request.getfixturevalue("kubeconfig"),
            "demo",
            fake.create,
            fake.patch,
            lambda: bool(fake.store.open_watches()),
        )
        return
    kube_api: KubeApiServer = request.getfixturevalue("kube_api")
    namespace: str = request.getfixturevalue("kube_namespace")
    mark = kube_api.audit_mark()
    yield Api(
        kube_api.admin.kubeconfig(tmp_path / "admin"),
        namespace,
        kube_api.admin.create,
        kube_api.admin.patch,
        # the audit log records a watch once its response has started
        lambda: any(e.verb == "watch" and e.namespace == namespace for e in kube_api.audit(mark)),
    )


async def until(check: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {check}"
        await asyncio.sleep(0.01)


def test_a_watch_from_a_list_version_sees_later_changes(api: Api) -> None:
    ns = api.namespace
    api.create(warehouse(ns, "before"))

    async def main() -> list[tuple[str, Any]]:
        async with client(api.kubeconfig) as kube:
            listing = kube.list(Warehouse, namespace=ns)
            assert [meta(w).name async for w in listing] == ["before"]
            stream = kube.watch(Warehouse, namespace=ns, resource_version=listing.resourceVersion)
            task = asyncio.create_task(take(stream, 4))
            await until(api.watching)
            api.create(warehouse(ns, "new"))
            api.patch(KARGO, "Warehouse", ns, "new", {"metadata": {"labels": {"a": "b"}}})
            await kube.delete(Warehouse, "before", namespace=ns)
            api.create(warehouse(ns, "last"))
            return await task

    events = run(main())
    assert [(kind, meta(obj).name) for kind, obj in events] == [
        ("ADDED", "new"),
        ("MODIFIED", "new"),
        ("DELETED", "before"),
        ("ADDED", "last"),
    ]
    versions = [int(meta(obj).resourceVersion) for _, obj in events]
    assert versions == sorted(versions) and len(set(versions)) == 4


def test_a_status_write_with_a_stale_resource_version_conflicts(api: Api) -> None:
    ns = api.namespace
    config = {
        "apiVersion": KARGO,
        "kind": "ProjectConfig",
        "metadata": {"name": ns, "namespace": ns},
        "spec": {"webhookReceivers": []},
    }
    api.create(config)

    async def main() -> None:
        async with client(api.kubeconfig) as kube:
            read = await kube.get(ProjectConfig, ns, namespace=ns)
            stale = meta(read).resourceVersion
            status = {"webhookReceivers": [{"name": "x", "path": "/x", "url": "u"}]}
            api.patch(KARGO, "ProjectConfig", ns, ns, {"status": status}, subresource="status")
            ours = {"metadata": {"resourceVersion": stale}, "status": {"webhookReceivers": []}}
            with pytest.raises(ApiError) as error:
                await kube.patch(ProjectConfig.Status, ns, ours, namespace=ns, patch_type=MERGE)
            assert (error.value.status.code, error.value.status.reason) == (409, "Conflict")
            spec_only = {"spec": {"webhookReceivers": []}, "status": {"webhookReceivers": []}}
            after = await kube.patch(ProjectConfig, ns, spec_only, namespace=ns, patch_type=MERGE)
            assert after.to_dict()["status"] == status  # status only through /status

    run(main())


# --------------------------------------------------------------------------- faults


def test_fail_injects_status_errors(fake_kube: FakeKubernetes, kubeconfig: Path) -> None:
    fake_kube.create(warehouse("demo", "app"))
    fake_kube.fail("PATCH", r"/warehouses/app$", 500)
    fake_kube.fail("GET", r"/warehouses/app$", 429, retry_after=2)
    fake_kube.fail("watch", r"/warehouses$", 503)
    patch = {"metadata": {"annotations": {"a": "b"}}}

    async def main() -> None:
        async with client(kubeconfig) as kube:
            with pytest.raises(ApiError) as internal:
                await kube.patch(Warehouse, "app", patch, namespace="demo", patch_type=MERGE)
            assert (internal.value.status.code, internal.value.status.reason) == (
                500,
                "InternalError",
            )
            await kube.patch(Warehouse, "app", patch, namespace="demo", patch_type=MERGE)
            with pytest.raises(ApiError) as throttled:
                await kube.get(Warehouse, "app", namespace="demo")
            assert throttled.value.status.reason == "TooManyRequests"
            assert throttled.value.response.headers["Retry-After"] == "2"
            details = throttled.value.status.details
            assert details is not None and details.retryAfterSeconds == 2
            await kube.get(Warehouse, "app", namespace="demo")
            with pytest.raises(httpx2.HTTPStatusError) as unavailable:  # watches: no ApiError
                await take(kube.watch(Warehouse, namespace="demo"), 1)
            assert unavailable.value.response.status_code == 503
            assert [k for k, _ in await take(kube.watch(Warehouse, namespace="demo"), 1)] == [
                "ADDED"
            ]

    run(main())


def test_delay_slows_down_matching_requests(fake_kube: FakeKubernetes, kubeconfig: Path) -> None:
    fake_kube.create(warehouse("demo", "app"))
    fake_kube.delay("PATCH", "/warehouses/", 2.0)

    async def main() -> tuple[float, float]:
        async with client(kubeconfig) as kube:
            patch = {"metadata": {"annotations": {"a": "b"}}}
            begin = time.monotonic()
            await kube.patch(Warehouse, "app", patch, namespace="demo", patch_type=MERGE)
            patched = time.monotonic()
            await kube.get(Warehouse, "app", namespace="demo")
            return patched - begin, time.monotonic() - patched

    slow, fast = run(main())
    assert slow >= 2.0 and fast < 2.0 / 2  # not delayed: half the delay is room for load


def test_hang_makes_the_client_time_out(fake_kube: FakeKubernetes, kubeconfig: Path) -> None:
    fake_kube.create(warehouse("demo", "app"))
    fake_kube.hang("GET", "/warehouses/app$")

    async def main() -> None:
        async with client(kubeconfig, timeout=httpx2.Timeout(0.5)) as kube:
            with pytest.raises(httpx2.ReadTimeout):
                await kube.get(Warehouse, "app", namespace="demo")
            assert meta(await kube.get(Warehouse, "app", namespace="demo")).name == "app"

    run(main())


def test_drop_watches_closes_streams_abruptly(fake_kube: FakeKubernetes, kubeconfig: Path) -> None:
    start = fake_kube.resource_version

    async def main() -> list[tuple[str, Any]]:
        async with client(kubeconfig) as kube:
            failing = asyncio.create_task(take(kube.watch(Warehouse, namespace="demo"), 1))
            await until(lambda: bool(fake_kube.store.open_watches()))
            fake_kube.drop_watches()
            with pytest.raises(httpx2.RemoteProtocolError):  # incomplete chunked read
                await failing
            # on_error_retry resumes from the last version seen, so nothing is lost
            stream = kube.watch(
                Warehouse, namespace="demo", resource_version=start, on_error=on_error_retry
            )
            resuming = asyncio.create_task(take(stream, 1))
            await until(lambda: bool(fake_kube.store.open_watches()))
            fake_kube.drop_watches()
            fake_kube.create(warehouse("demo", "app"))  # while no watch is open
            return await resuming

    assert [(k, meta(o).name) for k, o in run(main())] == [("ADDED", "app")]
    resumed = fake_kube.filter_requests(verb="watch")[-1]
    assert resumed.query["resourceVersion"] == start


def test_a_watch_from_an_expired_version(fake_kube: FakeKubernetes, kubeconfig: Path) -> None:
    """An ERROR event carrying a 410 Expired Status, or (``expired_as_http``) an HTTP 410."""
    fake_kube.create(warehouse("demo", "app"))
    old = fake_kube.resource_version
    fake_kube.expire_history()
    params = {"watch": "true", "resourceVersion": old}
    with raw(fake_kube) as http:
        response = http.get(DEMO_WAREHOUSES, params=params)
        assert response.status_code == 200
        (line,) = response.text.splitlines()
        event = json.loads(line)
        assert event["type"] == "ERROR"
        assert (event["object"]["code"], event["object"]["reason"]) == (410, "Expired")

    async def main() -> None:
        async with client(kubeconfig) as kube:
            with pytest.raises(ApiError) as error:
                await take(kube.watch(Warehouse, namespace="demo", resource_version=old), 1)
            assert (error.value.status.code, error.value.status.reason) == (410, "Expired")
            fake_kube.expired_as_http = True
            with pytest.raises(httpx2.HTTPStatusError) as http_error:
                await take(kube.watch(Warehouse, namespace="demo", resource_version=old), 1)
            # a plain HTTPStatusError, not an ApiError: lightkube's retry would not reset
            assert not isinstance(http_error.value, ApiError)
            assert http_error.value.response.status_code == 410

    run(main())


def test_bookmarks_carry_only_the_resource_version(fake_kube: FakeKubernetes) -> None:
    fake_kube.bookmark_interval = 0.2
    fake_kube.create(warehouse("demo", "app"))
    start = fake_kube.resource_version
    fake_kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}})
    with raw(fake_kube) as http:
        quiet = {"watch": "1", "resourceVersion": start, "timeoutSeconds": "0.3"}
        assert http.get(DEMO_WAREHOUSES, params=quiet).text == ""
        lines = http.get(
            DEMO_WAREHOUSES, params={**quiet, "allowWatchBookmarks": "true"}
        ).text.splitlines()
    assert [json.loads(line) for line in lines] == [
        {
            "type": "BOOKMARK",
            "object": {
                "kind": "Warehouse",
                "apiVersion": KARGO,
                "metadata": {"resourceVersion": fake_kube.resource_version},
            },
        }
    ]
