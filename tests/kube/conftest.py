"""Fixtures for Kubernetes-mode tests.

Real API server (``$KUBEBUILDER_ASSETS``): ``kube_api`` (one per session: admin client, audit
log), ``kube_namespace`` (a fresh namespace per test), ``receiver_kubeconfig`` (a
ServiceAccount token bound to exactly the RBAC ``kubectl kustomize deploy/base`` renders).
Without ``KUBEBUILDER_ASSETS`` those tests skip and say why; with it set, a server that does
not start fails them. Fake API server (faults a real one will not produce on demand):
``fake_kube`` and ``kubeconfig``.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.kube.apiserver import Kube, KubeApiServer
from tests.kube.fakeapi import FakeKubernetes

KARGO = "kargo.akuity.io/v1alpha1"
RBAC_KINDS = {"ServiceAccount", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}
_namespaces = itertools.count(1)


@pytest.fixture
def fake_kube() -> Iterator[FakeKubernetes]:
    """A started :class:`FakeKubernetes` (bookmarks every 0.5 s), stopped after the test."""
    with FakeKubernetes(bookmark_interval=0.5) as fake:
        yield fake


@pytest.fixture
def kubeconfig(fake_kube: FakeKubernetes, tmp_path: Path) -> Path:
    """A kubeconfig for ``fake_kube`` (TLS listener, bearer token) in the test's tmp dir."""
    return fake_kube.kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture(scope="session")
def kube_api() -> Iterator[KubeApiServer]:
    """The session's real kube-apiserver, with Kargo's CRDs; ``.admin`` is a system:masters
    client, ``.audit(since)`` the requests it logged."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if not assets:
        pytest.skip(
            "KUBEBUILDER_ASSETS is not set: no real kube-apiserver to test against "
            "(.ci/run sets it to ../shared/kube/bin)"
        )
    server = KubeApiServer(Path(assets).resolve())
    try:
        server.start()
    except Exception as error:
        pytest.fail(f"KUBEBUILDER_ASSETS={assets} but the API server did not start: {error}")
    try:
        yield server
    finally:
        server.stop()


def new_namespace(kube: Kube, hint: str) -> str:
    """Create a namespace with a unique name that says which test made it."""
    slug = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")[:40].strip("-")
    name = f"t{next(_namespaces)}-{slug}".rstrip("-")
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


@pytest.fixture
def kube_namespace(kube_api: KubeApiServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test. Namespaces cannot be deleted without a
    controller-manager, so its Kargo objects are deleted afterwards instead: a later test's
    receiver (which watches every namespace) then does not see them."""
    name = new_namespace(kube_api.admin, request.node.name.removeprefix("test_"))
    yield name
    for kind in ("ProjectConfig", "Warehouse", "Promotion"):
        kube_api.admin.delete_all(KARGO, kind, name)


@pytest.fixture(scope="session")
def deploy_base_rbac() -> list[dict[str, Any]]:
    """The ServiceAccount and RBAC objects ``kubectl kustomize deploy/base`` renders."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed to render deploy/base (.ci/run installs it)")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(REPO / "deploy" / "base")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d and d["kind"] in RBAC_KINDS]
    assert {d["kind"] for d in docs} == RBAC_KINDS, "deploy/base lost part of its RBAC"
    return docs


@dataclass(frozen=True)
class Receiver:
    """What a replica of the receiver runs with: ``kubeconfig`` holds a ServiceAccount token
    bound to deploy/base's RBAC; ``namespace`` is its own (the Lease's) namespace."""

    kubeconfig: Path
    namespace: str
    service_account: str
    token: str

    @property
    def user(self) -> str:
        """The user name the API server (and its audit log) knows the token as."""
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


def install_rbac(kube: Kube, docs: list[dict[str, Any]], namespace: str) -> None:
    """Create deploy/base's RBAC with its namespace ``kargo`` replaced by ``namespace``, and
    cluster-scoped names suffixed with it, so every test has its own ServiceAccount."""
    for doc in docs:
        doc = yaml.safe_load(yaml.safe_dump(doc))
        meta = doc["metadata"]
        if "namespace" in meta:
            meta["namespace"] = namespace
        else:
            meta["name"] = f"{meta['name']}-{namespace}"
        if doc["kind"] == "ClusterRoleBinding":
            doc["roleRef"]["name"] = f"{doc['roleRef']['name']}-{namespace}"
        for subject in doc.get("subjects") or []:
            subject["namespace"] = namespace
        kube.create(doc)


def wait_for_rbac(kube_api: KubeApiServer, token: str) -> None:
    """Until the new bindings authorise the token (the authoriser's cache lags by a moment)."""
    client = Kube(kube_api.url, token, kube_api.admin.ca_file)
    deadline = time.monotonic() + 10
    try:
        probe = f"/apis/{KARGO}/warehouses"
        while client.http.get(probe, params={"limit": "1"}).status_code != 200:
            if time.monotonic() > deadline:
                raise AssertionError("deploy/base RBAC did not take effect in 10 s")
            time.sleep(0.05)
    finally:
        client.close()


def make_receiver(
    kube_api: KubeApiServer, docs: list[dict[str, Any]], namespace: str, folder: Path
) -> Receiver:
    install_rbac(kube_api.admin, docs, namespace)
    account = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    token = kube_api.admin.token_for(namespace, account)
    wait_for_rbac(kube_api, token)
    path = kube_api.admin.kubeconfig(folder / f"kubeconfig-{namespace}", token, namespace)
    return Receiver(path, namespace, account, token)


@pytest.fixture
def receiver_kubeconfig(
    kube_api: KubeApiServer,
    deploy_base_rbac: list[dict[str, Any]],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> Receiver:
    """A kubeconfig for ``serve --kubernetes --kubeconfig`` holding a TokenRequest token of
    ServiceAccount ``kargo-bitbucket`` in a fresh namespace, bound to deploy/base's RBAC."""
    namespace = new_namespace(kube_api.admin, "rcv-" + request.node.name.removeprefix("test_"))
    return make_receiver(kube_api, deploy_base_rbac, namespace, tmp_path)


@pytest.fixture
def admin_kubeconfig(kube_api: KubeApiServer, tmp_path: Path) -> Path:
    """A kubeconfig with the admin token (for kubectl)."""
    return kube_api.admin.kubeconfig(tmp_path / "admin-kubeconfig")
