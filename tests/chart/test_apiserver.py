"""The chart against a real kube-apiserver (``kube_api``): every values file passes a
server-side dry run, ``helm install`` and ``helm upgrade`` work, and the receiver, run
locally with a token of the chart's own ServiceAccount and the installed Deployment's
arguments, does the whole Kubernetes flow (push -> refresh annotation, status published)
without one 403, with either kind of Secret access."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from kargo_bitbucket.core.receivers import BaseURL
from tests.builders import KARGO, PUSH, project, secret, signed, warehouse
from tests.chart.support import (
    CHART,
    VALUES_FILES,
    Helm,
    kubectl_run,
    objects,
)
from tests.kube.apiserver import KubeApiServer, wait_for_rbac
from tests.kube.manifests import REFRESH
from tests.kube.support import new_namespace, published_url
from tests.support import Server, request

BASE_URL = "https://kargo-webhooks.example.com"


def get(kubectl: str, kubeconfig: Path, kind: str, name: str, namespace: str) -> dict[str, Any]:
    result = kubectl_run(kubectl, kubeconfig, ["get", kind, name, "-n", namespace, "-o", "json"])
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def ensure_namespaces(kube_api: KubeApiServer, names: set[str]) -> None:
    for name in names:
        if kube_api.admin.get("v1", "Namespace", None, name) is None:
            kube_api.admin.create(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            )


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_every_values_file_passes_a_server_side_dry_run(
    values: Path,
    helm: Helm,
    kubectl: str,
    kube_api: KubeApiServer,
    kube_namespace: str,
    cluster_admin: Path,
    monitoring_crds: None,
) -> None:
    rendered = helm.template(values, release="dry", namespace=kube_namespace)
    docs = objects(rendered)
    ensure_namespaces(
        kube_api, {d["metadata"]["namespace"] for d in docs if "namespace" in d["metadata"]}
    )
    result = kubectl_run(kubectl, cluster_admin, ["apply", "--dry-run=server", "-f", "-"], rendered)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(docs), result.stdout


def test_install_without_base_url_fails_and_creates_nothing(
    helm_admin: Helm, kubectl: str, kube_namespace: str, cluster_admin: Path
) -> None:
    result = helm_admin.run("install", "nobase", str(CHART), "-n", kube_namespace, check=False)
    assert result.returncode != 0 and "baseURL is required" in result.stderr
    listed = kubectl_run(
        kubectl,
        cluster_admin,
        ["get", "deployments,serviceaccounts,secrets", "-n", kube_namespace, "-o", "name"],
    )
    assert listed.returncode == 0 and listed.stdout.strip() == "", listed.stdout


@pytest.fixture
def release_namespace(kube_api: KubeApiServer, request: pytest.FixtureRequest) -> str:
    return new_namespace(kube_api.admin, "rel-" + request.node.name.removeprefix("test_"))


@pytest.fixture
def uninstall(helm_admin: Helm) -> Iterator[list[tuple[str, str]]]:
    """Releases (name, namespace) to uninstall after the test (their ClusterRoles go too)."""
    releases: list[tuple[str, str]] = []
    yield releases
    for name, namespace in releases:
        helm_admin.run("uninstall", name, "-n", namespace, check=False)


def serve_like_the_deployment(
    deployment: dict[str, Any], base_url: str, kubeconfig: Path, namespace: str, folder: Path
) -> Server:
    """``serve`` with the installed Deployment's arguments, on loopback instead of 0.0.0.0,
    with the token's kubeconfig and the environment the pod would have."""
    (main,) = deployment["spec"]["template"]["spec"]["containers"]
    args: list[str] = main["args"]
    assert args[0] == "serve"
    kept, skip = [], False
    for arg in args[1:]:
        if skip or arg in ("--listen", "--admin-listen"):
            skip = not skip
            continue
        kept.append(arg)
    env = {"KARGO_BITBUCKET_BASE_URL": base_url, "POD_NAMESPACE": namespace, "POD_NAME": "pod-a"}
    return Server(folder / "state.db", [*kept, "--kubeconfig", str(kubeconfig)], env=env)


def read_urls_as_the_notes_say(notes: str, kubectl: str, kubeconfig: Path, project: str) -> str:
    """Run the NOTES' ``kubectl get projectconfig ... jsonpath`` line for ``project``."""
    (line,) = [s for s in notes.splitlines() if "kubectl get projectconfig" in s and "range" in s]
    args = shlex.split(line.replace("<project>", project))  # named like its namespace
    assert args[:2] == ["kubectl", "get"]
    result = kubectl_run(kubectl, kubeconfig, args[1:])
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    ("mode", "publish"),
    [("cluster", True), ("namespaced", True), ("cluster", False)],
    ids=["cluster", "namespaced", "no-publish"],
)
def test_install_upgrade_and_a_push_as_the_charts_service_account(
    mode: str,
    publish: bool,
    helm_admin: Helm,
    kubectl: str,
    kube_api: KubeApiServer,
    kube_namespace: str,
    release_namespace: str,
    cluster_admin: Path,
    uninstall: list[tuple[str, str]],
    tmp_path: Path,
) -> None:
    demo, own = kube_namespace, release_namespace
    admin = kube_api.admin
    admin.create(secret(demo, "bb", "topsecret"))
    access: dict[str, Any] = {"mode": mode}
    if mode == "namespaced":
        access["namespaced"] = [{"namespace": demo, "secrets": ["bb"]}]
    values = {"baseURL": BASE_URL, "secretAccess": access, "publish": publish}
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    release = f"kb-{mode}-{'publish' if publish else 'no-publish'}"
    uninstall.append((release, own))
    common = [str(CHART), "-n", own, "--values", str(tmp_path / "values.yaml")]
    notes = helm_admin.run("install", release, *common).stdout
    helm_admin.run(
        "upgrade", release, *common, "--set", "logLevel=debug", "--set", "server.historySize=10"
    )
    history = json.loads(helm_admin.run("history", release, "-n", own, "-o", "json").stdout)
    assert [(h["revision"], h["status"]) for h in history] == [(1, "superseded"), (2, "deployed")]

    name = f"{release}-kargo-bitbucket"
    deployment = get(kubectl, cluster_admin, "deployment", name, own)
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--log-level=debug" in args and "--history-size=10" in args  # the upgrade's values
    config = get(kubectl, cluster_admin, "configmap", f"{name}-config", own)
    webhooks = get(kubectl, cluster_admin, "service", name, own)["spec"]
    metrics = get(kubectl, cluster_admin, "service", f"{name}-metrics", own)["spec"]
    assert [p["name"] for p in webhooks["ports"]] == ["http"]  # never /metrics, /deliveries
    assert f"port-forward service/{name}-metrics 9090:9090" in notes
    assert (metrics["type"], [p["targetPort"] for p in metrics["ports"]]) == (
        "ClusterIP",
        ["metrics"],
    )
    created = kubectl_run(
        kubectl, cluster_admin, ["create", "token", name, "-n", own, "--duration=1h"]
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    wait_for_rbac(kube_api, token)
    kubeconfig = admin.kubeconfig(tmp_path / "service-account-kubeconfig", token, own)

    admin.create(project(demo, ("bb", "bb")))
    admin.create(warehouse(demo, "app"))
    mark = kube_api.audit_mark()
    server = serve_like_the_deployment(
        deployment, config["data"]["KARGO_BITBUCKET_BASE_URL"], kubeconfig, own, tmp_path
    )
    try:
        if publish:
            url = published_url(admin, demo)
            assert read_urls_as_the_notes_say(notes, kubectl, cluster_admin, demo) == f"bb\t{url}\n"
        else:  # Kargo's own controller would publish this URL
            url = BaseURL.parse(BASE_URL).url(
                BaseURL.parse(BASE_URL).receiver_path(demo, "bb", b"topsecret")
            )
        assert url.startswith(f"{BASE_URL}/bitbucket/")
        answer = request(server.base + urlsplit(url).path, PUSH, signed(PUSH))
        assert answer.status == 200, answer.body
        assert answer.json()["msg"] == "refreshed 1 warehouse(s)"
        refreshed = admin.get(KARGO, "Warehouse", demo, "app") or {}
        assert REFRESH in refreshed["metadata"].get("annotations", {})
        lease = admin.get("coordination.k8s.io/v1", "Lease", own, "kargo-bitbucket")
        assert (lease or {}).get("spec", {}).get("holderIdentity") == ("pod-a" if publish else None)
    finally:
        code = server.stop()
    assert code == 0, server.logs()

    user = f"system:serviceaccount:{own}:{name}"
    events = kube_api.audit(mark, user=user)
    assert [(e.verb, e.uri, e.code) for e in events if e.code == 403] == []
    done = {(e.verb, e.resource, e.subresource) for e in events if e.code in (200, 201)}
    writes = {("patch", "projectconfigs", "status"), ("create", "leases", "")}
    assert {("patch", "warehouses", ""), ("get", "secrets", ""), ("watch", "secrets", "")} <= done
    assert done & writes == (writes if publish else set()), done
    if not publish:
        status = (admin.get(KARGO, "ProjectConfig", demo, demo) or {}).get("status") or {}
        assert not status.get("webhookReceivers")


@pytest.mark.parametrize("path", ["/", "/hooks/", "/hooks//"])
def test_the_notes_give_receiver_urls_as_the_server_publishes_them(
    path: str, helm_admin: Helm, release_namespace: str
) -> None:
    """A baseURL ending in "/" (as pasted from a browser) gave 'Receiver URLs are
    https://host//bitbucket/<hash>'; the server publishes https://host/bitbucket/<hash>."""
    notes = helm_admin.run(
        "install", "notes", str(CHART), "-n", release_namespace, "--dry-run=server",
        "--set", f"baseURL={BASE_URL}{path}",
    ).stdout  # fmt: skip
    published = BaseURL.parse(BASE_URL + path).url(BaseURL.parse(BASE_URL + path).path)
    assert f"Receiver URLs are {published}/bitbucket/<hash>," in notes, notes


def test_the_network_policy_is_narrowed_to_the_api_servers_endpoints_when_found(
    helm_admin: Helm,
    kubectl: str,
    release_namespace: str,
    cluster_admin: Path,
    uninstall: list[tuple[str, str]],
) -> None:
    """``helm install`` and ``helm upgrade`` look up the EndpointSlices of Service
    default/kubernetes (this API server has none: it runs without an endpoint reconciler)
    and narrow egress to them and the ClusterIP; found none, any address on the ports."""
    uninstall.append(("netpol", release_namespace))
    release = ["netpol", str(CHART), "-n", release_namespace, "--set", f"baseURL={BASE_URL}"]

    def egress() -> dict[str, Any]:
        policy = get(
            kubectl, cluster_admin, "networkpolicy", "netpol-kargo-bitbucket", release_namespace
        )
        (rule,) = policy["spec"]["egress"]
        return dict(rule)

    helm_admin.run("install", *release)
    anywhere = egress()
    assert "to" not in anywhere and [p["port"] for p in anywhere["ports"]] == [443, 6443]

    slice_ = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "kubernetes-chart-test",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "kubernetes"},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["192.0.2.1"]}],  # data only: never contacted
        "ports": [{"name": "https", "port": 16443, "protocol": "TCP"}],
    }
    applied = kubectl_run(kubectl, cluster_admin, ["apply", "-f", "-"], json.dumps(slice_))
    assert applied.returncode == 0, applied.stderr
    try:
        helm_admin.run("upgrade", *release)
        narrowed = egress()
    finally:
        kubectl_run(
            kubectl,
            cluster_admin,
            ["delete", "endpointslice", "-n", "default", "kubernetes-chart-test"],
        )
    cluster_ip = get(kubectl, cluster_admin, "service", "kubernetes", "default")["spec"][
        "clusterIP"
    ]
    assert [t["ipBlock"]["cidr"] for t in narrowed["to"]] == ["192.0.2.1/32", f"{cluster_ip}/32"]
    assert [p["port"] for p in narrowed["ports"]] == [443, 6443, 16443]
