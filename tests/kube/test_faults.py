"""Kubernetes mode under faults a real API server does not produce on demand, against the
FAKE API server (``tests/kube/fakeapi.py``): 410 Gone mid-watch, 429/5xx with Retry-After,
hung and slow requests, dropped watches. Everything else runs against a real kube-apiserver
in ``test_kubernetes_mode.py``.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.builders import (
    KARGO,
    PUSH,
    one_receiver,
    project,
    promotion,
    secret,
    signed,
    warehouse,
)
from tests.kube.fakeapi import FakeKubernetes
from tests.kube.support import Replicas, published_url
from tests.support import Server, eventually, free_ports, request

BITBUCKET_TIMEOUT = 10.0  # seconds Bitbucket waits for an answer: the promise under load too
PR = "https://bitbucket.org/acme/app/pull-requests/7"
PR_MERGED = json.dumps({"pullrequest": {"links": {"html": {"href": PR}}}}).encode()


def seed(fake: FakeKubernetes, docs: Iterable[dict[str, Any]]) -> None:
    """Create objects as ``kubectl apply`` would (namespaces first, stringData folded),
    and the namespace of the servers' Lease."""
    docs = list(docs)
    namespaces = {d["metadata"].get("namespace") for d in docs} - {None} | {"kargo"}
    for namespace in sorted(namespaces):
        if fake.get("v1", "Namespace", None, namespace) is None:
            fake.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    for doc in docs:
        doc = json.loads(json.dumps(doc))
        if doc["kind"] == "Secret" and "stringData" in doc:
            doc["data"] = {
                k: base64.b64encode(v.encode()).decode() for k, v in doc.pop("stringData").items()
            }
        fake.create(doc)


@pytest.fixture
def demo(fake_kube: FakeKubernetes, kubeconfig: Path, replicas: Replicas) -> Any:
    seed(
        fake_kube,
        [
            secret("demo", "bb", "topsecret"),
            project("demo", ("bb", "bb")),
            warehouse("demo", "app"),
            warehouse("demo", "dev", branch="develop"),
        ],
    )
    server = replicas(kubeconfig)
    server.url = published_url(fake_kube, "demo")  # type: ignore[attr-defined]
    yield server
    assert server.stop() == 0


def test_watch_drops_and_410_recover_without_missing_events(
    fake_kube: FakeKubernetes, demo: Server
) -> None:
    fake_kube.drop_watches()
    fake_kube.create(warehouse("demo", "after-drop"))
    fake_kube.expire_history()
    fake_kube.drop_watches()
    fake_kube.delete(KARGO, "Warehouse", "demo", "app")
    fake_kube.create(warehouse("demo", "after-expiry"))

    def names() -> set[str]:
        answer = request(demo.url, PUSH, signed(PUSH))  # type: ignore[attr-defined]
        return set(answer.json().get("refreshed", []))

    eventually(
        lambda: names() == {"demo/after-drop", "demo/after-expiry"},
        timeout=20,
        what="caches to recover",
    )
    metrics = request(demo.admin + "/metrics", method="GET").body.decode()
    assert 'kargo_bitbucket_watch_restarts_total{kind="Warehouse"' in metrics


@pytest.mark.parametrize(
    ("status", "times", "expected_status", "expected", "cause"),
    [
        (500, 2, 200, "refreshed 2 warehouse(s)", ""),
        (429, 1, 200, "refreshed 2 warehouse(s)", ""),
        # The cause names the last attempt's error: a 503, or on a loaded machine a timeout.
        (
            503,
            10_000,
            500,
            "failed to refresh 2 of 2 warehouses",
            r": failed after \d+ attempt\(s\): (HTTP 503|TimeoutError)|: no time left of the",
        ),
        (403, 1, 500, "failed to refresh 1 of 2 warehouses", ": refused: HTTP 403"),
        (404, 1, 200, "refreshed 1 warehouse(s)", ""),
    ],
)
def test_patch_failures_are_retried_and_counted(
    fake_kube: FakeKubernetes,
    demo: Server,
    status: int,
    times: int,
    expected_status: int,
    expected: str,
    cause: str,
) -> None:
    fake_kube.create(warehouse("demo", "second"))
    eventually(
        lambda: len(request(demo.url, PUSH, signed(PUSH)).json()["refreshed"]) == 2,  # type: ignore[attr-defined]
        what="second warehouse indexed",
    )
    fake_kube.fail(
        "PATCH", r"/warehouses/", status, times=times, retry_after=0.1 if status == 429 else None
    )
    started = time.monotonic()
    answer = request(demo.url, PUSH, signed(PUSH))  # type: ignore[attr-defined]
    assert answer.status == expected_status, answer.body
    assert (answer.json().get("msg") or answer.json().get("error")) == expected
    assert time.monotonic() - started < BITBUCKET_TIMEOUT  # retries end at the 7 s budget
    # Why it failed is in the delivery's history record (and log line), not in the answer.
    newest = json.loads(request(demo.admin + "/deliveries.json", method="GET").body)[0]
    assert re.search(cause, newest["detail"])
    assert newest["detail"].startswith("Warehouse demo/") == bool(cause)
    assert "detail" not in answer.json()


def test_hanging_patch_is_retried_within_the_budget(
    fake_kube: FakeKubernetes, demo: Server
) -> None:
    fake_kube.hang("PATCH", r"/warehouses/app$", times=1)
    fake_kube.reset_requests()
    started = time.monotonic()
    answer = request(demo.url, PUSH, signed(PUSH))  # type: ignore[attr-defined]
    assert answer.status == 200 and answer.json()["refreshed"] == ["demo/app"]
    assert len(fake_kube.filter_requests("PATCH", r"/warehouses/app$")) == 2  # hung, then one
    assert time.monotonic() - started < BITBUCKET_TIMEOUT


def test_readyz_waits_for_the_initial_lists(
    fake_kube: FakeKubernetes, kubeconfig: Path, replicas: Replicas
) -> None:
    fake_kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kargo"}})
    fake_kube.delay("GET", r"/warehouses$", 3.0)
    started = time.monotonic()
    server = replicas(kubeconfig)
    try:
        assert time.monotonic() - started >= 2.5  # Server() waits for /readyz 200
        assert request(server.base + "/healthz", method="GET").status == 200
    finally:
        server.stop()


def test_http_410_before_the_stream_relists(tmp_path: Path, replicas: Replicas) -> None:
    with FakeKubernetes(bookmark_interval=0.5, expired_as_http=True) as fake:
        kubeconfig = fake.kubeconfig(tmp_path / "kubeconfig")
        seed(
            fake,
            one_receiver("demo", "app"),
        )
        server = replicas(kubeconfig)
        try:
            url = published_url(fake, "demo")
            fake.fail("watch", r"/warehouses", 503, times=2)
            fake.drop_watches()
            fake.delete(KARGO, "Warehouse", "demo", "app")
            fake.create(warehouse("demo", "new"))
            fake.expire_history()

            def names() -> set[str]:
                return set(request(url, PUSH, signed(PUSH)).json().get("refreshed", []))

            eventually(lambda: names() == {"demo/new"}, timeout=20, what="relist after HTTP 410")
            metrics = request(server.admin + "/metrics", method="GET").body.decode()
            assert 'reason="expired"' in metrics
        finally:
            assert server.stop() == 0


def test_deliveries_before_the_caches_load_are_told_to_retry(
    fake_kube: FakeKubernetes, kubeconfig: Path, replicas: Replicas
) -> None:
    seed(fake_kube, one_receiver("demo"))
    fake_kube.delay("GET", r"/promotions$", 4.0)
    port, admin = free_ports(2)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kargo_bitbucket",
            "serve",
            "--kubernetes",
            "--kubeconfig",
            str(kubeconfig),
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-listen",
            f"127.0.0.1:{admin}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def answer() -> Any:
            try:
                return request(f"http://127.0.0.1:{port}/bitbucket/" + "0" * 64, PUSH, signed(PUSH))
            except OSError:
                return None

        early = eventually(answer, what="the server to listen")
        assert early.status == 503 and early.headers["retry-after"] == "5"
        assert request(f"http://127.0.0.1:{port}/readyz", method="GET").status == 503
        later = eventually(
            lambda: (a := answer()) is not None and a.status == 404 and a,
            timeout=15,
            what="caches loaded",
        )
        assert later.json() == {"error": "not found"}
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_failed_status_writes_are_retried(
    fake_kube: FakeKubernetes, kubeconfig: Path, replicas: Replicas
) -> None:
    """Tested against a fake API server: two 500s on the status PATCH, nothing else changes."""
    seed(fake_kube, one_receiver("demo"))
    fake_kube.fail("PATCH", r"/projectconfigs/demo/status$", 500, times=2)
    replicas(kubeconfig)
    assert published_url(fake_kube, "demo")
    assert len(fake_kube.filter_requests("PATCH", r"/projectconfigs/demo/status$")) >= 3


def test_secret_watch_after_history_expired_does_not_spin(
    fake_kube: FakeKubernetes, demo: Server
) -> None:
    """Tested against a fake API server: a Secret unchanged for longer than the API server's
    watch history once made the watch 410 again after every re-read, hundreds a second."""
    fake_kube.reset_requests()
    fake_kube.expire_history()
    fake_kube.drop_watches()

    def watching_again() -> bool:
        verbs = [r.verb for r in fake_kube.filter_requests(path=r"/secrets")]
        return "get" in verbs and "watch" in verbs[verbs.index("get") :]

    eventually(watching_again, what="the Secret re-read and watched again")
    fake_kube.reset_requests()
    time.sleep(2.0)  # the window the request rate is measured over, not a synchronisation
    assert len(fake_kube.filter_requests(path=r"/secrets/")) <= 4
    assert request(demo.url, PUSH, signed(PUSH)).status == 200  # type: ignore[attr-defined]


def test_a_slow_api_still_gets_its_patch_in_within_the_budget(
    fake_kube: FakeKubernetes, demo: Server
) -> None:
    """Tested against a fake API server: 3.3 s per PATCH used to be cut at 3 s, three times."""
    fake_kube.delay("PATCH", r"/warehouses/", 3.3)
    fake_kube.reset_requests()
    answer = request(demo.url, PUSH, signed(PUSH))  # type: ignore[attr-defined]
    fake_kube.clear_faults()
    assert answer.status == 200, answer.body
    assert len(fake_kube.filter_requests("PATCH", r"/warehouses/app$")) == 1  # waited, not cut


def test_while_a_watch_fails_pushes_are_answered_503_not_from_a_stale_cache(
    fake_kube: FakeKubernetes, demo: Any
) -> None:
    # After an outage the watch waited up to 30 s to come back, and pushes meanwhile were
    # answered 200 without the Warehouses created in between.
    assert request(demo.url, PUSH, signed(PUSH)).status == 200
    fake_kube.fail("watch", "/warehouses", 503, times=3)
    fake_kube.drop_watches()
    stale = eventually(
        lambda: (a := request(demo.url, PUSH, signed(PUSH))).status == 503 and a,
        what="a 503 while the watch fails",
    )
    assert stale.json() == {"error": "store unavailable"}
    fake_kube.create(warehouse("demo", "late"))
    after = eventually(
        lambda: (a := request(demo.url, PUSH, signed(PUSH))).status == 200 and a,
        what="the watch back",
    )
    assert sorted(after.json()["refreshed"]) == ["demo/app", "demo/late"]


def test_a_failing_promotion_watch_stops_pull_request_events_only(
    fake_kube: FakeKubernetes, demo: Any
) -> None:
    # Every delivery was answered 503 while the watch of any Kargo kind failed: an outage of
    # the Promotion watch alone stopped every push.
    def merged() -> Any:
        return request(demo.url, PR_MERGED, signed(PR_MERGED, event="pullrequest:fulfilled"))

    fake_kube.create(promotion("demo", "release", PR))
    eventually(lambda: merged().json().get("refreshed") == ["demo/release"], what="the Promotion")
    fake_kube.fail("watch", "/promotions", 503, times=1000)
    fake_kube.drop_watches()
    refused = eventually(lambda: (a := merged()).status == 503 and a, what="a 503 for the PR")
    assert refused.json() == {"error": "store unavailable"}
    fake_kube.create(warehouse("demo", "late"))
    eventually(
        lambda: (
            (a := request(demo.url, PUSH, signed(PUSH))).status == 200
            and "demo/late" in a.json()["refreshed"]
        ),
        what="pushes answered while the Promotion watch fails",
    )
    assert merged().status == 503, "the Promotion cache is not current"
    fake_kube.clear_faults()
    eventually(lambda: merged().status == 200, timeout=40, what="the Promotion watch back")
