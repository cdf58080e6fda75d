"""Fixtures for Kubernetes-mode tests.

Real API server (``$KUBEBUILDER_ASSETS``; ``kube_api`` and ``kube_namespace`` live in
tests/conftest.py, shared with tests/chart): ``receiver_kubeconfig`` (a
ServiceAccount token bound to exactly the RBAC ``kubectl kustomize deploy/base`` renders).
Without ``KUBEBUILDER_ASSETS`` those tests skip and say why; with it set, a server that does
not start fails them. Fake API server (faults a real one will not produce on demand):
``fake_kube`` and ``kubeconfig``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kube.apiserver import RBAC_KINDS, KubeApiServer, Receiver, make_receiver, render_rbac
from tests.kube.fakeapi import FakeKubernetes
from tests.kube.support import Replicas, new_namespace
from tests.support import REPO, Server


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
