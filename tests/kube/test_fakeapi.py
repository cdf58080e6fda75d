"""The fake Kubernetes API server speaks the real protocol: exercised with lightkube and kubectl.

Some tests pin down lightkube behaviour the Kubernetes backend relies on (or must work around):
its default patch type, how its watch reports 410 and dropped streams, and token re-reading.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pytest
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.generic_resource import create_global_resource, create_namespaced_resource
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType, on_error_retry

from tests.kube.fakeapi import (
    ApiStatusError,
    FakeKubernetes,
    JsonPatchError,
    json_patch,
    merge_patch,
    parse_label_selector,
)

KARGO = "kargo.akuity.io"
V1A1 = f"{KARGO}/v1alpha1"
WAREHOUSES = f"/apis/{V1A1}/warehouses"
DEMO_WAREHOUSES = f"/apis/{V1A1}/namespaces/demo/warehouses"
MERGE = PatchType.MERGE

Warehouse = create_namespaced_resource(KARGO, "v1alpha1", "Warehouse", "warehouses")
Promotion = create_namespaced_resource(KARGO, "v1alpha1", "Promotion", "promotions")
ClusterConfig = create_global_resource(KARGO, "v1alpha1", "ClusterConfig", "clusterconfigs")

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


def meta_details(error: ApiError) -> Any:
    """The ``details`` of an ApiError's Status."""
    details = error.status.details
    assert details is not None
    return details


def raw(fake: FakeKubernetes) -> httpx2.Client:
    """A plain HTTP client with the bearer token, for wire-level checks."""
    headers = {"Authorization": f"Bearer {fake.token}"}
    return httpx2.Client(base_url=fake.url, headers=headers, timeout=10, verify=False)


def warehouse(
    name: str, namespace: str = "demo", labels: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = labels
    repo = {"git": {"repoURL": f"https://bitbucket.org/acme/{name}.git", "branch": "main"}}
    return {
        "apiVersion": V1A1,
        "kind": "Warehouse",
        "metadata": metadata,
        "spec": {"subscriptions": [repo], **spec},
    }


async def watches_open(fake: FakeKubernetes, count: int = 1, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while len(fake.open_watches) < count:
        assert time.monotonic() < deadline, f"{count} watch(es) not open: {fake.open_watches}"
        await asyncio.sleep(0.01)


async def take(stream: AsyncIterable[tuple[str, Any]], count: int) -> list[tuple[str, Any]]:
    """The first ``count`` events of a lightkube watch."""
    events: list[tuple[str, Any]] = []
    async for event in stream:
        events.append(event)
        if len(events) == count:
            break
    return events


def assert_status(response: httpx2.Response, code: int, reason: str) -> dict[str, Any]:
    assert response.status_code == code, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["kind"] == "Status" and body["apiVersion"] == "v1"
    assert body["status"] == "Failure" and body["code"] == code and body["reason"] == reason
    assert body["message"]
    return body


# --------------------------------------------------------------------------- discovery, auth


def test_discovery_documents_describe_the_served_resources(fake_kube: FakeKubernetes) -> None:
    with raw(fake_kube) as http:
        assert http.get("/version").json()["major"] == "1"
        assert http.get("/api").json()["versions"] == ["v1"]
        groups = {g["name"] for g in http.get("/apis").json()["groups"]}
        assert {KARGO, "coordination.k8s.io", "events.k8s.io"} <= groups
        assert http.get(f"/apis/{KARGO}").json()["preferredVersion"]["version"] == "v1alpha1"
        kargo = {r["name"]: r for r in http.get(f"/apis/{V1A1}").json()["resources"]}
        core = {r["name"]: r for r in http.get("/api/v1").json()["resources"]}
        assert http.get("/openapi/v2").status_code == 404
    for plural in ("projectconfigs", "clusterconfigs", "warehouses", "promotions", "stages"):
        assert kargo[f"{plural}/status"]["verbs"] == ["get", "patch", "update"]
        assert {"list", "watch", "patch", "create"} <= set(kargo[plural]["verbs"])
    assert kargo["warehouses"]["namespaced"] and not kargo["clusterconfigs"]["namespaced"]
    assert kargo["warehouses"]["singularName"] == "warehouse"
    assert kargo["promotions"]["shortNames"] == ["promo", "promos"]
    assert not core["namespaces"]["namespaced"] and core["secrets"]["namespaced"]


def test_requests_need_the_bearer_token(fake_kube: FakeKubernetes) -> None:
    with httpx2.Client(base_url=fake_kube.url, verify=False) as http:
        assert_status(http.get(DEMO_WAREHOUSES), 401, "Unauthorized")
        nope = {"Authorization": "Bearer nope"}
        assert_status(http.get(DEMO_WAREHOUSES, headers=nope), 401, "Unauthorized")
        good = {"Authorization": "Bearer test-token"}
        assert http.get(DEMO_WAREHOUSES, headers=good).status_code == 200
        assert http.get("/healthz").status_code == 200
    assert fake_kube.tokens_seen == [None, "nope", "test-token"]


def test_a_rotated_token_file_is_reread_by_lightkube_after_a_401(
    fake_kube: FakeKubernetes, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    rotating = fake_kube.kubeconfig(tmp_path / "rotating", token_file=token_file)
    static = fake_kube.kubeconfig(tmp_path / "static")
    fake_kube.create(warehouse("app"))

    async def main() -> None:
        async with client(rotating) as kube:
            await kube.get(Warehouse, "app", namespace="demo")
            fake_kube.token = "rotated"
            token_file.write_text("rotated\n")
            await kube.get(Warehouse, "app", namespace="demo")  # 401, re-read, retried
        async with client(static) as kube:
            with pytest.raises(ApiError) as error:  # a static token is not re-read
                await kube.get(Warehouse, "app", namespace="demo")
        assert error.value.status.code == 401

    run(main())
    gets = fake_kube.filter_requests(verb="get", path="/warehouses/app$")
    assert [(r.token, r.status) for r in gets] == [
        ("test-token", 200),
        ("test-token", 401),
        ("rotated", 200),
        ("test-token", 401),
    ]


# --------------------------------------------------------------------------- CRUD with lightkube


def test_lightkube_create_get_and_list(fake_kube: FakeKubernetes, kubeconfig: Path) -> None:
    fake_kube.create(warehouse("other", namespace="ops", labels={"team": "b"}))

    async def main() -> None:
        async with client(kubeconfig) as kube:
            body = warehouse("app", labels={"team": "a"})
            created = await kube.create(Warehouse(**body, status={"lastHandledRefresh": "x"}))
            metadata = meta(created)
            assert metadata.uid and metadata.creationTimestamp and metadata.generation == 1
            assert int(metadata.resourceVersion) == int(fake_kube.resource_version)
            assert "status" not in created  # ignored on create: status is a subresource
            assert await kube.get(Warehouse, "app", namespace="demo") == created
            with pytest.raises(ApiError) as exists:
                await kube.create(Warehouse(**body))
            assert (exists.value.status.code, exists.value.status.reason) == (409, "AlreadyExists")
            with pytest.raises(ApiError) as missing:
                await kube.get(Warehouse, "nope", namespace="demo")
            assert (missing.value.status.code, missing.value.status.reason) == (404, "NotFound")
            assert meta_details(missing.value).kind == "warehouses"

            async def names(**kwargs: Any) -> list[str]:
                return [meta(w).name async for w in kube.list(Warehouse, **kwargs)]

            assert await names(namespace="*") == ["app", "other"]
            assert await names(namespace="demo") == ["app"]
            assert await names(namespace="*", labels={"team": "b"}) == ["other"]
            assert await names(namespace="*", fields={"metadata.name": "app"}) == ["app"]

    run(main())
    stored = fake_kube.get(V1A1, "Warehouse", "demo", "app")
    assert stored is not None and stored["metadata"]["labels"] == {"team": "a"}


def test_list_pagination_with_limit_and_continue(
    fake_kube: FakeKubernetes, kubeconfig: Path
) -> None:
    fake_kube.bulk_create(warehouse(f"w{i:02}") for i in range(25))

    async def main() -> None:
        async with client(kubeconfig) as kube:
            listing = kube.list(Warehouse, namespace="demo", chunk_size=10)
            names = [meta(w).name async for w in listing]
            assert names == [f"w{i:02}" for i in range(25)]
            assert listing.resourceVersion == fake_kube.resource_version

    run(main())
    pages = fake_kube.filter_requests(verb="list")
    assert [r.query.get("limit") for r in pages] == ["10", "10", "10"]
    assert "continue" not in pages[0].query and "continue" in pages[2].query
    with raw(fake_kube) as http:
        first = http.get(DEMO_WAREHOUSES, params={"limit": 10}).json()["metadata"]
        assert first["remainingItemCount"] == 15
        fake_kube.expire_history()  # continue tokens expire with the history, as on compaction
        stale = http.get(DEMO_WAREHOUSES, params={"limit": 10, "continue": first["continue"]})
        assert_status(stale, 410, "Expired")


def test_label_and_field_selectors(fake_kube: FakeKubernetes) -> None:
    fake_kube.bulk_create(
        [
            warehouse("a", labels={"tier": "web", "env": "prod"}),
            warehouse("b", labels={"tier": "db", "env": "prod"}),
            warehouse("c", labels={"tier": "web"}),
            warehouse("d", namespace="other", labels={"env": "dev"}),
        ]
    )
    with raw(fake_kube) as http:

        def names(**params: str) -> list[str]:
            response = http.get(WAREHOUSES, params=params)
            assert response.status_code == 200, response.text
            return [item["metadata"]["name"] for item in response.json()["items"]]

        assert names(labelSelector="tier=web") == ["a", "c"]
        assert names(labelSelector="tier==web,env=prod") == ["a"]
        assert names(labelSelector="tier!=web") == ["b", "d"]
        assert names(labelSelector="env in (prod, dev)") == ["a", "b", "d"]
        assert names(labelSelector="env notin (prod),tier") == ["c"]
        assert names(labelSelector="!env") == ["c"]
        assert names(fieldSelector="metadata.name=b") == ["b"]
        assert names(fieldSelector="metadata.namespace=other") == ["d"]
        assert names(fieldSelector="metadata.name!=a,metadata.namespace==demo") == ["b", "c"]
        assert_status(http.get(WAREHOUSES, params={"labelSelector": "a b"}), 400, "BadRequest")
        assert_status(http.get(WAREHOUSES, params={"fieldSelector": "spec.x=1"}), 400, "BadRequest")


# --------------------------------------------------------------------------- writes


def test_merge_patch_works_while_lightkubes_default_patch_type_gets_415(
    fake_kube: FakeKubernetes, kubeconfig: Path
) -> None:
    created = fake_kube.create(warehouse("app"))
    refresh = {"metadata": {"annotations": {"kargo.akuity.io/refresh": "2026-11-27T05:00:00Z"}}}

    async def main() -> None:
        async with client(kubeconfig) as kube:
            with pytest.raises(ApiError) as strategic:  # PatchType.STRATEGIC is the default
                await kube.patch(Warehouse, "app", refresh, namespace="demo")
            assert strategic.value.status.code == 415
            assert strategic.value.status.reason == "UnsupportedMediaType"
            patched = await kube.patch(
                Warehouse, "app", refresh, namespace="demo", patch_type=MERGE
            )
            assert meta(patched).annotations == refresh["metadata"]["annotations"]
            assert meta(patched).generation == 1  # metadata changes keep the generation
            rv = int(meta(patched).resourceVersion)
            assert rv > int(created["metadata"]["resourceVersion"])
            again = await kube.patch(Warehouse, "app", refresh, namespace="demo", patch_type=MERGE)
            assert int(meta(again).resourceVersion) == rv  # a no-op patch writes nothing
            ops = [{"op": "add", "path": "/metadata/labels", "value": {"x": "y"}}]
            labelled = await kube.patch(
                Warehouse, "app", ops, namespace="demo", patch_type=PatchType.JSON
            )
            assert meta(labelled).labels == {"x": "y"}
            with pytest.raises(ApiError) as apply:
                await kube.patch(
                    Warehouse, "app", refresh, namespace="demo", patch_type=PatchType.APPLY,
                    field_manager="test",
                )  # fmt: skip
            assert apply.value.status.code == 415
            # built-in kinds do accept strategic merge patches
            secret = Secret(metadata=ObjectMeta(name="s", namespace="demo"), stringData={"k": "v"})
            await kube.create(secret)
            labels = {"metadata": {"labels": {"a": "b"}}}
            secret = await kube.patch(Secret, "s", labels, namespace="demo")
            assert secret.data == {"k": base64.b64encode(b"v").decode()}
            assert meta(secret).labels == {"a": "b"}

    run(main())
    patches = fake_kube.filter_requests(verb="patch")
    assert [r.content_type for r in patches][:2] == [
        "application/strategic-merge-patch+json",
        "application/merge-patch+json",
    ]
    assert [r.status for r in patches] == [415, 200, 200, 200, 415, 200]


def test_status_subresource_and_generation(fake_kube: FakeKubernetes, kubeconfig: Path) -> None:
    fake_kube.create(warehouse("app"))

    async def main() -> None:
        async with client(kubeconfig) as kube:
            status = {"status": {"lastHandledRefresh": "x"}}
            result = await kube.patch(
                Warehouse.Status, "app", status, namespace="demo", patch_type=MERGE
            )
            assert result["status"] == status["status"] and meta(result).generation == 1
            both = {"spec": {"interval": "1m"}, "status": {"lastHandledRefresh": "y"}}
            main_write = await kube.patch(
                Warehouse, "app", both, namespace="demo", patch_type=MERGE
            )
            assert main_write["status"] == {"lastHandledRefresh": "x"}  # status ignored
            assert main_write["spec"]["interval"] == "1m" and meta(main_write).generation == 2
            both = {"spec": {"interval": "9m"}, "status": {"lastHandledRefresh": "z"}}
            status_write = await kube.patch(
                Warehouse.Status, "app", both, namespace="demo", patch_type=MERGE
            )
            assert status_write["spec"]["interval"] == "1m"  # spec ignored
            assert status_write["status"] == {"lastHandledRefresh": "z"}
            assert meta(status_write).generation == 2
            current = await kube.get(Warehouse, "app", namespace="demo")
            current["status"] = {"lastHandledRefresh": "w"}
            current["spec"]["interval"] = "2m"
            replaced = await kube.replace(current)
            assert replaced["status"] == {"lastHandledRefresh": "z"}
            assert meta(replaced).generation == 3

    run(main())


def test_lease_update_with_a_stale_resource_version_conflicts(
    fake_kube: FakeKubernetes, kubeconfig: Path
) -> None:
    async def main() -> None:
        async with client(kubeconfig) as kube:
            spec = LeaseSpec(holderIdentity="a", leaseDurationSeconds=15)
            lease = await kube.create(
                Lease(metadata=ObjectMeta(name="leader", namespace="demo"), spec=spec)
            )
            assert lease.spec is not None
            stale = meta(lease).resourceVersion
            lease.spec.holderIdentity = "b"
            renewed = await kube.replace(lease)
            assert renewed.spec is not None and renewed.spec.holderIdentity == "b"
            assert meta(renewed).resourceVersion != stale
            lease.spec.holderIdentity = "c"  # still carries the stale resourceVersion
            with pytest.raises(ApiError) as error:
                await kube.replace(lease)
            assert (error.value.status.code, error.value.status.reason) == (409, "Conflict")
            assert "the object has been modified" in str(error.value.status.message)
            current = await kube.get(Lease, "leader", namespace="demo")
            assert current.spec is not None and current.spec.holderIdentity == "b"

    run(main())


def test_errors_are_status_objects(fake_kube: FakeKubernetes) -> None:
    fake_kube.create(warehouse("app"))
    app = f"{DEMO_WAREHOUSES}/app"
    nameless = {"apiVersion": V1A1, "kind": "Warehouse", "metadata": {}}
    merge = {"Content-Type": "application/merge-patch+json"}
    with raw(fake_kube) as http:
        invalid = assert_status(http.post(DEMO_WAREHOUSES, json=nameless), 422, "Invalid")
        assert invalid["details"]["causes"][0]["field"] == "metadata.name"
        assert_status(http.post(DEMO_WAREHOUSES, json=warehouse("app")), 409, "AlreadyExists")
        assert_status(http.post(DEMO_WAREHOUSES, json=warehouse("x", "ops")), 400, "BadRequest")
        assert_status(http.post(DEMO_WAREHOUSES, content=b"{not json"), 400, "BadRequest")
        assert_status(http.put(app, json=warehouse("other")), 400, "BadRequest")
        stale = warehouse("app")
        stale["metadata"]["resourceVersion"] = "1"
        assert_status(http.put(app, json=stale), 409, "Conflict")
        assert_status(
            http.patch(f"{DEMO_WAREHOUSES}/nope", json={}, headers=merge), 404, "NotFound"
        )
        assert_status(http.delete(f"{DEMO_WAREHOUSES}/nope"), 404, "NotFound")
        assert_status(http.get(f"/apis/{V1A1}/namespaces/demo/widgets"), 404, "NotFound")
        assert_status(http.put(DEMO_WAREHOUSES, json={}), 405, "MethodNotAllowed")
        created = http.post(DEMO_WAREHOUSES, json={**nameless, "metadata": {"generateName": "g-"}})
        assert created.status_code == 201 and created.json()["metadata"]["name"].startswith("g-")
        deleted = http.delete(app)
        assert deleted.status_code == 200 and deleted.json()["status"] == "Success"


def test_deleting_a_namespace_terminates_it_then_removes_its_contents(
    fake_kube: FakeKubernetes,
) -> None:
    fake_kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})
    fake_kube.create(warehouse("app"))
    with raw(fake_kube) as http:
        deleted = http.delete("/api/v1/namespaces/demo")
        assert deleted.status_code == 200 and deleted.json()["status"]["phase"] == "Terminating"
        refused = http.post(DEMO_WAREHOUSES, json=warehouse("late"))
        assert_status(refused, 403, "Forbidden")
    deadline = time.monotonic() + 5
    while fake_kube.get("v1", "Namespace", None, "demo") is not None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert fake_kube.objects(V1A1, "Warehouse") == []


# --------------------------------------------------------------------------- watches


def test_watch_from_a_list_version_sees_later_changes(
    fake_kube: FakeKubernetes, kubeconfig: Path
) -> None:
    fake_kube.create(warehouse("before"))

    async def main() -> list[tuple[str, Any]]:
        async with client(kubeconfig) as kube:
            listing = kube.list(Warehouse, namespace="demo")
            assert [meta(w).name async for w in listing] == ["before"]
            stream = kube.watch(
                Warehouse, namespace="demo", resource_version=listing.resourceVersion
            )
            task = asyncio.create_task(take(stream, 4))
            await watches_open(fake_kube)
            await kube.create(Warehouse(**warehouse("http")))
            fake_kube.create(warehouse("python"))
            fake_kube.patch(
                V1A1, "Warehouse", "demo", "python", {"metadata": {"labels": {"a": "b"}}}
            )
            fake_kube.create(warehouse("elsewhere", namespace="ops"))  # another namespace
            await kube.delete(Warehouse, "before", namespace="demo")
            return await task

    events = run(main())
    assert [(kind, meta(obj).name) for kind, obj in events] == [
        ("ADDED", "http"),
        ("ADDED", "python"),
        ("MODIFIED", "python"),
        ("DELETED", "before"),
    ]
    versions = [int(meta(obj).resourceVersion) for _, obj in events]
    assert versions == sorted(versions) and len(set(versions)) == 4
    http_made, python_made = events[0][1], events[1][1]
    assert set(http_made) == set(python_made) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(http_made["metadata"]) == set(python_made["metadata"])


def test_watch_without_a_version_starts_with_the_current_objects(
    fake_kube: FakeKubernetes, kubeconfig: Path
) -> None:
    fake_kube.bulk_create([warehouse("a"), warehouse("b")])

    async def main() -> list[tuple[str, Any]]:
        async with client(kubeconfig) as kube:
            task = asyncio.create_task(take(kube.watch(Warehouse, namespace="demo"), 3))
            await watches_open(fake_kube)
            fake_kube.create(warehouse("c"))
            return await task

    assert [(kind, meta(obj).name) for kind, obj in run(main())] == [
        ("ADDED", "a"),
        ("ADDED", "b"),
        ("ADDED", "c"),
    ]
    with raw(fake_kube) as http:  # resourceVersion=0 ("any") replays the state as well
        params = {"watch": "true", "resourceVersion": "0", "timeoutSeconds": "0.1"}
        lines = http.get(DEMO_WAREHOUSES, params=params).text.splitlines()
    assert [json.loads(line)["object"]["metadata"]["name"] for line in lines] == ["a", "b", "c"]


def test_watch_with_a_label_selector_sees_objects_enter_and_leave(
    fake_kube: FakeKubernetes, kubeconfig: Path
) -> None:
    fake_kube.create(warehouse("app", labels={"team": "a"}))
    start = fake_kube.resource_version

    def label(team: str, note: str = "") -> None:
        patch = {"metadata": {"labels": {"team": team}, "annotations": {"note": note}}}
        fake_kube.patch(V1A1, "Warehouse", "demo", "app", patch)

    async def main() -> list[tuple[str, Any]]:
        async with client(kubeconfig) as kube:
            stream = kube.watch(
                Warehouse, namespace="demo", labels={"team": "a"}, resource_version=start
            )
            task = asyncio.create_task(take(stream, 3))
            await watches_open(fake_kube)
            label("b")  # leaves the selection: DELETED
            label("b", "unseen")  # outside the selection: nothing
            label("a")  # enters it again: ADDED
            label("a", "seen")  # MODIFIED
            return await task

    events = run(main())
    assert [kind for kind, _ in events] == ["DELETED", "ADDED", "MODIFIED"]
    assert meta(events[0][1]).labels == {"team": "b"}


def test_watch_from_an_expired_version(fake_kube: FakeKubernetes, kubeconfig: Path) -> None:
    """An ERROR event carrying a 410 Expired Status, or (optionally) an HTTP 410."""
    fake_kube.create(warehouse("app"))
    old = fake_kube.resource_version
    fake_kube.expire_history()
    params = {"watch": "true", "resourceVersion": old}

    async def main() -> None:
        async with client(kubeconfig) as kube:
            with pytest.raises(ApiError) as error:
                await take(kube.watch(Warehouse, namespace="demo", resource_version=old), 1)
            assert (error.value.status.code, error.value.status.reason) == (410, "Expired")
            # lightkube's on_error_retry restarts *without* a version: the state again, as ADDED
            retrying = kube.watch(
                Warehouse, namespace="demo", resource_version=old, on_error=on_error_retry
            )
            assert [(k, meta(o).name) for k, o in await take(retrying, 1)] == [("ADDED", "app")]
            fake_kube.expired_as_http = True
            with pytest.raises(httpx2.HTTPStatusError) as http_error:
                await take(kube.watch(Warehouse, namespace="demo", resource_version=old), 1)
            # a plain HTTPStatusError, not an ApiError: lightkube's retry would not reset
            assert not isinstance(http_error.value, ApiError)
            assert http_error.value.response.status_code == 410

    with raw(fake_kube) as http:
        response = http.get(DEMO_WAREHOUSES, params=params)
        assert response.status_code == 200
        (line,) = response.text.splitlines()
        event = json.loads(line)
        assert event["type"] == "ERROR"
        assert event["object"]["kind"] == "Status" and event["object"]["code"] == 410
        assert event["object"]["reason"] == "Expired"
    run(main())
    with raw(fake_kube) as http:
        assert_status(http.get(DEMO_WAREHOUSES, params=params), 410, "Expired")


def test_bookmarks_carry_only_the_resource_version(
    fake_kube: FakeKubernetes, kubeconfig: Path
) -> None:
    fake_kube.bookmark_interval = 0.2
    fake_kube.create(warehouse("app"))
    start = fake_kube.resource_version

    async def main() -> list[tuple[str, Any]]:
        async with client(kubeconfig) as kube:
            # lightkube's watch() has no allowWatchBookmarks argument: build the request
            request = kube._client.prepare_request(
                "list",
                res=Warehouse,
                namespace="demo",
                watch=True,
                params={"allowWatchBookmarks": "true", "resourceVersion": start},
            )
            task = asyncio.create_task(take(kube._client.watch(request), 1))
            await watches_open(fake_kube)
            fake_kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}})
            return await task

    ((kind, bookmark),) = run(main())
    assert kind == "BOOKMARK" and bookmark["kind"] == "Warehouse"
    assert int(bookmark["metadata"]["resourceVersion"]) > int(start)  # other kinds moved on
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
                "apiVersion": V1A1,
                "metadata": {"resourceVersion": fake_kube.resource_version},
            },
        }
    ]


def test_timeout_seconds_ends_the_stream_and_lightkube_resumes(
    fake_kube: FakeKubernetes, kubeconfig: Path
) -> None:
    start = fake_kube.resource_version

    async def main() -> list[tuple[str, Any]]:
        async with client(kubeconfig) as kube:
            stream = kube.watch(
                Warehouse, namespace="demo", resource_version=start, server_timeout=1
            )
            task = asyncio.create_task(take(stream, 1))
            deadline = time.monotonic() + 5
            while len(fake_kube.filter_requests(verb="watch")) < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            fake_kube.create(warehouse("app"))
            return await task

    assert [kind for kind, _ in run(main())] == ["ADDED"]
    watches = fake_kube.filter_requests(verb="watch")
    assert [w.query["resourceVersion"] for w in watches[:2]] == [start, start]
    assert all(w.query["timeoutSeconds"] == "1" for w in watches)


# --------------------------------------------------------------------------- faults


def test_fail_injects_status_errors(fake_kube: FakeKubernetes, kubeconfig: Path) -> None:
    fake_kube.create(warehouse("app"))
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
            assert meta_details(throttled.value).retryAfterSeconds == 2
            await kube.get(Warehouse, "app", namespace="demo")
            with pytest.raises(httpx2.HTTPStatusError) as unavailable:  # watches: no ApiError
                await take(kube.watch(Warehouse, namespace="demo"), 1)
            assert unavailable.value.response.status_code == 503
            assert [k for k, _ in await take(kube.watch(Warehouse, namespace="demo"), 1)] == [
                "ADDED"
            ]

    run(main())


def test_delay_slows_down_matching_requests(fake_kube: FakeKubernetes, kubeconfig: Path) -> None:
    fake_kube.create(warehouse("app"))
    fake_kube.delay("PATCH", "/warehouses/", 0.3)

    async def main() -> tuple[float, float]:
        async with client(kubeconfig) as kube:
            patch = {"metadata": {"annotations": {"a": "b"}}}
            begin = time.monotonic()
            await kube.patch(Warehouse, "app", patch, namespace="demo", patch_type=MERGE)
            patched = time.monotonic()
            await kube.get(Warehouse, "app", namespace="demo")
            return patched - begin, time.monotonic() - patched

    slow, fast = run(main())
    assert slow >= 0.3 and fast < 0.3


def test_hang_makes_the_client_time_out(fake_kube: FakeKubernetes, kubeconfig: Path) -> None:
    fake_kube.create(warehouse("app"))
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
            await watches_open(fake_kube)
            fake_kube.drop_watches()
            with pytest.raises(httpx2.RemoteProtocolError):  # incomplete chunked read
                await failing
            # on_error_retry resumes from the last version seen, so nothing is lost
            stream = kube.watch(
                Warehouse, namespace="demo", resource_version=start, on_error=on_error_retry
            )
            resuming = asyncio.create_task(take(stream, 1))
            await watches_open(fake_kube)
            fake_kube.drop_watches()
            fake_kube.create(warehouse("app"))  # while no watch is open
            return await resuming

    assert [(k, meta(o).name) for k, o in run(main())] == [("ADDED", "app")]
    resumed = fake_kube.filter_requests(verb="watch")[-1]
    assert resumed.query["resourceVersion"] == start


# --------------------------------------------------------------------------- scale


def test_hundreds_of_concurrent_requests_and_watches(
    fake_kube: FakeKubernetes, kubeconfig: Path
) -> None:
    fake_kube.bulk_create(warehouse(f"w{i:03}") for i in range(300))
    start = fake_kube.resource_version

    async def main() -> list[list[tuple[str, Any]]]:
        async with client(kubeconfig) as watching, client(kubeconfig) as kube:
            streams = [
                watching.watch(
                    Warehouse, namespace="demo", fields={"metadata.name": f"w{i:03}"},
                    resource_version=start,
                )
                for i in range(60)
            ]  # fmt: skip
            tasks = [asyncio.create_task(take(stream, 1)) for stream in streams]
            await watches_open(fake_kube, 60)
            patch = {"metadata": {"annotations": {"kargo.akuity.io/refresh": "now"}}}
            await asyncio.gather(
                *(
                    kube.patch(Warehouse, f"w{i:03}", patch, namespace="demo", patch_type=MERGE)
                    for i in range(300)
                )
            )
            return await asyncio.gather(*tasks)

    results = run(main())
    assert [[(k, meta(o).name) for k, o in events] for events in results] == [
        [("MODIFIED", f"w{i:03}")] for i in range(60)
    ]
    assert len(fake_kube.filter_requests(verb="patch")) == 300


def test_bulk_create_seeds_a_hundred_thousand_warehouses(fake_kube: FakeKubernetes) -> None:
    fake_kube.bulk_create(warehouse(f"w{i:06}", namespace=f"p{i % 100}") for i in range(100_000))
    with raw(fake_kube) as http:
        page = http.get(WAREHOUSES, params={"limit": 500}).json()
        assert len(page["items"]) == 500 and page["metadata"]["remainingItemCount"] == 99_500
        one = http.get(WAREHOUSES, params={"fieldSelector": "metadata.name=w099999"}).json()
        assert [item["metadata"]["namespace"] for item in one["items"]] == ["p99"]


# --------------------------------------------------------------------------- Python API


def test_python_api(fake_kube: FakeKubernetes) -> None:
    promotion = {
        "apiVersion": V1A1,
        "kind": "Promotion",
        "metadata": {"name": "p", "namespace": "demo"},
        "spec": {"steps": [{"uses": "git-wait-for-pr", "as": "wait"}]},
        "status": {"phase": "Running", "currentStep": 0},
    }
    created = fake_kube.create(promotion)
    assert created["status"]["phase"] == "Running"  # seeding keeps status
    stale = json.loads(json.dumps(created))
    created["spec"]["steps"].append({"uses": "noop"})
    assert fake_kube.replace(created)["metadata"]["generation"] == 2
    with pytest.raises(ApiStatusError) as conflict:
        fake_kube.replace(stale)
    assert conflict.value.code == 409
    done = {"status": {"phase": "Succeeded"}, "spec": {"steps": []}}
    patched = fake_kube.patch(V1A1, "Promotion", "demo", "p", done, subresource="status")
    assert patched["status"]["phase"] == "Succeeded" and len(patched["spec"]["steps"]) == 2
    assert [p["metadata"]["name"] for p in fake_kube.objects(V1A1, "Promotion")] == ["p"]
    assert fake_kube.objects(V1A1, "Promotion", "other") == []
    fake_kube.delete(V1A1, "Promotion", "demo", "p")
    assert fake_kube.get(V1A1, "Promotion", "demo", "p") is None
    with pytest.raises(ApiStatusError) as missing:
        fake_kube.delete(V1A1, "Promotion", "demo", "p")
    assert missing.value.code == 404
    cluster = {"apiVersion": V1A1, "kind": "ClusterConfig", "metadata": {"name": "cluster"}}
    assert "namespace" not in fake_kube.create(cluster)["metadata"]
    with pytest.raises(KeyError):
        fake_kube.create({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {}})


def test_requests_are_recorded(fake_kube: FakeKubernetes, kubeconfig: Path) -> None:
    fake_kube.create(warehouse("app"))
    patch = {"metadata": {"annotations": {"a": "b"}}}

    async def main() -> None:
        async with client(kubeconfig) as kube:
            await kube.patch(Warehouse, "app", patch, namespace="demo", patch_type=MERGE)

    fake_kube.reset_requests()
    run(main())
    (request,) = fake_kube.requests
    assert (request.method, request.verb, request.status) == ("PATCH", "patch", 200)
    assert request.path == f"{DEMO_WAREHOUSES}/app"
    assert request.content_type == "application/merge-patch+json" and request.json() == patch
    assert not fake_kube.filter_requests(verb="list") and not fake_kube.filter_requests(verb="get")


def test_patch_and_selector_helpers() -> None:
    """RFC 7386 and RFC 6902 examples, and label selector parsing."""
    target = {"a": "b", "c": {"d": "e", "f": "g"}}
    assert merge_patch(target, {"a": "z", "c": {"f": None}}) == {"a": "z", "c": {"d": "e"}}
    assert merge_patch({"a": [1]}, {"a": [2, 3]}) == {"a": [2, 3]}
    doc = {"foo": ["bar", "baz"], "x": {"y": 1}}
    ops = [
        {"op": "add", "path": "/foo/1", "value": "qux"},
        {"op": "remove", "path": "/x/y"},
        {"op": "copy", "from": "/foo/0", "path": "/x/z"},
        {"op": "move", "from": "/foo/2", "path": "/foo/-"},
        {"op": "replace", "path": "/foo/0", "value": "a~b"},
        {"op": "test", "path": "/x/z", "value": "bar"},
    ]
    assert json_patch(doc, ops) == {"foo": ["a~b", "qux", "baz"], "x": {"z": "bar"}}
    with pytest.raises(JsonPatchError):
        json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": 2}])
    requirements = parse_label_selector("a=1, b in (x,y),!c,d notin (z)")
    assert [(r.key, r.op, r.values) for r in requirements] == [
        ("a", "=", ("1",)),
        ("b", "in", ("x", "y")),
        ("c", "!", ()),
        ("d", "notin", ("z",)),
    ]


# --------------------------------------------------------------------------- kubectl

KUBECTL = shutil.which("kubectl")
MANIFEST = """
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Secret
metadata: {name: bb, namespace: demo}
stringData: {secret: mysupersecret}
---
apiVersion: kargo.akuity.io/v1alpha1
kind: ProjectConfig
metadata: {name: demo, namespace: demo}
spec:
  webhookReceivers:
    - name: bb-wh-receiver
      bitbucket: {secretRef: {name: bb}}
---
apiVersion: kargo.akuity.io/v1alpha1
kind: Warehouse
metadata: {name: app, namespace: demo}
spec:
  subscriptions:
    - git: {repoURL: "https://bitbucket.org/acme/app.git", branch: main}
"""


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not on PATH")
def test_kubectl_apply_get_delete(
    fake_kube: FakeKubernetes, kubeconfig: Path, tmp_path: Path
) -> None:
    if not fake_kube.https_url:
        pytest.skip("no TLS listener (openssl missing): kubectl sends no token over plain HTTP")
    assert KUBECTL is not None
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(MANIFEST)

    def kubectl(*args: str) -> str:
        command = [KUBECTL, "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "c")]
        result = subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "HOME": str(tmp_path)},
        )
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result.stdout

    created = kubectl("apply", "--validate=false", "-f", str(manifest))
    assert (
        "warehouse.kargo.akuity.io/app created" in created and "namespace/demo created" in created
    )
    secret = fake_kube.get("v1", "Secret", "demo", "bb")
    assert secret is not None and "stringData" not in secret
    assert base64.b64decode(secret["data"]["secret"]) == b"mysupersecret"
    assert "warehouse.kargo.akuity.io/app unchanged" in kubectl(
        "apply", "--validate=false", "-f", str(manifest)
    )
    listed = json.loads(kubectl("get", "warehouses", "-A", "-o", "json"))
    assert [item["metadata"]["name"] for item in listed["items"]] == ["app"]
    assert "deleted" in kubectl("delete", "warehouse", "app", "-n", "demo")
    assert fake_kube.get(V1A1, "Warehouse", "demo", "app") is None
    kubectl("delete", "namespace", "demo")  # waits until the namespace is gone
    assert fake_kube.get("v1", "Namespace", None, "demo") is None
    assert fake_kube.objects("v1", "Secret") == []
    assert {r.token for r in fake_kube.requests} == {"test-token"}
