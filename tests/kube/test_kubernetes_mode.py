"""Kubernetes mode end to end against a REAL kube-apiserver (``kube_api``, from
``$KUBEBUILDER_ASSETS``) with Kargo's own CRDs.

Each test gets a fresh namespace and runs ``serve --kubernetes`` subprocesses with a
ServiceAccount token bound to exactly deploy/base's RBAC; what the receivers asked of the API
server is read back from its audit log. Faults a real server does not produce on demand are in
``test_faults.py`` (against the fake API server).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import builders
from tests.builders import (
    KARGO,
    PUSH,
    one_receiver,
    project,
    receiver_path,
    secret,
    signed,
    warehouse,
)
from tests.e2e import corpus_cases
from tests.kube.apiserver import (
    AuditEvent,
    Kube,
    KubeApiServer,
    Receiver,
    make_receiver,
    path_of,
)
from tests.kube.manifests import REFRESH, published_receivers, refreshed
from tests.kube.proxy import CuttableProxy
from tests.kube.support import Replicas, new_namespace, published_url, seed
from tests.support import REPO, Server, cli, eventually, request

LEASE = "coordination.k8s.io/v1"
REFUSED = (401, 403, 422)
"""Answers that mean the receiver asked for something it may not, or sent a bad object."""


def start(replicas: Replicas, receiver: Receiver, *extra: str, name: str = "replica-a") -> Server:
    return replicas(receiver.kubeconfig, *extra, name=name, lease_namespace=receiver.namespace)


def requests_of(
    kube_api: KubeApiServer, receiver: Receiver, since: int, *, watches: bool = False
) -> list[AuditEvent]:
    """What the receiver asked of the API server since ``since`` (watches left out)."""
    return [e for e in kube_api.audit(since, user=receiver.user) if watches or e.verb != "watch"]


def lease_spec(kube: Kube, receiver: Receiver) -> dict[str, Any]:
    lease = kube.get(LEASE, "Lease", receiver.namespace, "kargo-bitbucket") or {}
    return dict(lease.get("spec") or {})


def holder(kube: Kube, receiver: Receiver) -> str | None:
    return lease_spec(kube, receiver).get("holderIdentity")


def moment(micro_time: str) -> float:
    """A Lease's MicroTime (RFC 3339) as seconds since the epoch."""
    return datetime.fromisoformat(micro_time).timestamp()


@pytest.fixture
def demo(
    kube_api: KubeApiServer,
    kube_namespace: str,
    receiver_kubeconfig: Receiver,
    replicas: Replicas,
) -> tuple[Server, str]:
    """A receiver serving ``kube_namespace`` (receiver bb, Warehouses app on main, dev on
    develop), with its published URL."""
    ns = kube_namespace
    seed(
        kube_api.admin,
        [
            secret(ns, "bb", "topsecret"),
            project(ns, ("bb", "bb")),
            warehouse(ns, "app"),
            warehouse(ns, "dev", branch="develop"),
        ],
    )
    server = start(replicas, receiver_kubeconfig)
    return server, published_url(kube_api.admin, ns)


def test_a_push_patches_each_refreshed_object_once_and_reads_nothing(
    kube_api: KubeApiServer,
    kube_namespace: str,
    receiver_kubeconfig: Receiver,
    demo: tuple[Server, str],
) -> None:
    _, url = demo
    mark = kube_api.audit_mark()
    answer = request(url, PUSH, signed(PUSH))
    assert answer.status == 200 and answer.json()["msg"] == "refreshed 1 warehouse(s)"
    assert refreshed(kube_api.admin, "Warehouse", kube_namespace, "app") is not None
    assert refreshed(kube_api.admin, "Warehouse", kube_namespace, "dev") is None

    def calls() -> list[tuple[str, str, str]]:
        return [
            (e.verb, e.resource, e.name)
            for e in requests_of(kube_api, receiver_kubeconfig, mark)
            if e.resource != "leases"
        ]

    eventually(lambda: ("create", "events", "") in [(v, r, "") for v, r, _ in calls()])
    assert sorted(calls()) == [("create", "events", ""), ("patch", "warehouses", "app")]


def test_a_refresh_leaves_an_event_on_the_object(
    kube_api: KubeApiServer, kube_namespace: str, demo: tuple[Server, str]
) -> None:
    request(demo[1], PUSH, signed(PUSH, **{"X-Request-UUID": "event-delivery"}))
    app = kube_api.admin.get(KARGO, "Warehouse", kube_namespace, "app")
    assert app is not None

    def events() -> list[dict[str, Any]]:
        return [
            e
            for e in kube_api.admin.objects("v1", "Event", kube_namespace)
            if e["involvedObject"].get("name") == "app"
        ]

    (found,) = eventually(events, what="a WebhookRefresh Event")
    assert found["reason"] == "WebhookRefresh"
    assert found["involvedObject"]["uid"] == app["metadata"]["uid"]
    assert found["message"] == (
        f"Bitbucket repo:push (delivery event-delivery) to {builders.REPO}: "
        'branch "main" matches subscription branch "main"'
    )


def names_refreshed(url: str) -> set[str]:
    answer = request(url, PUSH, signed(PUSH))
    return set(answer.json().get("refreshed", [])) if answer.status == 200 else set()


def test_new_changed_and_deleted_warehouses_are_seen_through_the_watch(
    kube_api: KubeApiServer, kube_namespace: str, demo: tuple[Server, str]
) -> None:
    ns = kube_namespace
    kube_api.admin.create(warehouse(ns, "late"))
    subscription = {"git": {"repoURL": builders.REPO, "branch": "main"}}
    kube_api.admin.patch(KARGO, "Warehouse", ns, "dev", {"spec": {"subscriptions": [subscription]}})
    kube_api.admin.delete(KARGO, "Warehouse", ns, "app")
    eventually(lambda: names_refreshed(demo[1]) == {f"{ns}/late", f"{ns}/dev"}, what="watch events")


def test_a_misspelt_subscription_field_the_api_server_keeps_is_said_in_log_and_explain(
    kube_api: KubeApiServer,
    kube_namespace: str,
    receiver_kubeconfig: Receiver,
    demo: tuple[Server, str],
) -> None:
    """Kargo's CRD leaves subscriptions untyped, so ``brnach: develop`` is stored as is and
    the Warehouse follows main, as in Kargo; the log says so when the watch brings it, once
    however often it is written, and ``explain --kubernetes`` under its verdict. A
    ``repoUrl:`` leaves a subscription no push reaches: the log says that too, and explain
    names it among the candidates of a push to the repository it names. ``lint
    --kubernetes`` lists them all, with the receiver's RBAC, and a ProjectConfig Kargo
    ignores (not named after its namespace), which only the log said."""
    ns, (server, _) = kube_namespace, demo
    kube_api.admin.create(warehouse(ns, "typo", branch=None, brnach="develop"))
    note = (
        f"Warehouse {ns}/typo spec.subscriptions[0].git.brnach: unknown field, ignored as "
        "Kargo ignores it; did you mean branch?"
    )
    eventually(lambda: note in server.logs(), what="the warning")
    no_url = warehouse(ns, "no-url")
    git = no_url["spec"]["subscriptions"][0]["git"]
    git["repoUrl"] = git.pop("repoURL")
    kube_api.admin.create(no_url)
    eventually(
        lambda: (
            f"Warehouse {ns}/no-url spec.subscriptions[0].git.repoURL: missing (misspelt "
            "as repoUrl?), so no push refreshes this subscription" in server.logs()
        ),
        what="the warning about a subscription without a repository URL",
    )
    kube_api.admin.patch(KARGO, "Warehouse", ns, "typo", {"metadata": {"labels": {"a": "b"}}})
    kube_api.admin.create(warehouse(ns, "marker", branch=None, brnach2="x"))
    eventually(lambda: f"{ns}/marker" in server.logs(), what="a later Warehouse's warning")
    assert server.logs().count(note) == 1
    explained = cli(
        "explain",
        "--kubernetes",
        "--kubeconfig",
        str(receiver_kubeconfig.kubeconfig),
        "--repo",
        builders.REPO,
        "--ref",
        "main",
        "-n",
        ns,
        state=server.state,
    )
    assert f"would refresh     Warehouse {ns}/typo: " in explained.stdout
    assert f"  note: {note}" in explained.stdout.splitlines()
    assert (
        f"would not refresh Warehouse {ns}/no-url: spec.subscriptions[0].git.repoURL: missing "
        "(misspelt as repoUrl?), so no push refreshes this subscription"
    ) in explained.stdout.splitlines()
    misnamed = project(ns, ("bb", "bb"))
    misnamed["metadata"]["name"] = "config"  # the API server keeps it; Kargo ignores it
    kube_api.admin.create(misnamed)
    ignored = (
        f"ProjectConfig {ns}/config is ignored, as Kargo ignores it: only the one named "
        f"{ns!r} is read"
    )
    eventually(lambda: ignored in server.logs(), what="the ignored config's warning")
    linted = cli(
        "lint",
        "--kubernetes",
        "--kubeconfig",
        str(receiver_kubeconfig.kubeconfig),
        "-n",
        ns,
        state=server.state,
        check=False,
    )
    assert linted.returncode == 1, linted.stderr
    assert linted.stdout.splitlines() == [
        f"Warehouse {ns}/marker spec.subscriptions[0].git.brnach2: unknown field, ignored as "
        "Kargo ignores it; did you mean branch?",
        f"Warehouse {ns}/no-url spec.subscriptions[0].git.repoURL: missing (misspelt as "
        "repoUrl?), so no push refreshes this subscription",
        note,
        ignored,
    ]


def create_deep_warehouse(kube: Kube, namespace: str, name: str, depth: int) -> None:
    """A Warehouse whose first subscription nests ``depth`` objects deep (Kargo's CRD keeps
    unknown fields there; the API server takes up to 10,000 levels in all)."""
    text = json.dumps(warehouse(namespace, name, repo="https://bitbucket.org/other/deep"))
    nested = '{"image": ' + '{"x": ' * depth + "{}" + "}" * depth + "}, "
    text = text.replace('"subscriptions": [', '"subscriptions": [' + nested)
    kube.call("POST", path_of(KARGO, "Warehouse", namespace), text, ok=(201,), read=False)


def test_the_deepest_objects_the_api_server_takes_neither_stop_a_watch_nor_the_start(
    kube_api: KubeApiServer,
    kube_namespace: str,
    receiver_kubeconfig: Receiver,
    replicas: Replicas,
) -> None:
    # Any user who may create a Warehouse could nest one 1,100 deep: lightkube's decoder
    # stopped at Python's recursion limit (on 3.12 at a C limit of ~1,500 that no setting
    # raises), and a deep object killed the Warehouse watch (every later Warehouse, in every
    # project, was never refreshed, answered 200) or, there at the start, failed the list and
    # kept every replica unready. On 3.11 and 3.12 both are read through depth.py's fallback.
    ns = kube_namespace
    seed(kube_api.admin, [secret(ns, "bb", "topsecret"), project(ns, ("bb", "bb"))])
    create_deep_warehouse(kube_api.admin, ns, "deep-before", 9_990)
    server = start(replicas, receiver_kubeconfig)
    url = published_url(kube_api.admin, ns)
    create_deep_warehouse(kube_api.admin, ns, "deep-after", 9_990)
    kube_api.admin.create(warehouse(ns, "late"))
    eventually(lambda: names_refreshed(url) == {f"{ns}/late"}, what="the later Warehouse")
    # Read with their deepest part cut, not left out: their own subscriptions still match.
    deep = builders.push("main", repo="https://bitbucket.org/other/deep")
    answer = request(url, deep, signed(deep))
    assert answer.status == 200, answer.body
    assert sorted(answer.json()["refreshed"]) == [f"{ns}/deep-after", f"{ns}/deep-before"]
    assert "unexpected error" not in server.logs()  # the watch itself never stopped


def test_a_cut_watch_resumes_from_its_resource_version_with_bookmarks(
    kube_api: KubeApiServer,
    kube_namespace: str,
    receiver_kubeconfig: Receiver,
    replicas: Replicas,
    tmp_path: Path,
) -> None:
    """The connection to the API server is cut (as a load balancer's idle timeout would):
    the watches resume from the last resourceVersion, without listing again, and miss
    nothing that changed meanwhile."""
    ns = kube_namespace
    seed(
        kube_api.admin,
        one_receiver(ns, "app"),
    )
    proxy = CuttableProxy(kube_api.port)
    try:
        kubeconfig = kube_api.admin.kubeconfig(
            tmp_path / "via-proxy",
            receiver_kubeconfig.token,
            server=f"https://127.0.0.1:{proxy.port}",
        )
        mark = kube_api.audit_mark()
        replicas(kubeconfig, lease_namespace=receiver_kubeconfig.namespace)
        url = published_url(kube_api.admin, ns)
        resumed_from = kube_api.audit_mark()
        assert proxy.cut() > 0
        kube_api.admin.create(warehouse(ns, "during-cut"))
        kube_api.admin.delete(KARGO, "Warehouse", ns, "app")
        eventually(lambda: names_refreshed(url) == {f"{ns}/during-cut"}, what="missed events")
    finally:
        proxy.close()
    before = requests_of(kube_api, receiver_kubeconfig, mark, watches=True)
    after = requests_of(kube_api, receiver_kubeconfig, resumed_from, watches=True)
    warehouse_watches = [e for e in before if e.resource == "warehouses" and e.verb == "watch"]
    assert warehouse_watches and all("allowWatchBookmarks=true" in e.uri for e in warehouse_watches)
    assert [e for e in after if e.resource == "warehouses" and e.verb == "list"] == []
    resumed = [e for e in after if e.resource == "warehouses" and e.verb == "watch"]
    assert resumed and all("resourceVersion=" in e.uri for e in resumed), resumed


def test_secret_rotation_moves_the_url(
    kube_api: KubeApiServer, kube_namespace: str, demo: tuple[Server, str]
) -> None:
    old = demo[1]
    kube_api.admin.patch(
        "v1",
        "Secret",
        kube_namespace,
        "bb",
        {"data": {"secret": base64.b64encode(b"new").decode()}},
    )
    new = eventually(
        lambda: (u := published_receivers(kube_api.admin, kube_namespace).get("bb")) != old and u,
        what="the new URL published",
    )
    assert request(old, PUSH, signed(PUSH)).status == 404
    assert request(new, PUSH, signed(PUSH, "new")).status == 200


def add_receiver(kube: Kube, ns: str, secret_name: str) -> None:
    receivers = [
        {"name": "bb", "bitbucket": {"secretRef": {"name": "bb"}}},
        {"name": "two", "bitbucket": {"secretRef": {"name": secret_name}}},
    ]
    kube.patch(KARGO, "ProjectConfig", ns, ns, {"spec": {"webhookReceivers": receivers}})


def test_two_replicas_elect_one_writer_and_hand_over_on_shutdown(
    kube_api: KubeApiServer,
    kube_namespace: str,
    receiver_kubeconfig: Receiver,
    replicas: Replicas,
) -> None:
    ns, kube = kube_namespace, kube_api.admin
    seed(kube, one_receiver(ns))
    a = start(replicas, receiver_kubeconfig, name="replica-a")
    published_url(kube, ns)
    b = start(replicas, receiver_kubeconfig, name="replica-b")
    assert eventually(lambda: holder(kube, receiver_kubeconfig)) == "replica-a"
    mark = kube_api.audit_mark()
    seed(kube, [secret(ns, "second", "x")])
    add_receiver(kube, ns, "second")
    published_url(kube, ns, "two")
    writes = [
        e
        for e in kube_api.audit(mark)
        if e.subresource == "status" and e.verb == "patch" and e.namespace == ns
    ]
    assert [(e.user, e.code) for e in writes] == [(receiver_kubeconfig.user, 200)]

    assert a.stop() == 0
    eventually(lambda: holder(kube, receiver_kubeconfig) == "replica-b", what="hand-over")
    old = published_url(kube, ns, "two")
    kube.patch("v1", "Secret", ns, "second", {"data": {"secret": base64.b64encode(b"y").decode()}})
    eventually(lambda: published_url(kube, ns, "two") != old, what="replica B publishes")
    assert b.stop() == 0


def test_kill_9_of_the_leader_hands_over_when_its_lease_runs_out(
    kube_api: KubeApiServer,
    kube_namespace: str,
    receiver_kubeconfig: Receiver,
    replicas: Replicas,
) -> None:
    ns, kube = kube_namespace, kube_api.admin
    seed(kube, one_receiver(ns, "app"))
    a = start(replicas, receiver_kubeconfig, name="replica-a")
    url = published_url(kube, ns)
    b = start(replicas, receiver_kubeconfig, name="replica-b")
    assert eventually(lambda: holder(kube, receiver_kubeconfig)) == "replica-a"
    os.kill(a.process.pid, signal.SIGKILL)
    a.process.wait()
    last = lease_spec(kube, receiver_kubeconfig)  # replica-a's last renewal, as it wrote it
    assert last["holderIdentity"] == "replica-a"
    eventually(lambda: holder(kube, receiver_kubeconfig) == "replica-b", timeout=15)
    # Timed by the replicas' own writes to the Lease (3 s, renewed or tried each second), not
    # by this test's polling: never before replica-a's Lease ran out, and soon after.
    expired = moment(last["renewTime"]) + 3
    acquired = moment(lease_spec(kube, receiver_kubeconfig)["acquireTime"])
    assert expired <= acquired < expired + 2 * 2, (last, acquired)
    seed(kube, [secret(ns, "second", "x")])
    add_receiver(kube, ns, "second")
    assert published_url(kube, ns, "two")
    assert request(b.base + url.removeprefix(a.base), PUSH, signed(PUSH)).status == 200


def test_publication_keeps_other_controllers_entries_and_skips_stray_configs(
    kube_api: KubeApiServer,
    kube_namespace: str,
    receiver_kubeconfig: Receiver,
    replicas: Replicas,
) -> None:
    ns, kube = kube_namespace, kube_api.admin
    config = project(ns, ("bb", "bb"))
    config["spec"]["webhookReceivers"].insert(
        0, {"name": "gh", "github": {"secretRef": {"name": "gh"}}}
    )
    github = {"name": "gh", "path": "/github/1", "url": "https://kargo.example.com/github/1"}
    config["status"] = {"webhookReceivers": [github]}  # as Kargo's own controller wrote it
    stray = project(ns, ("bb", "bb"))
    stray["metadata"]["name"] = "not-the-project"
    seed(kube, [secret(ns, "bb", "topsecret"), config, stray, warehouse(ns, "app")])
    server = start(replicas, receiver_kubeconfig)
    url = published_url(kube, ns)
    status = (kube.get(KARGO, "ProjectConfig", ns, ns) or {})["status"]
    assert [r["name"] for r in status["webhookReceivers"]] == ["gh", "bb"]
    assert status["webhookReceivers"][0] == github
    # Kargo reads only the ProjectConfig named as its project: the stray one gets no
    # status, and its receiver (same name and Secret) does not collide with the real one.
    assert "status" not in (kube.get(KARGO, "ProjectConfig", ns, "not-the-project") or {})
    assert request(url, PUSH, signed(PUSH)).json()["refreshed"] == [f"{ns}/app"]
    listed = cli(
        "urls",
        "--kubernetes",
        "--kubeconfig",
        str(receiver_kubeconfig.kubeconfig),
        state=server.state,
    )
    assert [ns, "bb", url] in [line.split() for line in listed.stdout.splitlines()]


def test_a_status_written_meanwhile_by_another_controller_is_not_overwritten(
    kube_api: KubeApiServer,
    kube_namespace: str,
    receiver_kubeconfig: Receiver,
    replicas: Replicas,
) -> None:
    """Another controller (Kargo's, for its GitHub receiver) rewrites the status list over and
    over while ours changes: our writes carry the resourceVersion they rendered over, so a
    409 makes us render again, and the other controller's latest entry survives."""
    ns, kube = kube_namespace, kube_api.admin
    config = project(ns, ("bb", "bb"))
    config["spec"]["webhookReceivers"].insert(
        0, {"name": "gh", "github": {"secretRef": {"name": "gh"}}}
    )
    config["status"] = {"webhookReceivers": [{"name": "gh", "path": "/github/0", "url": "u0"}]}
    seed(kube, [secret(ns, "bb", "topsecret"), config])
    start(replicas, receiver_kubeconfig)
    old = published_url(kube, ns)
    mark = kube_api.audit_mark()
    writer = Kube(kube_api.url, kube_api.token, kube.ca_file)
    stop = threading.Event()
    last: list[str] = []

    def other_controller() -> None:
        for i in itertools.count(1):  # as fast as it can: our writes meet newer ones
            if stop.is_set():
                return
            entry = {"name": "gh", "path": f"/github/{i}", "url": f"u{i}"}
            writer.patch(
                KARGO,
                "ProjectConfig",
                ns,
                ns,
                {"status": {"webhookReceivers": [entry]}},
                subresource="status",
            )
            last[:] = [f"u{i}"]

    def status_writes() -> list[AuditEvent]:
        return [
            e
            for e in requests_of(kube_api, receiver_kubeconfig, mark)
            if e.subresource == "status" and e.verb == "patch"
        ]

    thread = threading.Thread(target=other_controller)
    thread.start()
    try:
        kube.patch(
            "v1", "Secret", ns, "bb", {"data": {"secret": base64.b64encode(b"new").decode()}}
        )
        # Until one of ours met a newer write (a 409): on a loaded machine the first few may
        # all land between the other controller's.
        eventually(
            lambda: len(writes := status_writes()) >= 3 and 409 in [e.code for e in writes],
            timeout=30,
            what="our writes meanwhile, one of them refused as stale",
        )
    finally:
        stop.set()
        thread.join()
        writer.close()

    def final() -> dict[str, str] | None:
        entries = published_receivers(kube, ns)
        return entries if entries.get("bb") not in (None, old) else None

    # Every write of the other controller dropped our entry: once ours is back, it must sit
    # beside that controller's last entry, not a stale one we had rendered over.
    assert eventually(final, what="our entry back")["gh"] == last[0]
    ours = status_writes()
    assert all((e.body.get("metadata") or {}).get("resourceVersion") for e in ours), [
        e.body for e in ours
    ]
    assert 409 in [e.code for e in ours], "none of our writes met a newer one: nothing tested"


def test_no_publish_leaves_status_alone(
    kube_api: KubeApiServer,
    kube_namespace: str,
    receiver_kubeconfig: Receiver,
    replicas: Replicas,
) -> None:
    ns = kube_namespace
    seed(
        kube_api.admin,
        one_receiver(ns, "app"),
    )
    mark = kube_api.audit_mark()
    server = start(replicas, receiver_kubeconfig, "--no-publish")
    url = server.base + receiver_path(ns)
    assert request(url, PUSH, signed(PUSH)).json()["refreshed"] == [f"{ns}/app"]
    assert not published_receivers(kube_api.admin, ns)
    assert not [e for e in requests_of(kube_api, receiver_kubeconfig, mark) if e.subresource]


def test_corpus_deliveries_in_kubernetes_mode(
    kube_api: KubeApiServer,
    receiver_kubeconfig: Receiver,
    replicas: Replicas,
    corpus: Path,
) -> None:
    kube = kube_api.admin
    cases = corpus_cases.CASES
    namespaces = sorted({corpus_cases.namespace_of(case) for case in cases})
    for ns in namespaces:
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    try:
        for case in cases:
            seed(kube, corpus_cases.manifests(case))
        mark = kube_api.audit_mark()
        start(replicas, receiver_kubeconfig)
        for case in cases:
            ns = corpus_cases.namespace_of(case)
            body = (corpus / case.file).read_bytes()
            answer = request(published_url(kube, ns), body, corpus_cases.headers_for(case, body))
            assert answer.status == case.status, (case.file, answer.body)
            if case.msg:
                assert answer.json()["msg"] == case.msg, case.file
            if case.hit is not None:
                hit = refreshed(kube, "Warehouse", ns, "hit") is not None
                miss = refreshed(kube, "Warehouse", ns, "miss") is not None
                expected = (case.status == 200, bool(case.extra.get("refs_unknown")))
                assert (hit, miss) == expected, case.file
            if case.pr is not None:
                assert refreshed(kube, "Promotion", ns, "hit") is not None
                assert refreshed(kube, "Promotion", ns, "miss") is None
        refused = [e for e in requests_of(kube_api, receiver_kubeconfig, mark) if e.code in REFUSED]
        assert refused == []
    finally:
        for ns in namespaces:
            for kind in ("ProjectConfig", "Warehouse", "Promotion"):
                kube.delete_all(KARGO, kind, ns)


def test_kubectl_applies_the_example_before_a_delivery(
    kube_api: KubeApiServer,
    receiver_kubeconfig: Receiver,
    replicas: Replicas,
    admin_kubeconfig: Path,
    tmp_path: Path,
) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not on PATH (.ci/run installs it)")

    def run(*args: str, config: Path = admin_kubeconfig) -> str:
        result = subprocess.run(
            [kubectl, "--kubeconfig", str(config), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    # Kargo's real schemas validate the example (no --validate=false).
    namespace = tmp_path / "namespace.yaml"
    namespace.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: kargo-demo}\n")
    run("apply", "-f", str(namespace))
    try:
        run("apply", "-f", str(REPO / "examples" / "kargo-demo"))
        server = start(replicas, receiver_kubeconfig)
        url = published_url(kube_api.admin, "kargo-demo", "bitbucket")
        config = str(receiver_kubeconfig.kubeconfig)
        urls = cli("urls", "--kubernetes", "--kubeconfig", config, state=server.state)
        assert url in urls.stdout
        sent = cli(
            "send",
            "--url",
            url,
            "--secret",
            "demo-secret-change-me",
            "--event",
            "repo:push",
            "--repo",
            "https://bitbucket.org/acme/guestbook.git",
            "--ref",
            "main",
            state=server.state,
        )
        assert "refreshed 1 warehouse(s)" in sent.stdout
        shown = run("get", "warehouse", "guestbook-main", "-n", "kargo-demo", "-o", "json")
        assert REFRESH in json.loads(shown)["metadata"]["annotations"]
        explained = cli(
            "explain",
            "--kubernetes",
            "--kubeconfig",
            config,
            "--repo",
            "git@bitbucket.org:acme/guestbook.git",
            "--ref",
            "develop",
            state=server.state,
        )
        assert "would refresh" in explained.stdout
        assert "guestbook-develop-ssh" in explained.stdout
    finally:
        for kind in ("ProjectConfig", "Warehouse", "Promotion"):
            kube_api.admin.delete_all(KARGO, kind, "kargo-demo")


def test_a_rotated_service_account_token_is_reread(
    kube_api: KubeApiServer,
    kube_namespace: str,
    receiver_kubeconfig: Receiver,
    replicas: Replicas,
    tmp_path: Path,
) -> None:
    """The kubelet rewrites the projected token file; an old token stops working when its
    ServiceAccount is recreated: the receiver re-reads the file after the 401."""
    ns, kube, rc = kube_namespace, kube_api.admin, receiver_kubeconfig
    seed(kube, one_receiver(ns, "app"))
    token_file = tmp_path / "token"
    kubeconfig = kube.kubeconfig(tmp_path / "kc", rc.token, token_file=token_file)
    replicas(kubeconfig, lease_namespace=rc.namespace)
    url = published_url(kube, ns)
    kube.delete("v1", "ServiceAccount", rc.namespace, rc.service_account)
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": rc.service_account, "namespace": rc.namespace},
        }
    )
    token_file.write_text(kube.token_for(rc.namespace, rc.service_account))
    mark = kube_api.audit_mark()
    kube.create(warehouse(ns, "after-rotation"))
    eventually(
        lambda: names_refreshed(url) == {f"{ns}/app", f"{ns}/after-rotation"},
        timeout=30,
        what="the receiver to carry on with the new token",
    )
    assert any(e.code == 200 for e in requests_of(kube_api, rc, mark, watches=True))


def tighter_secret_access(namespace: str, secret_names: list[str], tmp_path: Path) -> list[Any]:
    """The overlay docs/kubernetes.md gives under "Tighter Secret access", as written there
    (its two YAML blocks), for ``namespace``'s Secrets, rendered by kubectl kustomize."""
    doc = (REPO / "docs" / "kubernetes.md").read_text()
    section = doc.split("### Tighter Secret access", 1)[1]
    blocks = [b.split("```", 1)[0] for b in section.split("```yaml\n")[1:3]]
    kustomization, access = yaml.safe_load(blocks[0]), blocks[1]
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = os.path.relpath(REPO / "deploy" / "base", overlay)  # kustomize wants it relative
    kustomization["resources"] = [base, "secret-access.yaml"]
    roles = [d for d in yaml.safe_load_all(access) if d]
    for role in roles:
        role["metadata"]["namespace"] = namespace
        if role["kind"] == "Role":
            role["rules"][0]["resourceNames"] = secret_names
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    (overlay / "secret-access.yaml").write_text(yaml.safe_dump_all(roles))
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl renders the overlay (.ci/run installs it)"
    rendered = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=True
    ).stdout
    kinds = {"ServiceAccount", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}
    return [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in kinds]


def test_resource_names_limited_secret_roles_suffice_and_a_missing_name_is_reported(
    kube_api: KubeApiServer,
    kube_namespace: str,
    replicas: Replicas,
    tmp_path: Path,
) -> None:
    """With docs/kubernetes.md's per-namespace Roles (``resourceNames``, no cluster-wide
    Secret grant), the receiver reads and follows its Secrets by name with no 403; a Secret
    the Role does not name is reported in Ready until the Role names it too."""
    ns, kube = kube_namespace, kube_api.admin
    docs = tighter_secret_access(ns, ["bb"], tmp_path)
    assert {"secrets"} not in [
        set(rule["resources"]) for d in docs if d["kind"] == "ClusterRole" for rule in d["rules"]
    ]
    seed(
        kube,
        [
            secret(ns, "bb", "topsecret"),
            secret(ns, "two", "second"),
            project(ns, ("bb", "bb")),
            warehouse(ns, "app"),
        ],
    )
    receiver = make_receiver(kube_api, docs, new_namespace(kube, "rcv-names"), tmp_path)
    mark = kube_api.audit_mark()
    start(replicas, receiver)
    url = published_url(kube, ns)
    assert request(url, PUSH, signed(PUSH)).json()["refreshed"] == [f"{ns}/app"]
    asked = requests_of(kube_api, receiver, mark, watches=True)
    assert [e for e in asked if e.code in REFUSED] == []
    secrets = [(e.verb, e.name or e.uri) for e in asked if e.resource == "secrets"]
    # by name only: GET of the object, or a watch with a metadata.name field selector
    assert {verb for verb, _ in secrets} == {"get", "watch"}
    assert all(name == "bb" or "fieldSelector=metadata.name%3Dbb" in name for _, name in secrets), (
        secrets
    )

    add_receiver(kube, ns, "two")

    def ready_message() -> str | None:
        config = kube.get(KARGO, "ProjectConfig", ns, ns) or {}
        conditions = (config.get("status") or {}).get("conditions") or []
        return next((c["message"] for c in conditions if c["type"] == "Ready"), None)

    message = eventually(
        lambda: (m := ready_message()) and "cannot be read" in m and m, what="Ready says why"
    )
    assert f"Secret {ns}/two cannot be read (HTTP 403" in message and "not found" not in message
    rule = {
        "apiGroups": [""],
        "resources": ["secrets"],
        "resourceNames": ["bb", "two"],
        "verbs": ["get", "watch"],
    }
    rbac = "rbac.authorization.k8s.io/v1"
    kube.patch(rbac, "Role", ns, "kargo-bitbucket-secrets", {"rules": [rule]})
    two = eventually(
        lambda: published_receivers(kube, ns).get("two"), timeout=60, what="two published"
    )
    assert request(two, PUSH, signed(PUSH, "second")).status == 200


def test_a_hundred_referenced_secrets_leave_connections_for_the_rest(
    kube_api: KubeApiServer,
    receiver_kubeconfig: Receiver,
    replicas: Replicas,
) -> None:
    """Every referenced Secret's watch holds a connection; a fixed pool of 88 once left
    nothing for the Lease, status writes and refreshes."""
    kube = kube_api.admin
    namespaces = [new_namespace(kube, f"many-{i}") for i in range(100)]
    try:
        for i, ns in enumerate(namespaces):
            seed(kube, [secret(ns, "bb", f"s{i}"), project(ns, ("bb", "bb"))])
        kube.create(warehouse(namespaces[-1], "app"))
        start(replicas, receiver_kubeconfig)
        for ns in namespaces:
            published_url(kube, ns)
        url = published_url(kube, namespaces[-1])
        assert request(url, PUSH, signed(PUSH, "s99")).status == 200
    finally:
        for ns in namespaces:
            kube.delete_all(KARGO, "ProjectConfig", ns)
            kube.delete_all(KARGO, "Warehouse", ns)
