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
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, Server
from tests.kube.apiserver import (
    RBAC_KINDS,
    Kube,
    KubeApiServer,
    Receiver,
    make_receiver,
    render_rbac,
)
from tests.kube.fakeapi import FakeKubernetes
from tests.kube.manifests import KARGO, Objects, published_receivers

_namespaces = itertools.count(1)


def eventually(check: Callable[[], Any], timeout: float = 10, what: str = "") -> Any:
    """The first truthy value of ``check()``, polled every 50 ms; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(0.05)


def published_url(objects: Objects, namespace: str, receiver: str = "bb") -> str:
    """The URL published for ``receiver`` of ``namespace``, once there is one."""
    return str(
        eventually(
            lambda: published_receivers(objects, namespace).get(receiver),
            what=f"a published URL for receiver {receiver} of {namespace}",
        )
    )


Replicas = Callable[..., Server]


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Replicas]:
    """Start ``serve --kubernetes`` replicas (Lease of 3 s for quick hand-overs):
    ``replicas(kubeconfig, *extra, name=..., lease_namespace=...)``; all stopped afterwards."""
    started: list[Server] = []

    def start(
        kubeconfig: Path, *extra: str, name: str = "replica-a", lease_namespace: str = "kargo"
    ) -> Server:
        server = Server(
            tmp_path / f"{name}.db",
            [
                "--kubernetes",
                "--kubeconfig",
                str(kubeconfig),
                "--lease-namespace",
                lease_namespace,
                "--lease-duration",
                "3",
                *extra,
            ],
            env={"POD_NAME": name},
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


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
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is needed to render deploy/base (.ci/run installs it)")
    docs = render_rbac(REPO / "deploy" / "base")
    assert {d["kind"] for d in docs} == RBAC_KINDS, "deploy/base lost part of its RBAC"
    return docs


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
