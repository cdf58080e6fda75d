"""Fixtures for the Helm chart's tests: helm, kubectl, and an admin kubeconfig for the
session's real API server (``kube_api`` in tests/conftest.py, shared with tests/kube).

Tests that need helm or kubectl skip, with the reason, when it is missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chart.support import Helm, kubectl_run
from tests.kube.apiserver import KubeApiServer
from tests.support import tool


@pytest.fixture(scope="session")
def helm() -> Helm:
    binary = tool("helm")
    if binary is None:
        pytest.skip("helm not found in .tools/bin or on PATH (.ci/get-helm installs it; CI does)")
    return Helm(binary)


@pytest.fixture(scope="session")
def kubectl() -> str:
    binary = tool("kubectl")
    if binary is None:
        pytest.skip("kubectl not found in .tools/bin or on PATH (.ci/get-helm installs it)")
    return binary


@pytest.fixture(scope="session")
def cluster_admin(kube_api: KubeApiServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An admin kubeconfig for helm and kubectl."""
    return kube_api.admin.kubeconfig(tmp_path_factory.mktemp("chart") / "admin-kubeconfig")


@pytest.fixture(scope="session")
def helm_admin(helm: Helm, cluster_admin: Path) -> Helm:
    return helm.with_kubeconfig(cluster_admin)


@pytest.fixture(scope="session")
def monitoring_crds(kubectl: str, cluster_admin: Path) -> None:
    """The stand-in ServiceMonitor and PrometheusRule CRDs, established."""
    for name in ("servicemonitor-crd.yaml", "prometheusrule-crd.yaml"):
        crd = Path(__file__).parent / name
        for args in (
            ["apply", "--server-side", "-f", str(crd)],
            ["wait", "--for", "condition=established", "--timeout=60s", "-f", str(crd)],
        ):
            result = kubectl_run(kubectl, cluster_admin, args)
            assert result.returncode == 0, result.stderr
